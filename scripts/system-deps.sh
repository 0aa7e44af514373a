#!/usr/bin/env bash
# Debian packages the test suite uses as real components: cloud-init (its JSON schema and
# `cloud-init schema` validate rendered user_data). Idempotent; needs root and apt.
set -euo pipefail
missing=()
command -v cloud-init >/dev/null || missing+=(cloud-init)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps.sh: need root to apt-get install ${missing[*]}" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
