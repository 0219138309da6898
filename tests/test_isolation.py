"""A real fleet, closed by default: clients cannot choose the address Synapse sees, reach the admin
API, replication or metrics, or send bodies Synapse would refuse; local users cannot get around
nginx to the sockets, PostgreSQL or Redis."""

from __future__ import annotations

import http.client
import io
import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import helpers
from conftest import RunningFleet, fleet_under_test
from synfleet.errors import SynfleetError
from synfleet.model.schema.synapse import REQUEST_BODY_LIMIT, Media
from synfleet.run import accounts
from synfleet.run.accounts import FLEET_ACCOUNT, lookup
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_user
from synfleet.system import require_binary
from test_secrets_private import exposures, secret_values

pytestmark = [
    pytest.mark.integration,
    pytest.mark.prerequisite(helpers.root_reason("proves what other local accounts cannot do")),
]

NOBODY = 65534
FORGED = "9.9.9.9"
PASSWORD = "long enough to be a password"


@dataclass
class SecuredFleet(RunningFleet):
    token: str = ""  # alice's, from a login that claimed to come from FORGED
    admin_token: str = ""

    def after_up(self) -> None:
        paths = RunPaths(self.directory)
        register_user(paths, "alice", PASSWORD, admin=False)
        self.admin_token = register_user(paths, "admin", PASSWORD, admin=True)["access_token"]
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}}
        body = json.dumps({**login, "password": PASSWORD}).encode()
        status, answer = self.request(
            "POST",
            "/_matrix/client/v3/login",
            {"X-Forwarded-For": FORGED, "Content-Type": "application/json"},
            body,
        )
        assert status == 200, answer
        self.token = json.loads(answer)["access_token"]

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> Any:
        """A raw request: the path goes to nginx exactly as written."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def main(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request straight to main's socket, as root (what nginx does for allowed admins)."""
        transport = httpx.HTTPTransport(uds=RunPaths(self.directory).layout.inbound_socket("main"))
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
            return client.request(method, path, headers={"Authorization": f"Bearer {self.admin_token}"}, **kwargs)


# The small profile with Synapse's own rate limits, and 127.0.0.1 not allowed the admin API.
fleet = fleet_under_test(SecuredFleet, "small", access={"admin_allow": ["10.0.0.0/8"]})


ADMIN = "/_synapse/admin/v1/server_version"
SPELLINGS = [
    ADMIN,
    "//_synapse/admin/v1/server_version",
    "/_synapse//admin/v1/server_version",
    "/_synapse/%61dmin/v1/server_version",
    "/_synapse/./admin/v1/server_version",
    "/_synapse/admin/./v1/server_version",
    "/_matrix/../_synapse/admin/v1/server_version",
    "/_matrix/client/../../_synapse/admin/v1/server_version",
    "/_synapse%2Fadmin/v1/server_version",
    "/_synapse/admin%2Fv1/server_version",
    "/%5Fsynapse/admin/v1/server_version",
    "/_synapse/replication/get_repl_stream_updates/events",
    "//_synapse/replication/get_repl_stream_updates/events",
    "/_synapse/%72eplication/get_repl_stream_updates/events",
    "/_matrix/../_synapse/replication/get_repl_stream_updates/events",
    "/_synapse/metrics",
    "/_synapse/%6Detrics",
]
CLAIMS = [{}, {"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "127.0.0.1"}, {"X-Forwarded-For": "10.1.1.1"}]


def test_admin_replication_and_metrics_stay_closed_in_every_spelling(fleet: SecuredFleet) -> None:
    assert fleet.main("GET", ADMIN).status_code == 200  # the endpoint exists: only nginx keeps it closed
    opened = [
        (path, claim, status)
        for path in SPELLINGS
        for claim in CLAIMS
        for status, _ in [fleet.request("GET", path, {**claim, "Authorization": f"Bearer {fleet.admin_token}"})]
        if status == 200
    ]
    assert not opened


def _whois_addresses(fleet: SecuredFleet) -> set[str]:
    answer = fleet.main("GET", "/_synapse/admin/v1/whois/@alice:localhost").json()
    return {
        connection["ip"]
        for device in answer["devices"].values()
        for session in device["sessions"]
        for connection in session["connections"]
    }


def test_synapse_records_the_address_nginx_saw_not_the_forged_one(fleet: SecuredFleet) -> None:
    auth = {"Authorization": f"Bearer {fleet.token}", "X-Forwarded-For": FORGED}
    status, _ = fleet.request("GET", "/_matrix/client/v3/account/whoami", auth)
    assert status == 200
    deadline = time.monotonic() + 30  # client addresses reach the database in batches
    while not (addresses := _whois_addresses(fleet)) and time.monotonic() < deadline:
        time.sleep(1)
    assert addresses == {"127.0.0.1"}
    access_log = (RunPaths(fleet.directory).access_log).read_text()
    assert "/account/whoami" in access_log and FORGED not in access_log


def test_failed_logins_hit_the_address_limit_whatever_address_they_claim(fleet: SecuredFleet) -> None:
    # Synapse allows an address a burst of 5 logins (rc_login.address); each attempt names a new user,
    # so only the address limit can apply, and each claims to come from a new address.
    statuses = []
    for attempt in range(8):
        body = {"type": "m.login.password", "user": f"guess{attempt}", "password": "wrong"}
        headers = {"X-Forwarded-For": f"9.9.9.{attempt}", "Content-Type": "application/json"}
        status, _ = fleet.request("POST", "/_matrix/client/v3/login", headers, json.dumps(body).encode())
        statuses.append(status)
    assert 429 in statuses[:6], statuses
    assert set(statuses) <= {403, 429}


def _send_large(fleet: SecuredFleet, path: str, size: int, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send a ``size``-byte body as a client would; nginx may answer before it has all of it."""
    chunk = secrets.token_bytes(1 << 20)
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=60) as conn:
        head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        conn.sendall((head + "\r\n").encode())
        try:
            for offset in range(0, size, len(chunk)):
                conn.sendall(chunk[: min(len(chunk), size - offset)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx refused the body and closed
        answer = b""
        while data := conn.recv(65536):
            answer += data
    response = http.client.HTTPResponse(_Received(answer))  # type: ignore[arg-type]
    response.begin()
    return response.status, response.read()


class _Received:
    """What a socket received, for http.client to parse."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def test_nginx_refuses_bodies_synapse_would_refuse_before_spooling_them(fleet: SecuredFleet) -> None:
    auth = {"Authorization": f"Bearer {fleet.token}", "Content-Type": "application/json"}
    path = "/_matrix/client/v3/rooms/!nowhere:localhost/send/m.room.message/t1"
    status, body = _send_large(fleet, path, 64 << 20, auth)
    assert status == 413 and b"<html>" in body  # nginx's page, not Synapse's JSON
    status, body = _send_large(fleet, path, REQUEST_BODY_LIMIT + 1, auth)
    assert status == 413 and b"<html>" in body


def test_media_uploads_may_be_as_large_as_the_fleet_allows(fleet: SecuredFleet) -> None:
    size = 20 << 20
    auth = {"Authorization": f"Bearer {fleet.token}", "Content-Type": "application/octet-stream"}
    status, body = _send_large(fleet, "/_matrix/media/v3/upload?filename=big.bin", size, auth)
    assert status == 200, body
    media_id = json.loads(body)["content_uri"].rsplit("/", 1)[1]
    download = httpx.get(
        f"http://127.0.0.1:{fleet.port}/_matrix/client/v1/media/download/localhost/{media_id}",
        headers={"Authorization": f"Bearer {fleet.token}"},
        timeout=60,
    )
    assert download.status_code == 200 and len(download.content) == size
    too_large = Media().max_upload_bytes + (1 << 20)
    status, body = _send_large(fleet, "/_matrix/media/v3/upload?filename=huge.bin", too_large, auth)
    assert status == 413 and b"<html>" in body


def _connect_as_nobody(paths: list[Path]) -> list[str]:
    """Which of ``paths`` an account outside the fleet can connect to (in a child that became nobody)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        reached = []
        for path in paths:
            with socket.socket(socket.AF_UNIX) as conn:
                try:
                    conn.connect(str(path))
                    reached.append(str(path))
                except OSError:
                    pass
        os.write(write, json.dumps(reached).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reached: list[str] = json.loads(pipe.read())
    os.waitpid(child, 0)
    return reached


def test_no_socket_of_the_fleet_is_reachable_by_other_local_accounts(fleet: SecuredFleet) -> None:
    sockets = [path for path in (fleet.directory / "run").rglob("*") if path.is_socket()]
    names = {path.name for path in sockets}
    assert {"synapse_inbound_main.sock", "synapse_replication_main.sock", "redis.sock", ".s.PGSQL.5432"} <= names
    assert "supervisor.sock" in names
    assert _connect_as_nobody(sockets) == []
    # The fleet's own processes do reach them: nginx serves, so the test above is not vacuous.
    assert fleet.request("GET", "/health")[0] == 200


def test_postgresql_wants_the_password_even_from_root(fleet: SecuredFleet) -> None:
    psql = require_binary("psql")
    sockets = str(RunPaths(fleet.directory).sockets)
    command = [psql, "-w", "-h", sockets, "-U", "synapse", "-d", "synapse", "-c", "SELECT 1"]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    as_root = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    assert as_root.returncode != 0 and "password" in as_root.stderr
    as_nobody = subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert as_nobody.returncode != 0
    password = (fleet.directory / "secrets" / "postgres_password").read_text().strip()
    with_password = subprocess.run(
        command, env={**environment, "PGPASSWORD": password}, capture_output=True, text=True, check=False
    )
    assert with_password.returncode == 0, with_password.stderr


def test_nothing_but_supervisord_and_nginx_runs_as_root(fleet: SecuredFleet) -> None:
    run = str(fleet.directory / "run")
    users: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            name = (entry / "comm").read_text().strip()
            uid = int((entry / "status").read_text().split("\nUid:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
        if run in command:
            users.setdefault(name, set()).add(uid)
    assert {"postgres", "redis-server", "nginx", "supervisord"} <= set(users), users
    rooted = {name for name, uids in users.items() if 0 in uids}
    assert rooted == {"supervisord", "nginx"}, users


def test_no_secret_in_the_run_directory_is_readable_by_other_accounts(fleet: SecuredFleet) -> None:
    """While the fleet runs, every file of ``D/run`` that holds a secret (the config with the
    database password, the copies of the secrets) is readable by its owner, and at most the
    fleet's group."""
    account = lookup(FLEET_ACCOUNT)
    assert account is not None
    run = RunPaths(fleet.directory).run.resolve()
    checked, exposed = exposures(run, secret_values(fleet.directory), account.gid)
    assert not exposed, exposed
    assert {"synapse/homeserver.yaml", "secrets/signing.key"} <= set(checked), checked


# -- root never acts through what the fleet's account can change -----------------------------------


def _as_fleet_account(*command: str) -> subprocess.CompletedProcess[str]:
    account = lookup(FLEET_ACCOUNT)
    assert account is not None
    return subprocess.run(command, capture_output=True, text=True, check=False, preexec_fn=account.switch, cwd="/")


def _bait(directory: Path, name: str) -> Path:
    """A root-owned 0600 file that a link planted by the fleet's account points to."""
    path = directory / name
    path.write_text(f"root's own {name}\n")
    path.chmod(0o600)
    return path


def _unchanged(baits: list[Path]) -> list[str]:
    """The baits that no longer are root's 0600 files with their first content."""
    return [
        f"{bait}: uid {found.st_uid}, mode {found.st_mode & 0o7777:o}, {bait.read_text()!r}"
        for bait in baits
        for found in [bait.stat()]
        if (found.st_uid, found.st_mode & 0o7777, bait.read_text()) != (0, 0o600, f"root's own {bait.name}\n")
    ]


def test_the_fleets_account_cannot_write_where_root_writes(fleet: SecuredFleet) -> None:
    paths = RunPaths(fleet.directory)
    own = paths.log("main")
    assert own.parent == paths.own_logs and own.stat().st_uid == lookup(FLEET_ACCOUNT).uid  # type: ignore[union-attr]
    for directory in (paths.run, paths.logs, paths.config, paths.secrets, paths.nginx_dir, paths.nginx_dir / "tmp"):
        assert directory.stat().st_uid == 0, directory
        planted = _as_fleet_account("ln", "-s", "/etc/shadow", str(directory / "planted"))
        assert planted.returncode != 0 and "Permission denied" in planted.stderr, directory
    # It reads what it needs: its config and secrets, by group.
    assert _as_fleet_account("cat", str(paths.secrets / "signing.key")).returncode == 0
    assert _as_fleet_account("cat", str(paths.config / "homeserver.yaml")).returncode == 0
    # nobody else does.
    for private in (paths.config, paths.secrets, paths.logs, paths.data):
        assert private.stat().st_mode & 0o007 == 0, private


def test_links_planted_by_the_fleets_account_never_steer_root(fleet: SecuredFleet, tmp_path: Path) -> None:
    """Links the account plants in its data, media and log directories: backup, down, up and apply,
    run as root, leave each link's target (a root-owned 0600 file) as it was."""
    paths = RunPaths(fleet.directory)
    media = paths.data / "media_store" / "local_content" / "planted"
    assert _as_fleet_account("mkdir", "-p", str(media)).returncode == 0
    planted = {
        paths.data / "planted": _bait(tmp_path, "data"),
        media / "file": _bait(tmp_path, "media"),
        paths.own_logs / "future_worker.log": _bait(tmp_path, "future-log"),
        paths.sockets / "planted.sock": _bait(tmp_path, "socket"),
    }
    for link, bait in planted.items():
        made = _as_fleet_account("ln", "-sfn", str(bait), str(link))
        assert made.returncode == 0, made.stderr
    baits = list(planted.values())
    archive = tmp_path / "fleet.backup"
    assert fleet.synfleet("backup", "--out", str(archive)).returncode == 0
    assert _unchanged(baits) == []
    assert b"root's own" not in archive.read_bytes()  # no link's target went into the backup either
    assert fleet.synfleet("down").returncode == 0
    # Stopped, main's own log is the account's to replace, with a link to a root file.
    main_bait = _bait(tmp_path, "main-log")
    assert _as_fleet_account("ln", "-sfn", str(main_bait), str(paths.log("main"))).returncode == 0
    fleet.synfleet("up")  # main cannot log through the link: it may fail, root must not give in
    assert _unchanged([*baits, main_bait]) == []
    fleet.synfleet("down")
    assert _as_fleet_account("rm", str(paths.log("main"))).returncode == 0
    again = fleet.synfleet("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.synfleet("apply").returncode == 0
    assert _unchanged([*baits, main_bait]) == []
    assert fleet.request("GET", "/health")[0] == 200


def test_files_go_to_no_account_synfleet_did_not_create() -> None:
    name = f"sf-other-{secrets.token_hex(3)}"
    made = subprocess.run(["useradd", "--system", "--shell", "/bin/sh", name], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    try:
        with pytest.raises(SynfleetError, match="synfleet did not create it"):
            accounts._ours(name)
        accounts._ours(FLEET_ACCOUNT)  # the fleet's own pass
    finally:
        subprocess.run(["userdel", name], check=True)
