"""The fleet's own PostgreSQL cluster, and who may do what in it.

Two roles log in. The cluster's superuser, ``postgres`` (initdb's), only on the socket, by peer
authentication as the OS account that owns the cluster: pg_ident.conf maps that account, and no
other, to it, and no password opens it. Synapse's role logs in with the generated password
(scram-sha-256), on the socket and, on a fleet of several hosts, from the fleet's hosts; it owns
Synapse's database and holds no other privilege (no superuser, no new roles or databases, no
server settings, no programs run by the server).

Everything that touches the cluster runs as the account that owns it: run as root, in a child that
has become that account before anything else (:func:`~synfleet.run.accounts.run_as`). That is
initdb, writing pg_hba.conf and pg_ident.conf (each atomically, replacing whatever is at its name,
never following it), and the superuser's connection. Run by a normal user, that user owns the
cluster and does it directly.

A cluster made by an earlier synfleet, whose superuser was Synapse's role, is converted on the next
`up` (:func:`_convert`).
"""

from __future__ import annotations

import importlib
import os
import pwd
import signal
import stat
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from synfleet.errors import SynfleetError
from synfleet.layout import SECRETS_DIR
from synfleet.model.schema.storage import POSTGRES_SUPERUSER, Database
from synfleet.render.files import PRIVATE, current_file, write_file
from synfleet.render.hosts import AUTH_METHOD, DATABASE_OPTIONS, SYNAPSE_ROLE_OPTIONS, SuperuserLogin, hba
from synfleet.render.secrets import Secret
from synfleet.run.accounts import Account, as_root, run_as
from synfleet.run.paths import RunPaths
from synfleet.system import require_binary

#: A psycopg2 connection (psycopg2 has no type hints).
Connection = Any
LOCALE = ("--encoding=UTF8", "--locale=C")
#: pg_ident.conf's map from the OS account that owns the cluster to the superuser.
OWNER_MAP = "owner"
#: A second superuser that exists only while a cluster of an earlier synfleet is converted: initdb's
#: superuser, which was Synapse's role, cannot rename itself, and cannot lose SUPERUSER.
CONVERSION_ROLE = "synfleet_conversion"
#: Natively, the account that owns the cluster logs in as the superuser (or, converting, the helper).
OWNER_LOGIN = SuperuserLogin((POSTGRES_SUPERUSER, CONVERSION_ROLE), OWNER_MAP)
#: How long the superuser's login is retried after pg_hba.conf changed under a running server (it
#: reads the file again when it gets to the signal).
RELOAD_PATIENCE = 5.0


def access_files(database: Database, owner: str, hosts: tuple[str, ...]) -> dict[str, str]:
    """pg_hba.conf and pg_ident.conf, by name in the data directory, for a cluster owned by the OS
    account ``owner``."""
    ident = [
        "# Rendered by synfleet: the OS account that owns the cluster, and no other, logs in as its superuser.",
        "# MAPNAME SYSTEM-USERNAME PG-USERNAME",
        *(f"{OWNER_MAP} {owner} {role}" for role in OWNER_LOGIN.roles),
    ]
    return {"pg_hba.conf": hba(database, hosts, OWNER_LOGIN), "pg_ident.conf": "\n".join(ident) + "\n"}


def _owner_name(account: Account | None) -> str:
    """The name of ``account``, or of this process's account (run by a normal user)."""
    return account.name if account is not None else _account_name(os.geteuid())


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise SynfleetError(
            f"uid {uid} has no account name: PostgreSQL's superuser logs in as the account that owns the "
            "cluster, by name"
        ) from None


def cluster_owner(data: Path) -> Account | None:
    """Run as root, the account that owns the cluster in ``data`` (its data directory's owner: root
    gave it that directory, in a directory only root writes); None when run by a normal user."""
    if not as_root():
        return None
    found = os.lstat(data)
    if found.st_uid == 0 or not stat.S_ISDIR(found.st_mode):
        raise SynfleetError(f"{data} must be a directory of the fleet's account: PostgreSQL does not run as root")
    return Account(_account_name(found.st_uid), found.st_uid, found.st_gid)


def _write_access_files(data: Path, files: dict[str, str]) -> bool:
    """Write each file that differs into ``data``, atomically (a new file renamed over the name: a
    link there is replaced, never followed); True if any changed. Run as the cluster's owner."""
    changed = False
    for name, text in files.items():
        path = data / name
        current = current_file(path)
        if current is not None and current[0] == text:
            continue
        write_file(path, text, PRIVATE)
        changed = True
    return changed


def init_cluster(
    initdb: str, data: Path, database: Database, hosts: tuple[str, ...], account: Account | None, log: Path
) -> bool:
    """Create the cluster in ``data`` with initdb if it holds none (True then), as ``account`` when
    given (run as root, which gives it the directory first); then, before PostgreSQL starts, write
    who may log in (pg_hba.conf, pg_ident.conf) as the account that owns the cluster. initdb's
    output goes to ``log``."""
    created = not (data / "PG_VERSION").exists()
    if created:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if account is not None:
            os.chown(data, account.uid, account.gid)
        # The superuser gets no password: it logs in by peer authentication only (pg_hba.conf, below).
        result = subprocess.run(
            [initdb, "-D", str(data), "-U", POSTGRES_SUPERUSER, "--auth-local=peer", "--auth-host=reject", *LOCALE],
            preexec_fn=account.switch if account else None,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        write_file(log, result.stdout + result.stderr)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise SynfleetError(f"initdb failed: {lines[-1] if lines else result.returncode} (see {log})")
    owner = cluster_owner(data)
    files = access_files(database, _owner_name(owner), hosts)

    def write() -> list[str]:
        _write_access_files(data, files)
        return []

    run_as(owner, write)
    return created


def ensure_database(
    socket_dir: str, data: Path, database: Database, password: str, hosts: tuple[str, ...] = ()
) -> list[str]:
    """On the running cluster: who may log in as :func:`init_cluster` writes it (reloaded if it
    changed); Synapse's role with the generated password and no privilege beyond logging in; its
    database, owned by it, with the C collation Synapse requires. A cluster of an earlier synfleet
    is converted first. All as the account that owns the cluster; what is worth telling comes back."""
    importlib.import_module("psycopg2.sql")  # loaded here: the child's account may not read this Python

    owner = cluster_owner(data)
    files = access_files(database, _owner_name(owner), hosts)
    return run_as(owner, lambda: _ensure(socket_dir, data, database, password, files))


def _ensure(socket_dir: str, data: Path, database: Database, password: str, files: dict[str, str]) -> list[str]:
    import psycopg2

    reloaded = _write_access_files(data, files) and _reload(data)
    told = []
    try:
        try:
            admin = _connect(socket_dir, POSTGRES_SUPERUSER, "postgres", RELOAD_PATIENCE if reloaded else 0.0)
        except psycopg2.OperationalError as refused:
            if not _convert(socket_dir, database, password):
                reason = _reason(refused)
                raise SynfleetError(f"PostgreSQL refused its superuser {POSTGRES_SUPERUSER}: {reason}") from None
            told.append(
                f"converted the PostgreSQL cluster: {database.user} is no longer its superuser "
                f"({POSTGRES_SUPERUSER} is, on the socket only), and owns database {database.name}"
            )
            admin = _connect(socket_dir, POSTGRES_SUPERUSER, "postgres")
        with closing(admin):
            _grant(admin, database, password)
    except psycopg2.Error as error:
        raise SynfleetError(f"PostgreSQL, as its superuser {POSTGRES_SUPERUSER}: {_reason(error)}") from None
    return told


def create_extension(socket_dir: str, data: Path, database: Database, extension: str) -> None:
    """As the cluster's superuser (as the account that owns the cluster): ``extension`` in
    Synapse's database, if it is not there yet."""
    importlib.import_module("psycopg2.sql")  # loaded here: the child's account may not read this Python

    def create() -> list[str]:
        from psycopg2 import sql

        with closing(_connect(socket_dir, POSTGRES_SUPERUSER, database.name)) as admin, admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
        return []

    run_as(cluster_owner(data), create)


def _reason(error: Exception) -> str:
    """The first line of what PostgreSQL or libpq said."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _reload(data: Path) -> bool:
    """Ask the running server to read its files again (SIGHUP, as ``pg_ctl reload``); False if none runs."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    return True


def _connect(socket_dir: str, user: str, dbname: str, patience: float = 0.0) -> Connection:
    """A connection as ``user`` by peer authentication; retried for ``patience`` seconds unless the
    role does not exist."""
    import psycopg2

    deadline = time.monotonic() + patience
    while True:
        try:
            connection = psycopg2.connect(host=socket_dir, dbname=dbname, user=user)
        except psycopg2.OperationalError as error:
            if time.monotonic() >= deadline or "does not exist" in str(error):
                raise
            time.sleep(0.2)
            continue
        connection.autocommit = True
        return connection


def _grant(admin: Connection, database: Database, password: str) -> None:
    """As the superuser: Synapse's role (created, or set back) with its password and no privilege
    beyond logging in; its database, owned by it; no conversion helper left."""
    from psycopg2 import sql

    role, name = sql.Identifier(database.user), sql.Identifier(database.name)
    with admin.cursor() as cursor:
        cursor.execute("SET password_encryption = %s", (AUTH_METHOD,))
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (database.user,))
        verb = "ALTER" if cursor.fetchone() else "CREATE"
        options = sql.SQL(f"{SYNAPSE_ROLE_OPTIONS} PASSWORD %s")
        cursor.execute(sql.SQL("{} ROLE {} ").format(sql.SQL(verb), role) + options, (password,))
        cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(CONVERSION_ROLE)))
        cursor.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database.name,))
        found = cursor.fetchone()
        if found is None:
            create = sql.SQL(f"CREATE DATABASE {{}} OWNER {{}} {DATABASE_OPTIONS}")
            cursor.execute(create.format(name, role))
        elif found[0] != database.user:
            cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, role))


# -- a cluster made by an earlier synfleet --------------------------------------------------------

#: initdb's superuser: the role with this fixed OID, whatever its name.
BOOTSTRAP_SUPERUSER_OID = 10
_OUTSIDE_SYSTEM = "{namespace} NOT IN ('pg_catalog', 'information_schema') AND {namespace} !~ '^pg_(toast|temp)'"
_NOT_IN_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass AND e.objid = {oid} "
    "AND e.deptype = 'e')"
)
#: ALTER ... OWNER statements (to the role ``{role}``) for every object in the connected database
#: that initdb's superuser owns, outside PostgreSQL's own schemas and extensions: schemas; tables,
#: views, materialized views, foreign tables, and sequences that no table owns (a table's go with
#: it, as do its indexes, row type and triggers); functions, procedures and aggregates; enums,
#: ranges, domains and standalone composite types (array and multirange types go with theirs).
_OWNED_OBJECTS = f"""
SELECT format('ALTER SCHEMA %I OWNER TO %I', n.nspname, {{role}}) FROM pg_namespace n
 WHERE n.nspowner = {BOOTSTRAP_SUPERUSER_OID} AND {_OUTSIDE_SYSTEM.format(namespace="n.nspname")}
   AND {_NOT_IN_EXTENSION.format(catalog="pg_namespace", oid="n.oid")}
UNION ALL
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              c.oid::regclass, {{role}})
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relowner = {BOOTSTRAP_SUPERUSER_OID} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND {_OUTSIDE_SYSTEM.format(namespace="n.nspname")}
   AND {_NOT_IN_EXTENSION.format(catalog="pg_class", oid="c.oid")}
   AND NOT (c.relkind = 'S' AND EXISTS (
       SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT format('ALTER %s %s OWNER TO %I',
              CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
              p.oid::regprocedure, {{role}})
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proowner = {BOOTSTRAP_SUPERUSER_OID} AND {_OUTSIDE_SYSTEM.format(namespace="n.nspname")}
   AND {_NOT_IN_EXTENSION.format(catalog="pg_proc", oid="p.oid")}
UNION ALL
SELECT format('ALTER %s %s OWNER TO %I',
              CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype, {{role}})
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typowner = {BOOTSTRAP_SUPERUSER_OID} AND {_OUTSIDE_SYSTEM.format(namespace="n.nspname")}
   AND {_NOT_IN_EXTENSION.format(catalog="pg_type", oid="t.oid")}
   AND (t.typtype IN ('e', 'r', 'd')
        OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
"""


def _convert(socket_dir: str, database: Database, password: str) -> bool:
    """Convert a cluster of an earlier synfleet, where initdb's superuser was Synapse's role (with
    its password) and owned Synapse's database and everything in it; False if this is not one.

    1. As that superuser (by the password): create :data:`CONVERSION_ROLE`, a superuser the
       cluster's owner logs in as (pg_hba.conf and pg_ident.conf say so).
    2. As the helper, in Synapse's database, in one transaction: rename initdb's superuser to
       ``postgres`` and remove its password; create Synapse's role; give it the database and every
       object in it that initdb's superuser owned. (REASSIGN OWNED refuses initdb's superuser,
       which owns PostgreSQL's own catalogs.)
    3. The helper is dropped by :func:`_grant`, as ``postgres``.

    A conversion interrupted after step 1 starts again at step 1; step 2 is all or nothing."""
    import psycopg2
    from psycopg2 import sql

    try:
        old = psycopg2.connect(host=socket_dir, dbname=database.name, user=database.user, password=password)
    except psycopg2.OperationalError:
        return False
    with closing(old):
        old.autocommit = True
        with old.cursor() as cursor:
            cursor.execute("SELECT oid FROM pg_roles WHERE rolname = current_user")
            if cursor.fetchone() != (BOOTSTRAP_SUPERUSER_OID,):
                return False
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (CONVERSION_ROLE,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(CONVERSION_ROLE)))
    role = sql.Identifier(database.user)
    with closing(_connect(socket_dir, CONVERSION_ROLE, database.name)) as helper:
        helper.autocommit = False
        with helper.cursor() as cursor:
            cursor.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(role, sql.Identifier(POSTGRES_SUPERUSER)))
            cursor.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(POSTGRES_SUPERUSER)))
            cursor.execute(sql.SQL(f"CREATE ROLE {{}} {SYNAPSE_ROLE_OPTIONS}").format(role))
            cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database.name), role))
            cursor.execute(sql.SQL(_OWNED_OBJECTS).format(role=sql.Literal(database.user)))
            for (statement,) in cursor.fetchall():
                cursor.execute(statement)
        helper.commit()
    return True


def client(program: str, paths: RunPaths, database: Database, *args: str, failure: str) -> str:
    """Run a PostgreSQL client (psql, pg_dump, pg_restore) against the fleet's database as
    Synapse's role, with the generated password; its output, or a SynfleetError "``failure``: <its
    last line>"."""
    password = (paths.directory / SECRETS_DIR / Secret.POSTGRES_PASSWORD).read_text().strip()
    command = [require_binary(program), f"--host={database.host or paths.sockets}", f"--port={database.port}"]
    command += [f"--username={database.user}", f"--dbname={database.name}", *args]
    done = subprocess.run(command, env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"{program} exited with {done.returncode}"]
        raise SynfleetError(f"{failure}: {lines[-1]}")
    return done.stdout


def query(paths: RunPaths, database: Database, sql: str, failure: str) -> list[str]:
    """The rows of ``sql`` on the fleet's database, each as psql prints it unaligned (``a|b``)."""
    return client("psql", paths, database, "-X", "-A", "-t", "-c", sql, failure=failure).split()
