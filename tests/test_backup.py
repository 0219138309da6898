"""`synfleet backup` and `synfleet restore` on a real fleet: users, rooms, messages, media and a
device come back in a new directory with the same signing key and secrets; a damaged or foreign
archive, and a target that holds a fleet, are refused before anything is written. `restore --force`
killed before or after its swap leaves a fleet that serves, and `up` refuses to start an empty
database beside a signing key that has served (tests/test_restore_atomic.py kills it at every step
and checks the files)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from nio import AsyncClient
from nio.responses import RoomMessagesResponse

import helpers
from conftest import FLEET_TIMEOUT, fleet_up, synfleet
from synfleet.model.load import load_spec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.run.backup import pending_dump
from synfleet.run.paths import RunPaths
from synfleet.system import free_port

pytestmark = pytest.mark.integration

PASSWORD = "backup and restore"
#: A message sent to a restored fleet after its restore: in that fleet, not in the archive.
AFTER_RESTORE = "sent after the restore"


@dataclass
class Content:
    """What the fleet held when it was backed up."""

    room: str
    messages: set[str]
    media_uri: str
    media: bytes
    device: str


async def fill(url: str) -> Content:
    alice = AsyncClient(url, "@alice:localhost")
    await alice.login(PASSWORD, device_name="backup-test")
    try:
        room = (await alice.room_create(name="kept")).room_id
        messages = set()
        for i in range(30):
            body = f"kept {i}"
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            messages.add(body)
        payload = secrets.token_bytes(300_000)
        uploaded, _ = await alice.upload(
            lambda *_: payload, content_type="application/octet-stream", filename="kept.bin", filesize=len(payload)
        )
        return Content(room, messages, uploaded.content_uri, payload, str(alice.device_id))
    finally:
        await alice.close()


async def read_back(url: str, content: Content, also: str = "", without: str = "") -> None:
    """The archive's content is there (and the message ``also``, not ``without``); then ``also``
    is sent."""
    alice = AsyncClient(url, "@alice:localhost")
    response = await alice.login(PASSWORD, device_name="after-restore")
    assert alice.access_token, response
    try:
        page = await alice.room_messages(content.room, limit=100)
        assert isinstance(page, RoomMessagesResponse), page
        bodies = {getattr(e, "body", "") for e in page.chunk}
        assert content.messages <= bodies
        assert not without or without not in bodies
        downloaded = await alice.download(content.media_uri)
        assert downloaded.body == content.media
        devices = await alice.devices()
        assert content.device in {d.id for d in devices.devices}
        if also:
            await alice.room_send(content.room, "m.room.message", {"msgtype": "m.text", "body": also})
    finally:
        await alice.close()


@pytest.fixture(scope="module")
def archive() -> Iterator[tuple[Path, Content, Path]]:
    """A small fleet with content, backed up, then stopped: (archive, content, its directory)."""
    with world_readable_tempdir("synfleet-backup-") as top:
        source = top / "source"
        source.mkdir()
        port = free_port()
        # the exec start (synapse.start = "exec"): each Synapse process its own Python
        spec = helpers.profile_with(
            "small", listen={"http_port": port}, synapse={"relaxed_rate_limits": True, "start": "exec"}
        )
        (source / "fleet.toml").write_text(fleet_toml(spec))
        with fleet_up(source):
            added = synfleet("user", "add", "alice", "--password", PASSWORD, directory=source, timeout=FLEET_TIMEOUT)
            assert added.returncode == 0
            content = asyncio.run(fill(f"http://127.0.0.1:{port}"))
            out = top / "fleet.backup"
            made = synfleet("backup", "--out", str(out), directory=source, timeout=FLEET_TIMEOUT)
            assert made.returncode == 0, made.stdout + made.stderr
            print(made.stdout)
        yield out, content, source


@pytest.fixture(scope="module")
def restored(archive: tuple[Path, Content, Path]) -> Iterator[tuple[Path, str]]:
    """The archive restored into a new directory, started (then stopped): (the directory, what
    `up` printed). While it ran, the archive's content was read back, ``AFTER_RESTORE`` sent, and
    `restore --force` onto it refused."""
    out, content, source = archive
    target = out.parent / "restored"
    done = synfleet("restore", str(out), directory=target, timeout=FLEET_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("signing.key", "registration_shared_secret", "postgres_password"):
        assert (target / "secrets" / name).read_bytes() == (source / "secrets" / name).read_bytes(), name
    with fleet_up(target) as up:
        port = load_spec(target).listen.http_port
        asyncio.run(read_back(f"http://127.0.0.1:{port}", content, also=AFTER_RESTORE))
        before = fleet_files(target)
        running = synfleet("restore", str(out), "--force", "--dir", str(target))
        assert running.returncode == 2 and "is running" in running.stderr, running.stderr
        assert fleet_files(target) == before
    yield target, up.stdout


def test_restore_brings_back_users_rooms_media_devices_and_keys(
    archive: tuple[Path, Content, Path], restored: tuple[Path, str]
) -> None:
    out, _, _ = archive
    target, up = restored
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and "database.dump" in names and "secrets/signing.key" in names
    assert any(name.startswith("media/") for name in names)
    # The source fleet had served with its key when it was backed up; the archive says so.
    assert "secrets/signing.key.served" in names
    assert "loading the restored database" in up
    assert not pending_dump(RunPaths(target)).exists()

    # The restored directory now holds a fleet: restoring over it needs --force.
    again = synfleet("restore", str(out), "--dir", str(target))
    assert again.returncode == 2 and "already holds a fleet" in again.stderr, again.stderr


def killed_at(step: str) -> dict[str, str]:
    """The environment that makes synfleet kill itself (SIGKILL) when it reaches ``step``."""
    return {**os.environ, "SYNFLEET_FAULT": step, "PYTHONUNBUFFERED": "1"}


def test_restore_force_killed_before_or_after_its_swap_leaves_a_fleet_that_serves(
    archive: tuple[Path, Content, Path], restored: tuple[Path, str]
) -> None:
    out, content, _ = archive
    target, _ = restored
    url = f"http://127.0.0.1:{load_spec(target).listen.http_port}"
    old_cluster = RunPaths(target).postgres_data
    version = (old_cluster / "PG_VERSION").stat()

    # Killed with the new fleet staged: the directory is exactly as it was.
    before = digest(target)
    killed = synfleet("restore", str(out), "--force", directory=target, env=killed_at("staged"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert digest(target) == before

    # Killed right after the swap: the directory holds the archive's fleet, the old one is whole
    # beside it, its database where it was.
    killed = synfleet("restore", str(out), "--force", directory=target, env=killed_at("exchanged"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert pending_dump(RunPaths(target)).is_file() and not RunPaths(target).postgres_data.exists()
    (old,) = [p for p in target.parent.iterdir() if p.name.startswith("restored.restore-")]
    kept = (RunPaths(old).postgres_data / "PG_VERSION").stat()
    assert (kept.st_ino, kept.st_mtime) == (version.st_ino, version.st_mtime)

    try:
        # `up` killed once the dump is loaded, before it is removed: the next `up` does not load it
        # again, and serves the archive's content (without what the old fleet got after it).
        partial = synfleet("up", directory=target, env=killed_at("loaded"), timeout=FLEET_TIMEOUT)
        assert partial.returncode == -signal.SIGKILL, partial.stdout + partial.stderr
        assert "loading the restored database" in partial.stdout
        with fleet_up(target) as up:
            assert "loading the restored database" not in up.stdout
            asyncio.run(read_back(url, content, without=AFTER_RESTORE))
    finally:
        synfleet("down", directory=target, timeout=FLEET_TIMEOUT)


def test_up_refuses_an_empty_database_beside_a_signing_key_that_has_served(
    archive: tuple[Path, Content, Path],
) -> None:
    out, _, source = archive
    top = out.parent  # a directory the fleet's accounts reach

    def refused(directory: Path) -> None:
        result = synfleet("up", directory=directory, timeout=FLEET_TIMEOUT)
        try:
            assert result.returncode == 2, result.stdout + result.stderr
            assert result.stderr.startswith("synfleet: error: ") and result.stderr.count("\n") == 1, result.stderr
            assert "signing key" in result.stderr and "synfleet restore" in result.stderr, result.stderr
        finally:
            synfleet("down", directory=directory, timeout=FLEET_TIMEOUT)

    # A restored fleet whose dump was lost before `up` loaded it.
    lost_dump = top / "lost-dump"
    assert synfleet("restore", str(out), directory=lost_dump).returncode == 0
    shutil.rmtree(pending_dump(RunPaths(lost_dump)).parent)
    refused(lost_dump)
    assert not RunPaths(lost_dump).postgres_data.exists()

    # A fleet that ran, whose PostgreSQL cluster is gone.
    no_cluster = top / "no-cluster"
    shutil.copytree(source, no_cluster, symlinks=True, ignore=shutil.ignore_patterns("postgres", "*.sock", ".s.PGSQL*"))
    refused(no_cluster)

    # A cluster whose Synapse database lost what Synapse keeps there: `up` killed after loading the
    # dump (PostgreSQL left running), every table dropped, the dump gone.
    dropped = top / "dropped"
    assert synfleet("restore", str(out), directory=dropped).returncode == 0
    try:
        partial = synfleet("up", directory=dropped, env=killed_at("loaded"), timeout=FLEET_TIMEOUT)
        assert partial.returncode == -signal.SIGKILL, partial.stdout + partial.stderr
        spec = load_spec(dropped)
        password = (dropped / "secrets" / "postgres_password").read_text().strip()
        connection = psycopg2.connect(
            host=str(RunPaths(dropped).sockets),
            port=spec.database.port,
            dbname=spec.database.name,
            user=spec.database.user,
            password=password,
        )
        try:
            connection.autocommit = True
            connection.cursor().execute(f'DROP OWNED BY "{spec.database.user}" CASCADE')
        finally:
            connection.close()
        shutil.rmtree(pending_dump(RunPaths(dropped)).parent)
    finally:
        synfleet("down", directory=dropped, timeout=FLEET_TIMEOUT)
    refused(dropped)


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")) if directory.exists() else []:
        h.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


def fleet_files(directory: Path) -> tuple[list[Path], str, bytes]:
    """What is beside ``directory``, its secrets and its fleet file (not its run directory, where a
    running fleet writes)."""
    return sorted(directory.parent.iterdir()), digest(directory / "secrets"), (directory / "fleet.toml").read_bytes()


@pytest.mark.parametrize("where", [0.02, 0.5, 0.98])
def test_a_flipped_byte_is_refused_before_anything_is_written(
    archive: tuple[Path, Content, Path], tmp_path: Path, where: float
) -> None:
    out, _, _ = archive
    damaged = tmp_path / "damaged.backup"
    data = bytearray(out.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    damaged.write_bytes(bytes(data))
    target = tmp_path / "target"
    result = synfleet("restore", str(damaged), "--dir", str(target))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("synfleet: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "damaged" in result.stderr or "not a synfleet backup" in result.stderr
    assert not target.exists()


def test_foreign_archives_and_bad_targets_are_refused(archive: tuple[Path, Content, Path], tmp_path: Path) -> None:
    out, _, source = archive
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        tar.add(source / "fleet.toml", arcname="fleet.toml")
    cases = [
        (["restore", str(foreign), "--dir", str(tmp_path / "a")], "not a synfleet backup"),
        (["restore", str(tmp_path / "missing.backup"), "--dir", str(tmp_path / "b")], "cannot be read"),
        (["restore", str(out), "--dir", str(source)], "already holds a fleet"),
        (["backup", "--dir", str(source), "--out", str(tmp_path / "x.backup")], "is not running"),
    ]
    stopped = synfleet("status", "--json", "--dir", str(source))
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["running"] is False
    for arguments, message in cases:
        before = digest(source)
        result = synfleet(*arguments)
        assert result.returncode == 2, (arguments, result.stdout + result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert digest(source) == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "x.backup").exists()
