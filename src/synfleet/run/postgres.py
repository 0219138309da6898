"""The fleet's own PostgreSQL cluster: created once with initdb, then a database for Synapse.

Every connection authenticates with the generated password (scram-sha-256), on a socket only the
fleet's account can reach.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from synfleet.errors import SynfleetError
from synfleet.layout import SECRETS_DIR
from synfleet.model.schema.storage import Database
from synfleet.render.hosts import AUTH_METHOD, hba
from synfleet.render.secrets import Secret
from synfleet.run.accounts import Account
from synfleet.run.paths import RunPaths
from synfleet.system import require_binary

LOCALE = ("--encoding=UTF8", "--locale=C")


def init_cluster(
    initdb: str, data: Path, database: Database, password: str, account: Account | None, log: Path
) -> bool:
    """Run initdb if ``data`` holds no cluster yet. True if a cluster was created."""
    if (data / "PG_VERSION").exists():
        return False
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if account is not None:
        os.chown(data, account.uid, account.gid)
    # initdb reads the superuser's password from a file; only the account that runs it may read that.
    with tempfile.NamedTemporaryFile("w", prefix="synfleet-pw-", delete=True) as pwfile:
        pwfile.write(password + "\n")
        pwfile.flush()
        if account is not None:
            os.chown(pwfile.name, account.uid, account.gid)
        result = subprocess.run(
            [initdb, "-D", str(data), "-U", database.user, f"--auth={AUTH_METHOD}", f"--pwfile={pwfile.name}", *LOCALE],
            preexec_fn=account.switch if account else None,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise SynfleetError(f"initdb failed: {lines[-1] if lines else result.returncode} (see {log})")
    return True


def ensure_database(
    socket_dir: str, data: Path, database: Database, password: str, hosts: tuple[str, ...] = ()
) -> None:
    """Make the cluster take only password logins, with the fleet's password, and create Synapse's
    database with the C collation Synapse requires, if it does not exist.

    A cluster created before passwords were required (``trust``) is converted here: the password is
    set first, then pg_hba.conf replaced and reloaded.
    """
    import psycopg2

    connection = psycopg2.connect(host=socket_dir, dbname="postgres", user=database.user, password=password)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SET password_encryption = %s", (AUTH_METHOD,))
            cursor.execute(f'ALTER ROLE "{database.user}" PASSWORD %s', (password,))
            wanted, file = hba(database, hosts), data / "pg_hba.conf"
            if file.read_text() != wanted:
                stat = file.stat()
                file.write_text(wanted)
                os.chown(file, stat.st_uid, stat.st_gid)
                cursor.execute("SELECT pg_reload_conf()")
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database.name,))
            if cursor.fetchone() is None:
                cursor.execute(
                    f"CREATE DATABASE \"{database.name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                    "TEMPLATE template0"
                )
    finally:
        connection.close()


def client(program: str, paths: RunPaths, database: Database, *args: str, failure: str) -> str:
    """Run a PostgreSQL client (psql, pg_dump, pg_restore) against the fleet's database with the
    generated password; its output, or a SynfleetError "``failure``: <its last line>"."""
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
