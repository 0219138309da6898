"""What Synapse's role may do in the fleet's PostgreSQL, checked by logging in as it with its password,
on every target that runs one: its own database, which it owns with everything in it, and nothing
beyond."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from synfleet.model.schema.storage import Database

#: The cluster's superuser, initdb's, as the official PostgreSQL image names it.
POSTGRES_SUPERUSER = "postgres"
#: What Synapse's role must not do, each refused for want of privilege.
FORBIDDEN = {
    "a shell as PostgreSQL's account": "COPY (SELECT 1) TO PROGRAM 'id'",
    "a new role": "CREATE ROLE intruder",
    "a server setting": "ALTER SYSTEM SET work_mem = '1MB'",
    "a new database": "CREATE DATABASE intruder",
    "reading the server's files": "SELECT pg_read_file('postgresql.conf')",
}


@contextmanager
def connect(sockets: str, user: str, password: str | None, dbname: str) -> Iterator[psycopg2.extensions.connection]:
    connection = psycopg2.connect(host=sockets, user=user, password=password, dbname=dbname)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def rows(connection: psycopg2.extensions.connection, sql: str) -> list[tuple[object, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


#: Objects in Synapse's database owned by another role than the one connected, by kind.
FOREIGN_OWNED = """
SELECT 'relation ' || c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relowner <> {me}
UNION ALL
SELECT 'routine ' || p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.proowner <> {me}
UNION ALL
SELECT 'type ' || t.oid::regtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND t.typowner <> {me}
UNION ALL
SELECT 'schema ' || n.nspname FROM pg_namespace n
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'public') AND n.nspowner <> {me}
UNION ALL
SELECT 'database ' || d.datname FROM pg_database d WHERE d.datname = current_database() AND d.datdba <> {me}
""".format(me="(SELECT oid FROM pg_roles WHERE rolname = current_user)")


def foreign_owned(connection: psycopg2.extensions.connection) -> list[str]:
    return [str(row[0]) for row in rows(connection, FOREIGN_OWNED)]


def role_privileges(connection: psycopg2.extensions.connection) -> dict[str, object]:
    columns = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls", "rolcanlogin")
    found = rows(connection, f"SELECT {', '.join(columns)} FROM pg_roles WHERE rolname = current_user")
    return dict(zip(columns, found[0], strict=True))


def refused(connection: psycopg2.extensions.connection) -> dict[str, str]:
    """Each forbidden statement's error (or "ran" when it did)."""
    outcome = {}
    for what, sql in FORBIDDEN.items():
        try:
            connection.cursor().execute(sql)
            outcome[what] = "ran"
        except psycopg2.errors.InsufficientPrivilege as error:
            outcome[what] = type(error).__name__
    return outcome


LEAST = {
    "rolsuper": False,
    "rolcreaterole": False,
    "rolcreatedb": False,
    "rolreplication": False,
    "rolbypassrls": False,
    "rolcanlogin": True,
}


def check_least_privilege(sockets: str, database: Database, password: str) -> None:
    """Synapse's role, by its password: no privilege beyond its database, which it owns with all in it."""
    with connect(sockets, database.user, password, database.name) as connection:
        assert role_privileges(connection) == LEAST
        assert refused(connection) == dict.fromkeys(FORBIDDEN, "InsufficientPrivilege")
        assert foreign_owned(connection) == []
        # initdb's superuser is postgres, and no other role holds a privilege beyond logging in.
        assert rows(connection, "SELECT rolname FROM pg_roles WHERE oid = 10") == [(POSTGRES_SUPERUSER,)]
        powerful = "SELECT rolname FROM pg_roles WHERE rolsuper OR rolcreaterole OR rolcreatedb ORDER BY 1"
        assert rows(connection, powerful) == [(POSTGRES_SUPERUSER,)]
    # Synapse's password opens nothing else: not the superuser, not another database.
    for user, dbname in ((POSTGRES_SUPERUSER, database.name), (database.user, "postgres")):
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(host=sockets, user=user, password=password, dbname=dbname).close()
