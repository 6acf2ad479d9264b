#!/usr/bin/env bash
# Install the persona model host on Pi #2: Ollama listening on the private link only, the model
# kept loaded, a firewall so that only Pi #1 reaches port 11434, and the persona model created
# from the training output (`python -m training` writes the Modelfile beside the GGUF).
# Safe to run again: each step checks first and changes only what is missing or different.
#
#   sudo deploy/pi2-install.sh [--dry-run] [--listen ADDR] [--pi1 ADDR] NAME MODELFILE|GGUF
#
# NAME is the Ollama model name Pi #1 asks for (llm.ollama_model in /etc/payphone/payphone.toml).
# The model is created as NAME:<UTC date-time>-<sha256 of the GGUF, 12 hex> and copied to NAME;
# later versions come from Pi #1: `python -m payphone model install|rollback` (see README).
# Given a .gguf instead of a Modelfile, deploy/Modelfile.template is filled in beside it.
# --listen: this Pi's address on the private link (default 10.10.10.11);
# --pi1: the only address allowed to reach Ollama (default 10.10.10.10).
# --dry-run prints every command that would change the machine, and changes nothing.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LISTEN=10.10.10.11
PI1=10.10.10.10
PORT=11434
DRY_RUN=0
DROP_IN=/etc/systemd/system/ollama.service.d/payphone.conf
SYSCTL_CONF=/etc/sysctl.d/60-payphone-ollama.conf
NFT_RULES=/etc/nftables.d/payphone-ollama.nft
NFT_CONF=/etc/nftables.conf
positional=()

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

say() { printf '\033[1m[pi2]\033[0m %s\n' "$*" >&2; }
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

# write a file only when its content differs; returns 1 when it was already right
write_file() {
  local path=$1 mode=$2 content=$3
  if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
    say "unchanged: $path"
    return 1
  fi
  if [ "$DRY_RUN" = 1 ]; then
    printf '[dry-run] write %s (mode %s):\n' "$path" "$mode"
    printf '%s\n' "$content" | sed 's/^/    | /'
    return 0
  fi
  local tmp
  tmp=$(mktemp)
  printf '%s\n' "$content" >"$tmp"
  run install -D -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
}

is_ipv4() {
  [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]]
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --listen) LISTEN=${2:?--listen needs an address}; shift ;;
    --pi1) PI1=${2:?--pi1 needs an address}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option: $1" ;;
    *) positional+=("$1") ;;
  esac
  shift
done

[ ${#positional[@]} -eq 2 ] || { usage >&2; die "need NAME and MODELFILE (or GGUF)"; }
NAME=${positional[0]}
MODEL_SOURCE=${positional[1]}
[[ $NAME =~ ^[a-zA-Z0-9][a-zA-Z0-9._-]*(:[a-zA-Z0-9._-]+)?$ ]] \
  || die "NAME $NAME: use letters, digits, . _ - (an Ollama model name such as payphone-persona)"
[[ ${NAME#*:} =~ ^[0-9]{8}-[0-9]{6}-[0-9a-f]{12}$ ]] \
  && die "NAME $NAME names one version: give the name the phone uses (e.g. ${NAME%%:*})"
[ -f "$MODEL_SOURCE" ] || die "$MODEL_SOURCE: no such file (the training output's Modelfile or GGUF)"
is_ipv4 "$LISTEN" || die "--listen $LISTEN: not an IPv4 address"
is_ipv4 "$PI1" || die "--pi1 $PI1: not an IPv4 address"
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo), or add --dry-run to see the plan"
fi
OLLAMA_URL="http://$LISTEN:$PORT"

install_apt_packages() {
  local missing=() pkg
  for pkg in curl ca-certificates nftables; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "apt packages: all present"
    return
  fi
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
}

install_ollama() {
  if command -v ollama >/dev/null 2>&1; then
    say "ollama: installed ($(ollama --version 2>/dev/null | tail -n 1 || true))"
  else
    # the official installer: binary, `ollama` user, ollama.service
    run sh -c 'curl -fsSL https://ollama.com/install.sh | sh'
  fi
}

# Ollama listens on the private link's address only. At boot that address may not exist yet (the
# link comes up when Pi #1 does, or NetworkManager is still configuring it): a plain bind then
# fails with "cannot assign requested address". net.ipv4.ip_nonlocal_bind lets Ollama bind the
# address before it exists, so it starts once and answers as soon as the link is up; the
# firewall below still lets only Pi #1 (and this Pi itself) in.
configure_ollama() {
  local content sysctl
  sysctl=$(cat <<SYSCTL
# written by payphone-ai deploy/pi2-install.sh: Ollama binds $LISTEN before the link is up
net.ipv4.ip_nonlocal_bind = 1
SYSCTL
)
  if write_file "$SYSCTL_CONF" 0644 "$sysctl"; then
    run sysctl -q -p "$SYSCTL_CONF"
  fi
  content=$(cat <<CONF
# written by payphone-ai deploy/pi2-install.sh
[Unit]
# start after the network is configured; the private link's address itself may come later
# (net.ipv4.ip_nonlocal_bind in $SYSCTL_CONF lets Ollama bind it before it exists)
Wants=network-online.target
After=network-online.target

[Service]
# listen on the private link to Pi #1 only
Environment="OLLAMA_HOST=$LISTEN:$PORT"
# keep the persona model loaded for good: a caller never waits for a load
Environment="OLLAMA_KEEP_ALIVE=-1"
Environment="OLLAMA_MAX_LOADED_MODELS=1"
Environment="OLLAMA_NUM_PARALLEL=1"
CONF
)
  if write_file "$DROP_IN" 0644 "$content"; then
    run systemctl daemon-reload
  fi
  run systemctl enable ollama.service
  run systemctl restart ollama.service
}

configure_firewall() {
  local rules
  rules=$(cat <<NFT
# written by payphone-ai deploy/pi2-install.sh: only Pi #1 ($PI1) reaches Ollama
table inet payphone_ollama {}
delete table inet payphone_ollama
table inet payphone_ollama {
  chain input {
    type filter hook input priority filter - 10; policy accept;
    tcp dport $PORT iifname "lo" accept
    tcp dport $PORT ip saddr $PI1 accept
    tcp dport $PORT counter drop
  }
}
NFT
)
  write_file "$NFT_RULES" 0644 "$rules" || true
  if ! grep -qs 'include "/etc/nftables.d/\*.nft"' "$NFT_CONF"; then
    run sh -c "printf '%s\n' 'include \"/etc/nftables.d/*.nft\"' >> $NFT_CONF"
  fi
  run nft -f "$NFT_RULES"
  run systemctl enable nftables.service
}

wait_for_ollama() {
  [ "$DRY_RUN" = 1 ] && return 0
  local _
  for _ in $(seq 1 30); do
    curl -fsS "$OLLAMA_URL/api/version" >/dev/null 2>&1 && return 0
    sleep 1
  done
  local why="journalctl -u ollama"
  ip -4 -o addr show 2>/dev/null | grep -q " inet $LISTEN/" \
    || why="this Pi has no address $LISTEN yet: check the cable to Pi #1 and \`ip -4 addr\`"
  die "Ollama does not answer on $OLLAMA_URL ($why)"
}

# the GGUF a Modelfile's FROM line names (relative to the Modelfile's folder)
modelfile_gguf() {
  local from
  from=$(sed -n 's/^FROM[[:space:]]\{1,\}//p' "$1" | head -n 1)
  [[ $from == *.gguf ]] || die "$1: FROM ${from:-(none)}: the persona model must be a .gguf file"
  case "$from" in
    /*) printf '%s\n' "$from" ;;
    *) printf '%s/%s\n' "$(dirname "$1")" "$from" ;;
  esac
}

create_model() {
  local source_dir modelfile gguf repo version existing
  source_dir=$(cd "$(dirname "$MODEL_SOURCE")" && pwd)
  modelfile="$source_dir/$(basename "$MODEL_SOURCE")"
  if [[ $MODEL_SOURCE == *.gguf ]]; then
    local filled
    gguf=$modelfile
    filled=$(sed "s|@GGUF@|./$(basename "$MODEL_SOURCE")|" "$SRC/deploy/Modelfile.template")
    modelfile="$source_dir/Modelfile.payphone"
    write_file "$modelfile" 0644 "$filled" || true
  else
    gguf=$(modelfile_gguf "$modelfile")
  fi
  [ -f "$gguf" ] || die "$gguf: no such file (the GGUF the Modelfile names)"
  # a version per GGUF: the same file again reuses its version instead of making another
  repo=${NAME%%:*}
  version="$(date -u +%Y%m%d-%H%M%S)-$(sha256sum "$gguf" | cut -c1-12)"
  existing=$(OLLAMA_HOST=$OLLAMA_URL ollama list 2>/dev/null | awk '{print $1}' \
    | grep -E "^$repo:[0-9]{8}-[0-9]{6}-${version##*-}\$" | tail -n 1 || true)
  if [ -n "$existing" ]; then
    say "model: $gguf is already $existing"
  else
    existing="$repo:$version"
    # FROM paths in a Modelfile are relative to its folder
    run env -C "$source_dir" "OLLAMA_HOST=$OLLAMA_URL" ollama create "$existing" -f "$modelfile"
  fi
  run env "OLLAMA_HOST=$OLLAMA_URL" ollama cp "$existing" "$NAME"
  # load it now and keep it loaded (an empty request only loads the model)
  run curl -fsS "$OLLAMA_URL/api/generate" -d "{\"model\": \"$NAME\", \"keep_alive\": -1}"
}

say "Pi #2: Ollama on $OLLAMA_URL for $PI1, model $NAME from $MODEL_SOURCE$([ "$DRY_RUN" = 1 ] \
  && echo ': dry run, nothing changes')"
install_apt_packages
install_ollama
configure_ollama
configure_firewall
wait_for_ollama
create_model
say "done. On Pi #1 set [llm] backend = \"ollama\", ollama_host = \"$OLLAMA_URL\","
say "  ollama_model = \"$NAME\" in /etc/payphone/payphone.toml, then: python -m payphone doctor"
