#!/usr/bin/env bash
# Debian packages the test suite uses as real components: cloud-init (its JSON schema and
# `cloud-init schema` validate rendered user_data) and the PostgreSQL server (the store's
# tests start their own server with initdb/postgres from it, as an unprivileged user; the
# package's own cluster and service are never used).  Idempotent; needs root and apt.
# The packages shellcheck and systemd (its systemd-analyze verify works offline: no systemd
# has to run) check the shell parts and units of rendered user_data (tests/unit/userdata_tools.py).
set -euo pipefail
missing=()
command -v cloud-init >/dev/null || missing+=(cloud-init)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# logrotate runs deploy/logrotate.d/cloudvac; Debian's python3 with venv makes the /opt/cloudvac
# virtualenv as an admin would; python3-seccomp runs the installed daemon under its unit's
# syscall filter (tests/integration/test_deploy.py).
[ -x /usr/sbin/logrotate ] || missing+=(logrotate)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || missing+=(python3-seccomp)
# groff (groff-base) and man (man-db) render docs/man/*, failing on any roff warning
# (tests/unit/test_reference.py).
command -v groff >/dev/null || missing+=(groff-base)
command -v man >/dev/null || missing+=(man-db)
# chromium and chromium-driver: the operator dashboard is loaded in a real headless browser
# (selenium drives chromedriver; tests/integration/test_dashboard.py): plots drawn, no console
# errors, a screenshot kept.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# faketime (libfaketime) starts one `cloudvac run` with its wall clock moved ahead or behind:
# leases are on the database's clock, so ownership holds under a clock offset
# (tests/integration/test_multi_instance.py).
command -v faketime >/dev/null || missing+=(faketime)
# Debian keeps the server's binaries under /usr/lib/postgresql/<version>/bin, off PATH.
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
then
    missing+=(postgresql)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps.sh: need root to apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "system-deps.sh: installing ${missing[*]} with apt-get (Debian packages the tests use)" >&2
export DEBIAN_FRONTEND=noninteractive
# An install interrupted earlier leaves dpkg half-configured: finish it first.
dpkg --configure -a >/dev/null
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
