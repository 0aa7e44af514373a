#!/usr/bin/env bash
# Create or reuse the project's virtualenv and install cloudvac with its test extras.
# Idempotent: reinstalls only when pyproject.toml changed. Works on a fresh Debian with
# only python3 (installs python3-venv through apt when the interpreter lacks ensurepip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
[ -f "$stamp" ] && exit 0
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "venv.sh: $PY lacks venv/ensurepip; installing python3-venv with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
log="$VENV/pip-install.log"
if ! "$VENV/bin/python" -m pip install -q -e '.[test]' >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    echo "venv.sh: pip install failed (full log: $log)" >&2
    exit 1
fi
"$VENV/bin/python" -c 'import cloudvac.cli' # fail loudly if the install did not work
rm -f "$VENV"/.installed-* && touch "$stamp"
