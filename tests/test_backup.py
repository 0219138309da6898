"""`synfleet backup` and `synfleet restore` on a real fleet: users, rooms, messages, media and a
device come back in a new directory with the same signing key and secrets; a damaged or foreign
archive, and a target that holds a fleet, are refused before anything is written."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nio import AsyncClient
from nio.responses import RoomMessagesResponse

import helpers
from conftest import FLEET_TIMEOUT, fleet_up, synfleet
from synfleet.model.load import load_spec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.system import free_port

pytestmark = pytest.mark.integration

PASSWORD = "backup and restore"


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


async def read_back(url: str, content: Content) -> None:
    alice = AsyncClient(url, "@alice:localhost")
    response = await alice.login(PASSWORD, device_name="after-restore")
    assert alice.access_token, response
    try:
        page = await alice.room_messages(content.room, limit=100)
        assert isinstance(page, RoomMessagesResponse), page
        assert content.messages <= {getattr(e, "body", "") for e in page.chunk}
        downloaded = await alice.download(content.media_uri)
        assert downloaded.body == content.media
        devices = await alice.devices()
        assert content.device in {d.id for d in devices.devices}
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


def test_restore_brings_back_users_rooms_media_devices_and_keys(archive: tuple[Path, Content, Path]) -> None:
    out, content, source = archive
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and "database.dump" in names and "secrets/signing.key" in names
    assert any(name.startswith("media/") for name in names)

    target = out.parent / "restored"
    restored = synfleet("restore", str(out), directory=target, timeout=FLEET_TIMEOUT)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    for name in ("signing.key", "registration_shared_secret", "postgres_password"):
        assert (target / "secrets" / name).read_bytes() == (source / "secrets" / name).read_bytes(), name
    with fleet_up(target) as up:
        assert "loading the restored database" in up.stdout
        port = load_spec(target).listen.http_port
        asyncio.run(read_back(f"http://127.0.0.1:{port}", content))

    # The restored directory now holds a fleet: restoring over it needs --force.
    again = synfleet("restore", str(out), "--dir", str(target))
    assert again.returncode == 2 and "already holds a fleet" in again.stderr, again.stderr


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")) if directory.exists() else []:
        h.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


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
