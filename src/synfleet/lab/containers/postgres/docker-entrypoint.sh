#!/bin/bash
# First start, as the official image does it: create the cluster in $PGDATA with the superuser
# $POSTGRES_USER (password $POSTGRES_PASSWORD) and $POSTGRES_INITDB_ARGS; start a server on the
# socket only, with the command's own settings (its pg_hba.conf among them); create $POSTGRES_DB
# and run /docker-entrypoint-initdb.d/*.sql and *.sh, connecting as $POSTGRES_USER to the image's
# socket directory; stop it. Then run PostgreSQL as `postgres`.
set -euo pipefail
[ "${1:0:1}" = "-" ] && set -- postgres "$@"
if [ "$1" != postgres ]; then
    exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres: "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 3775 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "docker-entrypoint: POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    export POSTGRES_USER=${POSTGRES_USER:-postgres}
    export POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
    # shellcheck disable=SC2086 # the arguments are words, as the official image splits them
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") ${POSTGRES_INITDB_ARGS:-}
    printf 'host all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
    # for psql, when pg_hba.conf asks for passwords on the socket too
    export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
    pg_ctl -D "$PGDATA" -w -o "$(printf '%q ' "${@:2}" -c listen_addresses= -p 5432)" start
    psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
            *.sql) echo "$0: running $file"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$file" ;;
            *.sh) echo "$0: running $file"; if [ -x "$file" ]; then "$file"; else . "$file"; fi ;;
            *) [ -e "$file" ] && echo "$0: ignoring $file" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
fi
exec "$@"
