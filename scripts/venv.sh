#!/usr/bin/env bash
# Create, update or repair the project's virtualenv, and the local wheelhouse the tests
# install from without the network.
#
#   scripts/venv.sh             .venv with cloudvac (editable) and its test tools
#                               (`make venv`, called by `make demo` and `make test`)
#   scripts/venv.sh wheelhouse  .cache/wheelhouse: a wheel of every runtime and test
#                               dependency, for tests/integration/test_wheel.py (`make test`)
#
# Says what it installs and how long it takes (pip's whole output goes to a log). Quick and
# silent when nothing changed. The stamp .venv/.installed-<hash of pyproject.toml> is written
# last, once every tool the Makefile calls is there and cloudvac imports, so an install that
# was interrupted (Ctrl-C, a lost connection, a full disk) or damaged later (a tool deleted)
# is noticed and repaired by the next run instead of failing for good.
# Works on a fresh Debian with only python3 (installs python3-venv with apt when missing).
# Environment: PYTHON (default python3), VENV (.venv), WHEELHOUSE (.cache/wheelhouse), and
# pip's own PIP_* variables (tests install offline with PIP_NO_INDEX and PIP_FIND_LINKS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELHOUSE=${WHEELHOUSE:-.cache/wheelhouse}
# Every program of the virtualenv that the Makefile runs, and the package that provides it.
TOOLS=(python cloudvac ruff mypy pytest)
declare -A PACKAGE=([cloudvac]="-e ." [ruff]=ruff [mypy]=mypy [pytest]=pytest)
# Imports that prove the heavy part of the install (the CLI itself imports little).
IMPORTS="import cloudvac.cli, cloudvac.service, cloudvac.demo, cloudvac.clouds.openstack, psycopg, pytest, hypothesis"
HASH=$(sha256sum pyproject.toml | cut -c1-16)
STAMP="$VENV/.installed-$HASH"
LOG="$VENV/pip-install.log"

say() { echo "venv.sh: $*" >&2; }

missing_tools() {
    local tool
    for tool in "${TOOLS[@]}"; do [ -x "$VENV/bin/$tool" ] || echo "$tool"; done
}

# pip LOG ARGS...: run pip, its whole output into LOG; on stderr one short line per package
# collected (a counter rewritten in place on a terminal) and the install step.
pip_progress() {
    local log=$1 n=0 line
    shift
    local tty=""
    [ -t 2 ] && tty=1
    set +e
    "$VENV/bin/python" -m pip "$@" --progress-bar off 2>&1 | tee -a "$log" | {
        while IFS= read -r line; do
            case $line in
                Collecting*|Processing*)
                    n=$((n + 1))
                    line=${line#* }
                    line=${line%% (from *}
                    line=${line##*/}
                    if [ -n "$tty" ]; then printf '\r\033[K  [%3d] %.60s' "$n" "$line" >&2
                    else printf '  [%3d] %s\n' "$n" "$line" >&2; fi ;;
                "Installing collected packages:"*)
                    [ -n "$tty" ] && echo >&2
                    n=$(echo "${line#*: }" | tr ',' '\n' | wc -l)
                    if [ "$n" -gt 20 ]; then
                        echo "  installing $n packages (the longest step: about a minute)..." >&2
                    else echo "  installing ${line#*: }" >&2; fi ;;
                "Successfully installed"*|"Successfully built"*|"Saved "*) ;;
                ERROR:*|error:*) [ -n "$tty" ] && echo >&2; echo "  $line" >&2 ;;
            esac
        done
        [ -n "$tty" ] && [ "$n" -gt 0 ] && echo >&2
        true
    }
    local status=${PIPESTATUS[0]}
    set -e
    return "$status"
}

fail() {
    say "$1 (pip's output: $LOG)"
    grep -E "^(ERROR|error)" "$LOG" | tail -5 >&2 || true
    exit 1
}

ensure_python() {
    if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
        say "$PY lacks venv/ensurepip; installing python3-venv with apt-get"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    fi
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        say "$VENV has no working python or pip: making it anew"
        rm -rf "$VENV"
    fi
    if [ ! -e "$VENV" ]; then
        say "creating the virtualenv $VENV with $("$PY" --version 2>&1)"
        "$PY" -m venv "$VENV"
    fi
}

install() {
    local started=$SECONDS missing
    say "installing cloudvac and its test tools into $VENV: about 100 packages, 1 to 3" \
        "minutes on a fresh machine (less from pip's cache); pip's output: $LOG"
    : >"$LOG"
    pip_progress "$LOG" install -e '.[test]' || fail "pip install failed"
    missing=$(missing_tools)
    for tool in $missing; do  # installed as far as pip knows, yet the program is gone
        [ "$tool" = python ] && fail "$VENV/bin/python vanished during the install"
        say "$VENV/bin/$tool is missing: reinstalling ${PACKAGE[$tool]}"
        # shellcheck disable=SC2086  # "-e ." is two words
        pip_progress "$LOG" install --force-reinstall --no-deps ${PACKAGE[$tool]} \
            || fail "could not reinstall ${PACKAGE[$tool]}"
    done
    if ! "$VENV/bin/python" -c "$IMPORTS" 2>>"$LOG"; then
        say "some packages are damaged (an import failed): reinstalling every package"
        pip_progress "$LOG" install --force-reinstall -e '.[test]' \
            || fail "pip install --force-reinstall failed"
        "$VENV/bin/python" -c "$IMPORTS" 2>>"$LOG" \
            || fail "cloudvac still does not import; remove $VENV and run again"
    fi
    missing=$(missing_tools)
    [ -z "$missing" ] || fail "still missing in $VENV/bin: $missing; remove $VENV and run again"
    touch "$STAMP"  # last: it certifies everything above
    say "$VENV ready in $((SECONDS - started)) s"
}

venv() {
    local missing
    missing=$(missing_tools)
    if [ -f "$STAMP" ] && [ -z "$missing" ]; then
        return 0
    fi
    if [ -f "$STAMP" ]; then
        say "$VENV is damaged ($(echo "$missing" | sed "s|^|$VENV/bin/|" | paste -sd, -)" \
            "missing): repairing it"
    elif compgen -G "$VENV/.installed-*" >/dev/null; then
        say "pyproject.toml changed since $VENV was installed: updating it"
    elif [ -e "$VENV" ]; then
        say "$VENV was never completed (an interrupted install?): completing it"
    fi
    rm -f "$VENV"/.installed-*  # no stamp until this run has finished
    ensure_python
    install
}

wheelhouse() {
    local done="$WHEELHOUSE/.complete-$HASH" started=$SECONDS
    [ -f "$done" ] && return 0
    say "filling the wheelhouse $WHEELHOUSE (the tests install from it without the network):" \
        "a wheel of every runtime and test dependency, about 100 (110 MB), 1 to 3 minutes;" \
        "pip's output: $WHEELHOUSE/pip-wheel.log"
    mkdir -p "$WHEELHOUSE"
    rm -f "$WHEELHOUSE"/.complete-*
    LOG="$WHEELHOUSE/pip-wheel.log"
    : >"$LOG"
    # The requirements only (the tests build cloudvac's own wheel from the working tree),
    # and the build backend's, for building it offline.
    "$VENV/bin/python" -c 'import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(p["project"]["dependencies"] + p["project"]["optional-dependencies"]["test"]
                + p["build-system"]["requires"]))' >"$WHEELHOUSE/requirements.txt"
    pip_progress "$LOG" wheel --wheel-dir "$WHEELHOUSE" -r "$WHEELHOUSE/requirements.txt" \
        || fail "pip wheel failed"
    touch "$done"
    say "wheelhouse ready in $((SECONDS - started)) s"
}

venv
if [ "${1:-}" = wheelhouse ]; then
    wheelhouse
fi
