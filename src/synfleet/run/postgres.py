"""The fleet's own PostgreSQL cluster: created once with initdb, then a database for Synapse."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

from synfleet.errors import SynfleetError
from synfleet.model.file import Database

#: The account PostgreSQL runs as when synfleet is run as root (PostgreSQL refuses root).
POSTGRES_ACCOUNT = "postgres"


def service_account() -> str | None:
    """None when not root; else the unprivileged account for PostgreSQL."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        raise SynfleetError(
            f"running as root, PostgreSQL needs the unprivileged account {POSTGRES_ACCOUNT!r}, which does not "
            "exist: install PostgreSQL with `apt-get install postgresql` or run synfleet as a normal user"
        ) from None
    return POSTGRES_ACCOUNT


def _as(account: str | None) -> Callable[[], None] | None:
    if account is None:
        return None
    entry = pwd.getpwnam(account)

    def switch() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return switch


def hand_over(path: Path, account: str | None) -> None:
    """Give ``path`` to ``account`` (when running as root)."""
    if account is not None:
        entry = pwd.getpwnam(account)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def init_cluster(initdb: str, data: Path, database: Database, account: str | None, log: Path) -> bool:
    """Run initdb if ``data`` holds no cluster yet. True if a cluster was created."""
    if (data / "PG_VERSION").exists():
        return False
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    hand_over(data, account)
    result = subprocess.run(
        [initdb, "-D", str(data), "-U", database.user, "--auth=trust", "--encoding=UTF8", "--locale=C"],
        preexec_fn=_as(account),
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


def ensure_database(socket_dir: str, database: Database) -> None:
    """Create Synapse's database with the C collation Synapse requires, if it does not exist."""
    import psycopg2

    connection = psycopg2.connect(host=socket_dir, dbname="postgres", user=database.user)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database.name,))
            if cursor.fetchone() is None:
                cursor.execute(
                    f"CREATE DATABASE \"{database.name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                    "TEMPLATE template0"
                )
    finally:
        connection.close()
