#!/usr/bin/env bash
# Create or reuse .venv-oracle (repo root): real Nova + Placement + Keystone + Glance (+ a local
# OIDC provider, oidc-provider-mock, for the federation oracle) used by the
# contract tests in tests/contract/. Kept apart from cloudvac's own venv because Nova's pins
# conflict with ours. Idempotent: a stamp file records the hash of requirements.txt and the
# interpreter; when it matches and the packages import, nothing is done.
#
#   bash tests/oracle/setup.sh            # install or verify
#   ORACLE_PYTHON=python3.11 bash tests/oracle/setup.sh
#   bash tests/oracle/setup.sh --force    # rebuild the venv from scratch
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${ORACLE_VENV:-$root/.venv-oracle}"
req="$here/requirements.txt"
stamp="$venv/.oracle-stamp"
py="${ORACLE_PYTHON:-python3}"
t0=$(date +%s)

elapsed() { echo "$(( $(date +%s) - t0 ))s"; }
log() { echo "[oracle-setup +$(elapsed)] $*"; }

if [[ "${1:-}" == "--force" ]]; then
    log "--force: removing $venv"
    rm -rf "$venv"
fi

command -v "$py" >/dev/null || { echo "oracle setup: '$py' not found" >&2; exit 1; }
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$pyver" in
    3.10|3.11|3.12) ;;
    *) echo "oracle setup: need Python 3.10-3.12 for nova 34 (got $pyver from $py)" >&2; exit 1 ;;
esac
if [[ "$pyver" != "3.11" ]]; then
    log "warning: pins were verified with Python 3.11, using $pyver"
fi

want="$( { cat "$req"; echo "python=$pyver"; } | sha256sum | cut -d' ' -f1)"

check_imports() {  # cheap: find modules and versions without importing nova
    "$venv/bin/python" - <<'EOF'
import importlib.metadata as md, importlib.util as iu
for mod in ("nova.tests.functional.integrated_helpers", "placement", "keystone",
            "eventlet", "wsgi_intercept", "oslotest", "requests_mock",
            "oidc_provider_mock", "authlib", "joserfc",
            "glance.common.wsgi_app", "glance_store", "werkzeug.serving"):
    assert iu.find_spec(mod) is not None, "missing module " + mod
assert md.version("nova") == "34.0.0", md.version("nova")
assert md.version("glance") == "33.0.0", md.version("glance")
EOF
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    if check_imports 2>/dev/null; then
        log "up to date: $venv (stamp $want)"
        exit 0
    fi
    log "stamp matches but imports fail; reinstalling"
fi

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    log "creating venv $venv with $py ($pyver)"
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi
rm -f "$stamp"

log "installing pinned requirements (nova, placement, keystone, glance, oidc-provider-mock, tests)"
# (the filter only hides pip's noise about local find-links/index dirs that do not exist)
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
[[ "${PIPESTATUS[0]}" == 0 ]] || { echo "oracle setup: pip install failed" >&2; exit 1; }
log "pip install done"

"$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null \
    || { "$venv/bin/python" -m pip check || true; echo "oracle setup: pip check failed" >&2; exit 1; }
check_imports
echo "$want" > "$stamp"
log "ready: $venv ($(du -sh "$venv" | cut -f1))"
