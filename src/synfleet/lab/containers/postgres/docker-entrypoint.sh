#!/bin/bash
# First start: create the cluster in $PGDATA with $POSTGRES_USER, $POSTGRES_PASSWORD and
# $POSTGRES_INITDB_ARGS, and the database $POSTGRES_DB; then run PostgreSQL as `postgres`.
set -euo pipefail
[ "${1:0:1}" = "-" ] && set -- postgres "$@"
if [ "$1" != postgres ]; then
    exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown -R postgres: "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "docker-entrypoint: POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    user=${POSTGRES_USER:-postgres}
    # for psql, when the command's pg_hba.conf asks for passwords on the socket too
    export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
    database=${POSTGRES_DB:-$user}
    initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") ${POSTGRES_INITDB_ARGS:-}
    printf 'host all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
    # A server only this script reaches, with the command's own settings.
    init_socket=$(mktemp -d)
    pg_ctl -D "$PGDATA" -w -o "$(printf '%q ' "${@:2}" -c listen_addresses= -c unix_socket_directories="$init_socket")" start
    if [ "$database" != postgres ]; then
        psql -X -v ON_ERROR_STOP=1 --host="$init_socket" --username="$user" --dbname=postgres \
            -c "CREATE DATABASE \"$database\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop
    rmdir "$init_socket"
fi
exec "$@"
