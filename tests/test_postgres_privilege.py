"""PostgreSQL grants Synapse only its own database.

Synapse's role logs in with its password and owns its database and nothing more; the cluster's
superuser (``postgres``) logs in only on the socket, as the OS account that owns the cluster. A
cluster made by an earlier synfleet, where Synapse's role was the superuser that initdb made, is
converted by the next `synfleet up`. Root never writes through a link the fleet's account planted
in the cluster's data directory.

One fleet runs for the module: it starts on a cluster in the earlier shape, with Synapse's schema
and a user in it, so that the fleet's tests also prove the conversion. The admin steps on a new
cluster and the conversion of every kind of object are checked on bare clusters, without Synapse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import psycopg2
import pytest
import yaml

import helpers
from conftest import fleet_up
from postgres_roles import POSTGRES_SUPERUSER, check_least_privilege, connect, rows
from synfleet.layout import SECRETS_DIR
from synfleet.model.schema.storage import Database
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.secrets import Secret, ensure_secrets
from synfleet.run.accounts import Account, ensure_accounts
from synfleet.run.paths import RunPaths
from synfleet.run.postgres import ensure_database, init_cluster
from synfleet.run.register import register_user
from synfleet.system import free_port, require_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.prerequisite(helpers.root_reason("the cluster belongs to the fleet's account, as under a root `up`")),
    pytest.mark.prerequisite(helpers.synapse_reason()),
]

PASSWORD = "an old user's password"
#: What an earlier synfleet wrote into pg_hba.conf: every role, with its password, on the socket.
OLD_HBA = (
    "# Rendered by synfleet: password logins on the socket (and from the fleet's hosts) only.\n"
    "local all all scram-sha-256\n"
)


def fleet_account() -> Account:
    return ensure_accounts(lambda _: None).fleet


def as_account(account: Account, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` run as ``account``; it must succeed."""
    done = subprocess.run(command, preexec_fn=account.switch, cwd="/", capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command[0]}: {done.stdout}{done.stderr}"
    return done


@contextmanager
def running(data: Path, account: Account) -> Iterator[str]:
    """PostgreSQL on cluster ``data``, as ``account``, on a socket in a directory of its own (yielded)."""
    sockets = Path(tempfile.mkdtemp(prefix="synfleet-pg-"))
    os.chown(sockets, account.uid, account.gid)
    options = f"-c listen_addresses= -c unix_socket_directories={sockets}"
    pg_ctl = require_binary("pg_ctl")
    try:
        as_account(account, pg_ctl, "-D", str(data), "-w", "-o", options, "-l", str(sockets / "log"), "start")
        try:
            yield str(sockets)
        finally:
            as_account(account, pg_ctl, "-D", str(data), "-w", "-m", "fast", "stop")
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def old_style_cluster(data: Path, database: Database, password: str, account: Account) -> None:
    """A cluster as an earlier synfleet made it: initdb's superuser named like Synapse's role, with
    Synapse's password; every role by password on the socket; Synapse's database created by that
    superuser (so owned by it)."""
    data.mkdir(mode=0o700, parents=True)
    os.chown(data, account.uid, account.gid)
    pwfile = data.parent / "initdb-password"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, account.uid, account.gid)
    locale = ("--encoding=UTF8", "--locale=C")
    initdb = [require_binary("initdb"), "-D", str(data), "-U", database.user, "--auth=scram-sha-256"]
    as_account(account, *initdb, f"--pwfile={pwfile}", *locale)
    pwfile.unlink()
    (data / "pg_hba.conf").write_text(OLD_HBA)
    with running(data, account) as sockets, connect(sockets, database.user, password, "postgres") as connection:
        connection.cursor().execute(
            f"CREATE DATABASE \"{database.name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )


# -- a fleet that starts on a cluster an earlier synfleet made ----------------------------------


@dataclass
class ConvertedFleet:
    directory: Path
    port: int
    up_output: str

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.directory)

    @property
    def database(self) -> Database:
        return Database()

    @property
    def password(self) -> str:
        return (self.directory / SECRETS_DIR / Secret.POSTGRES_PASSWORD).read_text().strip()


def synapse_schema(directory: Path, sockets: str, database: Database, password: str) -> None:
    """Synapse's tables, made as the earlier superuser (Synapse's own schema update, as main's first
    start runs it), and a user with a password in them."""
    config = {
        "server_name": "localhost",
        "report_stats": False,
        "signing_key_path": str(directory / SECRETS_DIR / Secret.SIGNING_KEY),
        "database": {
            "name": "psycopg2",
            "args": {"user": database.user, "password": password, "dbname": database.name, "host": sockets},
        },
    }
    path = directory / "schema-update.yaml"
    path.write_text(yaml.safe_dump(config))
    module = "synapse._scripts.update_synapse_database"
    done = subprocess.run(
        [sys.executable, "-m", module, "--database-config", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    path.unlink()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    with connect(sockets, database.user, password, database.name) as connection:
        connection.cursor().execute(
            "INSERT INTO users (name, password_hash, creation_ts) VALUES (%s, %s, %s)",
            ("@olduser:localhost", hashed, int(time.time())),
        )


@pytest.fixture(scope="module")
def fleet() -> Iterator[ConvertedFleet]:
    with world_readable_tempdir("synfleet-privilege-") as directory:
        port = free_port()
        spec = helpers.profile_with("small", listen={"http_port": port}, synapse={"relaxed_rate_limits": True})
        (directory / "fleet.toml").write_text(fleet_toml(spec))
        password = ensure_secrets(directory)[Secret.POSTGRES_PASSWORD]
        paths = RunPaths(directory)
        paths.run.mkdir(mode=0o755)
        account = fleet_account()
        old_style_cluster(paths.postgres_data, spec.database, password, account)
        with running(paths.postgres_data, account) as sockets:
            synapse_schema(directory, sockets, spec.database, password)
        with fleet_up(directory) as up:
            yield ConvertedFleet(directory, port, up.stdout)


def test_synapse_role_owns_its_database_and_nothing_more(fleet: ConvertedFleet) -> None:
    check_least_privilege(str(fleet.paths.sockets), fleet.database, fleet.password)
    assert "converted the PostgreSQL cluster" in fleet.up_output, fleet.up_output


def test_synapse_serves_the_converted_database(fleet: ConvertedFleet) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{fleet.port}", timeout=60) as client:
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "olduser"}}
        answer = client.post("/_matrix/client/v3/login", json={**login, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        room = client.post(
            "/_matrix/client/v3/createRoom", json={"name": "after"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert room.status_code == 200, room.text
    assert register_user(fleet.paths, "newuser", PASSWORD, admin=False)["user_id"] == "@newuser:localhost"


def test_up_as_root_does_not_write_through_a_link_in_the_data_directory(fleet: ConvertedFleet) -> None:
    """The fleet's account replaces pg_hba.conf by a link to a file only root may read; `up` (on the
    running fleet) leaves that file as it was, and PostgreSQL still takes Synapse's logins."""
    account = fleet_account()
    precious = fleet.directory / "precious"
    precious.write_text("root's own\n")
    precious.chmod(0o600)
    hba = fleet.paths.postgres_data / "pg_hba.conf"
    hba.unlink()
    hba.symlink_to(precious)
    os.lchown(hba, account.uid, account.gid)
    again = subprocess.run(
        [sys.executable, "-m", "synfleet", "up", "--dir", str(fleet.directory)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    found = precious.stat()
    assert (found.st_uid, found.st_gid, found.st_mode & 0o7777) == (0, 0, 0o600)
    assert precious.read_text() == "root's own\n"
    assert not hba.is_symlink() and hba.stat().st_uid == account.uid
    check_least_privilege(str(fleet.paths.sockets), fleet.database, fleet.password)


# -- the admin steps on bare clusters -----------------------------------------------------------


@pytest.fixture
def top() -> Iterator[Path]:
    """A directory the fleet's account can reach (pytest's own are root's alone)."""
    with world_readable_tempdir("synfleet-cluster-") as directory:
        yield directory


def test_a_new_cluster_keeps_its_superuser_to_the_account_that_owns_it(top: Path) -> None:
    account, database, password = fleet_account(), Database(), "synapse's own"
    data = top / "postgres"
    assert init_cluster(require_binary("initdb"), data, database, (), account, top / "initdb.log")
    assert (data.stat().st_uid, (data / "pg_hba.conf").stat().st_uid) == (account.uid, account.uid)
    with running(data, account) as sockets:
        assert ensure_database(sockets, data, database, password) == []
        check_least_privilege(sockets, database, password)
        # The superuser: not root (peer authentication maps the cluster's owner only), not by any password.
        for user in (POSTGRES_SUPERUSER, "root"):
            with pytest.raises(psycopg2.OperationalError, match=r"authentication failed|no pg_hba\.conf entry"):
                psycopg2.connect(host=sockets, user=user, dbname="postgres").close()
        superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        as_owner = as_account(account, "psql", "-X", "-At", "-h", sockets, "-U", POSTGRES_SUPERUSER, "-c", superuser)
        assert as_owner.stdout.strip() == "t"
        # A second `up` changes nothing and reports nothing.
        assert ensure_database(sockets, data, database, password) == []


#: One of each kind of object Synapse's role may own, made by the earlier superuser.
OBJECTS = """
CREATE TABLE counted (id SERIAL PRIMARY KEY, n BIGINT GENERATED ALWAYS AS IDENTITY, body TEXT);
INSERT INTO counted (body) VALUES ('kept');
CREATE SEQUENCE standalone_seq;
CREATE VIEW counted_view AS SELECT body FROM counted;
CREATE MATERIALIZED VIEW counted_matview AS SELECT body FROM counted;
CREATE FUNCTION double_it(x integer) RETURNS integer LANGUAGE sql AS 'SELECT x * 2';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER counted_touch BEFORE INSERT ON counted FOR EACH ROW EXECUTE FUNCTION touch();
CREATE PROCEDURE nothing() LANGUAGE sql AS 'SELECT 1';
CREATE AGGREGATE total(integer) (SFUNC = int4pl, STYPE = integer);
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TYPE pair AS (a integer, b integer);
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE SCHEMA extra;
CREATE TABLE extra.inside (id integer);
"""


def test_up_converts_every_object_of_a_cluster_an_earlier_synfleet_made(top: Path) -> None:
    account, database, password = fleet_account(), Database(), "synapse's own"
    data = top / "postgres"
    old_style_cluster(data, database, password, account)
    with running(data, account) as sockets, connect(sockets, database.user, password, database.name) as connection:
        connection.cursor().execute(OBJECTS)
        # A conversion that stopped after its first step left its helper role behind.
        connection.cursor().execute("CREATE ROLE synfleet_conversion SUPERUSER LOGIN")
    assert not init_cluster(require_binary("initdb"), data, database, (), account, top / "initdb.log")
    with running(data, account) as sockets:
        assert ensure_database(sockets, data, database, password) == [
            f"converted the PostgreSQL cluster: {database.user} is no longer its superuser "
            f"({POSTGRES_SUPERUSER} is, on the socket only), and owns database {database.name}"
        ]
        check_least_privilege(sockets, database, password)
        with connect(sockets, database.user, password, database.name) as connection:
            assert rows(connection, "SELECT body FROM counted_view") == [("kept",)]
            connection.cursor().execute("INSERT INTO counted (body) VALUES ('more')")
            connection.cursor().execute("REFRESH MATERIALIZED VIEW counted_matview")
            assert rows(connection, "SELECT double_it(21), nextval('standalone_seq')") == [(42, 1)]
            assert rows(connection, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'synfleet%'") == []
        assert ensure_database(sockets, data, database, password) == []
