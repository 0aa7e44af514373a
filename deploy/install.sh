#!/usr/bin/env bash
# Install cloudvac as a systemd service: the path the admin guide gives (`make install`
# runs this script).  Run it as root from a source tree (or with --wheel); run it again to
# upgrade: it is idempotent, and it never overwrites a file that is yours to edit.
#
#   deploy/install.sh [--prefix /opt/cloudvac] [--python python3] [--wheel FILE]
#                     [--extras postgresql] [--wheelhouse DIR] [--log-file] [--destdir DIR]
#
# What it installs (DESTDIR, default empty, is put in front of every path):
#   PREFIX (/opt/cloudvac)          a virtualenv with cloudvac in it: PREFIX/bin/cloudvac
#   /usr/local/bin/cloudvac         a link to it, for the operator's commands
#   /usr/local/lib/systemd/system/  cloudvac.service (engine + both doors),
#                                   cloudvac-web.service (the VMs' door alone, second host)
#   /usr/local/lib/sysusers.d/      cloudvac.conf: system user and group cloudvac, no login
#   /usr/local/lib/tmpfiles.d/      cloudvac.conf: /etc/cloudvac.d 0750 root:cloudvac,
#                                   /var/lib/cloudvac 0750 cloudvac (/var/log/cloudvac too
#                                   with --log-file)
#   /etc/logrotate.d/cloudvac       rotation of /var/log/cloudvac/*.log   (if absent)
#   /etc/default/cloudvac           the units' options (CLOUDVAC_OPTIONS)  (if absent)
#   /etc/cloudvac.d/                the configuration directory (empty)
#   /usr/local/share/man/           cloudvac(1), cloudvac.conf(5), when docs/man has them
#   PREFIX/share/doc/cloudvac/      README.md, docs/, deploy/ (cloudvac.d/: example configs)
# Then, installing into / (no --destdir): creates the user and the directories
# (systemd-sysusers, systemd-tmpfiles) and runs `systemctl daemon-reload` where systemd
# runs.  It enables and starts nothing: write /etc/cloudvac.d/*.conf, check it with
# `cloudvac validate`, then `systemctl enable --now cloudvac`.
#
# Options:
#   --prefix DIR      where the virtualenv goes (default /opt/cloudvac); the units are
#                     rewritten to point there
#   --python PY       interpreter the virtualenv is made from (Python >= 3.11; default python3)
#   --wheel FILE      install this cloudvac wheel (default: one built from the source tree
#                     around this script, which needs setuptools and wheel from the index
#                     or the wheelhouse)
#   --extras LIST     extras of cloudvac to install, e.g. postgresql (a PostgreSQL store)
#   --wheelhouse DIR  install offline from DIR only (pip --no-index --find-links DIR)
#   --log-file        log to /var/log/cloudvac/cloudvac.log instead of the journal: sets
#                     CLOUDVAC_OPTIONS in a new /etc/default/cloudvac, adds the directory's
#                     tmpfiles line (logrotate rotates it either way)
#   --destdir DIR     install into DIR as if it were / (packaging, tests): nothing outside DIR
#                     is touched, no user is created, nothing is activated; the virtualenv's
#                     scripts name PREFIX, where it is meant to run from
set -euo pipefail
umask 022
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/cloudvac PY=python3 WHEEL="" EXTRAS="" WHEELHOUSE="" LOG_FILE=no DESTDIR=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?}; shift ;;
        --python) PY=${2:?}; shift ;;
        --wheel) WHEEL=$(realpath "${2:?}"); shift ;;
        --extras) EXTRAS=${2:?}; shift ;;
        --wheelhouse) WHEELHOUSE=$(realpath "${2:?}"); shift ;;
        --log-file) LOG_FILE=yes ;;
        --destdir) DESTDIR=$(realpath -m "${2:?}"); shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage ;;
    esac
    shift
done
PREFIX=$(realpath -m "$PREFIX")
ROOT=${DESTDIR%/}
say() { echo "install.sh: $*" >&2; }
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    say "run as root (or give --destdir DIR to stage the files into DIR)"
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "$PY is not Python 3.11 or newer (give another with --python)"
    exit 1
fi
real=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
case "$real" in
    /home/*|/root/*|/run/user/*)
        say "$PY is $real, in a home directory, which the units' ProtectHome=yes hides" \
            "from the service: give a system interpreter with --python (/usr/bin/python3)"
        exit 1 ;;
esac

# -- the virtualenv ----------------------------------------------------------------------
VENV=$ROOT$PREFIX
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    say "creating the virtualenv $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv --clear "$VENV"  # --clear: what an interrupted run left is not reused
fi
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1  # root is expected here
pip=("$VENV/bin/python" -m pip install)
[ -n "$WHEELHOUSE" ] && pip+=(--no-index --find-links "$WHEELHOUSE")
if [ -z "$WHEEL" ]; then  # one build of the source tree, installed below
    built=$(mktemp -d)
    trap 'rm -rf "$built"' EXIT
    say "building the cloudvac wheel from $SRC"
    "$VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$built" \
        ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} "$SRC"
    WHEEL=$(echo "$built"/cloudvac-*.whl)
fi
target=$WHEEL
[ -n "$EXTRAS" ] && target="${target}[$EXTRAS]"
say "installing cloudvac and its dependencies from ${WHEELHOUSE:-the package index} into" \
    "$VENV (pip's progress follows; about a minute on a first install)"
"${pip[@]}" --upgrade "$target"
# The same version number with other contents (a source tree between releases): replace it.
"${pip[@]}" --force-reinstall --no-deps --quiet "$WHEEL"
if [ -n "$ROOT" ]; then  # scripts and activate name where the virtualenv will run from
    grep -rlIF -- "$VENV" "$VENV/bin" "$VENV/pyvenv.cfg" | while read -r file; do
        sed -i "s|$VENV|$PREFIX|g" "$file"
    done
fi

# -- system files --------------------------------------------------------------------------
put() {  # put MODE SOURCE DEST: install SOURCE at ROOT/DEST, the units' paths rewritten
    install -d -m 0755 "$(dirname "$ROOT$3")"
    sed "s|/opt/cloudvac|$PREFIX|g" "$2" >"$ROOT$3.new"
    chmod "$1" "$ROOT$3.new"
    mv -f "$ROOT$3.new" "$ROOT$3"
}
keep() {  # keep MODE SOURCE DEST: like put, unless DEST exists (it is the admin's now)
    if [ -e "$ROOT$3" ]; then
        cmp -s <(sed "s|/opt/cloudvac|$PREFIX|g" "$2") "$ROOT$3" \
            || say "kept your $3 (this version's: $PREFIX/share/doc/cloudvac/${2#"$SRC"/})"
    else
        put "$@"
    fi
}
MAN=$SRC/docs/man
units=/usr/local/lib/systemd/system
for unit in cloudvac.service cloudvac-web.service; do
    put 0644 "$SRC/deploy/$unit" "$units/$unit"
    if [ ! -f "$MAN/cloudvac.1" ]; then  # no man pages to point at
        sed -i 's|^Documentation=man:.*(5) |Documentation=|' "$ROOT$units/$unit"
    fi
done
put 0644 "$SRC/deploy/sysusers.d/cloudvac.conf" /usr/local/lib/sysusers.d/cloudvac.conf
tmpfiles=/usr/local/lib/tmpfiles.d/cloudvac.conf
put 0644 "$SRC/deploy/tmpfiles.d/cloudvac.conf" "$tmpfiles"
logs=/var/log/cloudvac
if [ "$LOG_FILE" = yes ] || grep -qsE '^[^#]*--log-file' "$ROOT/etc/default/cloudvac"; then
    printf 'd     %-17s 0750 cloudvac cloudvac -\n' "$logs" >>"$ROOT$tmpfiles"
fi
keep 0644 "$SRC/deploy/logrotate.d/cloudvac" /etc/logrotate.d/cloudvac
if [ "$LOG_FILE" = yes ] && [ ! -e "$ROOT/etc/default/cloudvac" ]; then
    put 0644 "$SRC/deploy/default/cloudvac" /etc/default/cloudvac
    sed -i "s|^CLOUDVAC_OPTIONS=.*|CLOUDVAC_OPTIONS=--log-file $logs/cloudvac.log|" \
        "$ROOT/etc/default/cloudvac"
else
    keep 0644 "$SRC/deploy/default/cloudvac" /etc/default/cloudvac
    if [ "$LOG_FILE" = yes ] && ! grep -qsE '^[^#]*--log-file' "$ROOT/etc/default/cloudvac"
    then
        say "--log-file: add '--log-file $logs/cloudvac.log' to CLOUDVAC_OPTIONS in" \
            "/etc/default/cloudvac (it is yours: not changed)"
    fi
fi
install -d -m 0750 "$ROOT/etc/cloudvac.d"
install -d -m 0755 "$ROOT/usr/local/bin"
ln -sfn "$PREFIX/bin/cloudvac" "$ROOT/usr/local/bin/cloudvac"
for page in cloudvac.1 cloudvac.conf.5; do
    if [ -f "$MAN/$page" ]; then
        install -D -m 0644 "$MAN/$page" "$ROOT/usr/local/share/man/man${page##*.}/$page"
    fi
done
doc=$ROOT$PREFIX/share/doc/cloudvac
rm -rf "$doc" && install -d -m 0755 "$doc"
install -m 0644 "$SRC/README.md" "$doc/"
for dir in docs deploy; do
    if [ -d "$SRC/$dir" ]; then
        cp -R --no-preserve=ownership "$SRC/$dir" "$doc/$dir"
    fi
done
version=$("$VENV/bin/python" -I -c 'import cloudvac; print(cloudvac.__version__)')
say "installed cloudvac $version"

# -- activation (the real root only) -------------------------------------------------------
if [ -n "$ROOT" ]; then
    say "staged into $ROOT; on the target: systemd-sysusers cloudvac.conf;" \
        "systemd-tmpfiles --create cloudvac.conf; systemctl daemon-reload"
    exit 0
fi
systemd-sysusers cloudvac.conf  # by name: from its directory, or an /etc override
systemd-tmpfiles --create cloudvac.conf
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "next: write /etc/cloudvac.d/*.conf (examples in" \
    "$PREFIX/share/doc/cloudvac/deploy/cloudvac.d; secret files 0600, owner cloudvac)," \
    "check it with 'sudo -u cloudvac cloudvac validate', then 'systemctl enable --now cloudvac'"
