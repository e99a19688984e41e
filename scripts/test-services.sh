#!/usr/bin/env bash
# Make sure the servers the tests talk to are installed and running: PostgreSQL on
# 127.0.0.1:5432 with trust authentication for the "postgres" role (the metadata tests).
# Installs it from Debian's packages when it is missing (needs root, as on CI).
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    echo "test-services: installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
export PATH="$PATH:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)"

if ! pg_up; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
        || pg_ctlcluster "$version" main start
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
fi
pg_up || { echo "test-services: PostgreSQL did not start" >&2; exit 1; }

# The tests connect as "postgres" over TCP without a password.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc "select 1" >/dev/null 2>&1; then
    hba=$(su postgres -c "psql -Atc 'show hba_file'")
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    su postgres -c "psql -Atc 'select pg_reload_conf()'" >/dev/null
fi
