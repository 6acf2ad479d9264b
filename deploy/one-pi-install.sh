#!/usr/bin/env bash
# One Raspberry Pi does everything: the payphone and the persona model in-process (llama.cpp).
# The same as `deploy/pi1-install.sh --one-pi`; every option of pi1-install.sh works here too.
#
#   sudo deploy/one-pi-install.sh [--dry-run] [--gguf FILE] [--prefix DIR] [--no-start]
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/pi1-install.sh" --one-pi "$@"
