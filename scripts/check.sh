#!/usr/bin/env bash
# The quality gates CI runs: lint, format, types, tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== ruff check" && "$PY" -m ruff check .
echo "== ruff format --check" && "$PY" -m ruff format --check .
echo "== mypy" && "$PY" -m mypy
echo "== pytest" && "$PY" -m pytest "$@"
