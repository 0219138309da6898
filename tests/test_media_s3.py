"""Media in a bucket (media.store = "s3") against a real S3 API on this machine (moto's server mode,
see tests/s3.py): an upload through nginx lands in the bucket before it is acknowledged; `synfleet
media offload` empties the disk only of what the bucket holds whole, and the media worker reads it
back from the bucket byte for byte, thumbnails too; 200 files move with nothing lost; the disk is
brought under a size, least recently used first; a bucket that refuses writes fails the upload and
loses nothing already stored; two media workers on two lab hosts serve each other's media."""

from __future__ import annotations

import json
import secrets
import stat
import struct
import subprocess
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

import helpers
from conftest import FLEET_TIMEOUT, fleet_up, synfleet
from s3 import S3Store
from synfleet.lab import Lab, unavailable_reason
from synfleet.lab.netns import entered
from synfleet.layout import COMPOSE
from synfleet.model.schema import FleetSpec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.secrets import Secret
from synfleet.render.synapse import render_synapse
from synfleet.run.media import MEDIA_CACHE, media_store, stored_files
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_user
from synfleet.run.supervisor import Supervisor
from synfleet.system import free_port

BUCKET = "synfleet-media"
PASSWORD = "long enough to be a password"


def png(side: int = 96) -> bytes:
    """A real PNG image (random colours), which Synapse thumbnails."""
    rows = b"".join(b"\x00" + secrets.token_bytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    header = struct.pack("!IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@dataclass
class MediaFleet:
    directory: Path
    port: int
    store: S3Store
    token: str = ""
    host: str = ""
    uploaded: dict[str, bytes] = field(default_factory=dict)  # media ID -> bytes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def upload(self, content: bytes, kind: str = "application/octet-stream") -> httpx.Response:
        with self.client() as client:
            answer = client.post("/_matrix/media/v3/upload", content=content, headers={"Content-Type": kind})
        if answer.status_code == 200:
            self.uploaded[answer.json()["content_uri"].rsplit("/", 1)[1]] = content
        return answer

    def download(self, media_id: str, thumbnail: bool = False) -> httpx.Response:
        with self.client() as client:
            if thumbnail:
                return client.get(f"/_matrix/client/v1/media/thumbnail/localhost/{media_id}?width=32&height=32")
            return client.get(f"/_matrix/client/v1/media/download/localhost/{media_id}")

    def on_disk(self) -> dict[str, int]:
        """The media store's files (relative path -> size)."""
        return {f.relative: f.size for f in stored_files(media_store(RunPaths(self.directory, self.host)))}

    def offload(self, *args: str) -> str:
        done = synfleet("media", "offload", *args, directory=self.directory, timeout=FLEET_TIMEOUT)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


#: The disk's bound in the fixture's fleet: small, for the cache test.
CACHE_SIZE = 300 * 1024


def media_section(store: S3Store) -> dict[str, str]:
    return {
        "store": "s3",
        "s3_bucket": BUCKET,
        "s3_endpoint": store.endpoint,
        "s3_region": "us-east-1",
        "cache_size": f"{CACHE_SIZE // 1024}K",
    }


@pytest.fixture(scope="module")
def fleet() -> Iterator[MediaFleet]:
    with S3Store(BUCKET) as store, world_readable_tempdir("synfleet-s3-") as directory:
        port = free_port()
        spec = helpers.profile_with(
            "small", listen={"http_port": port}, media=media_section(store), synapse={"relaxed_rate_limits": True}
        )
        (directory / "fleet.toml").write_text(fleet_toml(spec))
        with fleet_up(directory):
            media = MediaFleet(directory, port, store)
            media.token = register_user(RunPaths(directory), "alice", PASSWORD, admin=False)["access_token"]
            yield media


@pytest.mark.integration
def test_an_upload_is_in_the_bucket_and_comes_back_from_it_once_off_the_disk(fleet: MediaFleet) -> None:
    image = png()
    answer = fleet.upload(image, "image/png")
    assert answer.status_code == 200, answer.text
    media_id = answer.json()["content_uri"].rsplit("/", 1)[1]
    local = {path: size for path, size in fleet.on_disk().items() if media_id[2:] in path.replace("/", "")}
    assert local and all(fleet.store.keys().get(path) == size for path, size in local.items()), local
    thumbnails = [path for path in local if path.startswith("local_thumbnails/")]
    assert thumbnails, local  # made at upload, and stored in the bucket too
    assert fleet.store.object(next(p for p in local if p.startswith("local_content/"))) == image

    output = fleet.offload("--all")
    assert "moved" in output and not set(local) & set(fleet.on_disk()), output
    download = fleet.download(media_id)
    assert download.status_code == 200 and download.content == image
    thumbnail = fleet.download(media_id, thumbnail=True)
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"].startswith("image/"), thumbnail.text


@pytest.mark.integration
def test_offloading_200_files_loses_none(fleet: MediaFleet) -> None:
    batch = {}
    for _ in range(200):
        content = secrets.token_bytes(secrets.randbelow(20_000) + 1)
        answer = fleet.upload(content)
        assert answer.status_code == 200, answer.text
        batch[answer.json()["content_uri"].rsplit("/", 1)[1]] = content
    on_disk = fleet.on_disk()
    assert sum(path.startswith("local_content/") for path in on_disk) >= 200
    output = fleet.offload("--all")
    print(output)
    assert "200/" in output or "/2" in output  # progress lines
    assert not fleet.on_disk()
    held = fleet.store.keys()
    assert all(held.get(path) == size for path, size in on_disk.items())
    for media_id, content in batch.items():
        answer = fleet.download(media_id)
        assert answer.status_code == 200 and answer.content == content, media_id


@pytest.mark.integration
def test_the_disk_is_brought_under_a_size_least_recently_used_first(fleet: MediaFleet) -> None:
    for _ in range(10):
        assert fleet.upload(secrets.token_bytes(30_000)).status_code == 200
    before = fleet.on_disk()
    assert sum(before.values()) > 200_000
    fleet.offload("--keep", "100K")
    after = fleet.on_disk()
    assert 0 < sum(after.values()) <= 100 * 1024 and set(after) < set(before)
    held = fleet.store.keys()
    assert all(held.get(path) == size for path, size in before.items())


@pytest.mark.integration
def test_the_media_cache_process_keeps_the_disk_under_its_bound(fleet: MediaFleet) -> None:
    """The native run's media_cache process brings the disk under media.cache_size at each round
    (the first when it starts): restarted after 600 KB of uploads, it moves the excess."""
    for _ in range(12):
        assert fleet.upload(secrets.token_bytes(50_000)).status_code == 200
    assert sum(fleet.on_disk().values()) > CACHE_SIZE
    supervisor = Supervisor(RunPaths(fleet.directory))
    supervisor.stop(MEDIA_CACHE)
    supervisor.start(MEDIA_CACHE)
    deadline = time.monotonic() + 60
    while sum(fleet.on_disk().values()) > CACHE_SIZE and time.monotonic() < deadline:
        time.sleep(1)
    assert 0 < sum(fleet.on_disk().values()) <= CACHE_SIZE
    status = fleet_synfleet(fleet, "status", "--json")
    assert any(p["name"] == MEDIA_CACHE for p in json.loads(status.stdout)["processes"]), status.stdout


@pytest.mark.integration
def test_a_backup_says_the_media_is_in_the_bucket_and_not_in_it(fleet: MediaFleet) -> None:
    archive = fleet.directory / "backup.tar"
    done = fleet_synfleet(fleet, "backup", "--out", str(archive))
    assert f"in the bucket {BUCKET} at {fleet.store.endpoint}, whose objects are NOT in this archive" in done.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert not any(name.startswith("media/") for name in names) and manifest["media"]["store"] == "s3"
    archive.unlink()


def fleet_synfleet(fleet: MediaFleet, *args: str) -> subprocess.CompletedProcess[str]:
    done = synfleet(*args, directory=fleet.directory, timeout=FLEET_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.integration
def test_a_bucket_that_refuses_writes_fails_the_upload_and_loses_nothing(fleet: MediaFleet) -> None:
    stored = dict(fleet.uploaded)
    fleet.store.refuse_writes = True
    try:
        refused = fleet.upload(secrets.token_bytes(5000))
        assert refused.status_code >= 500, refused.text
        assert fleet.store.refused
        offload = synfleet("media", "offload", "--all", directory=fleet.directory, timeout=FLEET_TIMEOUT)
        for media_id, content in stored.items():  # on the disk or in the bucket, every one still served
            answer = fleet.download(media_id)
            assert answer.status_code == 200 and answer.content == content, media_id
    finally:
        fleet.store.refuse_writes = False
    # an offload that could not upload kept what it could not move
    assert offload.returncode in (0, 1), offload.stderr
    again = fleet.upload(secrets.token_bytes(5000))
    assert again.status_code == 200, again.text


@pytest.mark.integration
@pytest.mark.prerequisite(unavailable_reason())
def test_two_media_workers_on_two_hosts_serve_the_same_media() -> None:
    """media1 on host a, media2 on host b, one bucket (on host a's address): a file uploaded
    through one is downloaded through the other, whichever the upload went to."""
    with world_readable_tempdir("synfleet-s3-hosts-") as directory, Lab(["a", "b"]) as lab:
        with entered(lab["a"].netns):
            store = S3Store(BUCKET, lab["a"].address)
            store.__enter__()
        try:
            port = free_port()
            spec = helpers.profile_with(
                "small",
                listen={"http_port": port},
                media=media_section(store),
                workers={"media": 2, "rooms": 1, "sender": 0},
                synapse={"relaxed_rate_limits": True},
            )
            data = spec.model_dump(mode="json")
            data["hosts"] = {name: {"address": lab[name].address} for name in ("a", "b")}
            data["placement"] = {"default": "a", "media": ["a", "b"]}
            (directory / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(data)))
            started = []
            try:
                for host in ("a", "b"):
                    up = synfleet(
                        "up", "--host", host, directory=directory, timeout=FLEET_TIMEOUT, runner=lab[host].run
                    )
                    assert up.returncode == 0, up.stdout + up.stderr
                    started.append(host)
                _served_by_both(lab, directory, port, store)
            finally:
                for host in reversed(started):
                    synfleet("down", "--host", host, directory=directory, timeout=FLEET_TIMEOUT, runner=lab[host].run)
        finally:
            store.__exit__(None, None, None)


def _served_by_both(lab: Lab, directory: Path, port: int, store: S3Store) -> None:
    """nginx sends each user's media requests to one media worker (by the user): users upload
    until each worker has taken some; every file off the disk of the host that took it; then
    a user of each worker downloads every file, the other worker's from the bucket."""
    paths = RunPaths(directory, "a")
    files: dict[str, bytes] = {}
    owners: dict[str, str] = {}  # host -> a token whose requests go to its worker
    with entered(lab["a"].netns):
        for number in range(20):
            token = register_user(paths, f"user{number}", PASSWORD, admin=False)["access_token"]
            user = MediaFleet(directory, port, store, token)
            before = {host: len(MediaFleet(directory, port, store, host=host).on_disk()) for host in ("a", "b")}
            for _ in range(2):
                content = secrets.token_bytes(4000)
                answer = user.upload(content)
                assert answer.status_code == 200, answer.text
                files[answer.json()["content_uri"].rsplit("/", 1)[1]] = content
            for host in ("a", "b"):
                if len(MediaFleet(directory, port, store, host=host).on_disk()) > before[host]:
                    owners.setdefault(host, token)
            if len(owners) == 2:
                break
    assert len(owners) == 2, owners
    for host in ("a", "b"):
        offloaded = synfleet(
            "media",
            "offload",
            "--all",
            "--host",
            host,
            directory=directory,
            timeout=FLEET_TIMEOUT,
            runner=lab[host].run,
        )
        assert offloaded.returncode == 0, offloaded.stdout + offloaded.stderr
        assert not MediaFleet(directory, port, store, host=host).on_disk()
    with entered(lab["a"].netns):
        for token in owners.values():
            reader = MediaFleet(directory, port, store, token)
            for media_id, content in files.items():
                answer = reader.download(media_id)
                assert answer.status_code == 200 and answer.content == content, media_id


def test_the_bucket_and_its_credentials_reach_only_the_media_repository(tmp_path: Path) -> None:
    """Rendered: the media worker's own config names the bucket, with the credentials from
    D/secrets (generated when missing), so that file is private; homeserver.yaml and the other
    workers' files have neither. Without media workers, main's homeserver.yaml has them."""
    spec = helpers.profile_with("small", media={"store": "s3", "s3_bucket": BUCKET, "s3_endpoint": "https://s3.test"})
    (tmp_path / "fleet.toml").write_text(fleet_toml(spec))
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    secret = (tmp_path / "secrets" / "s3_secret_access_key").read_text().strip()
    key_id = (tmp_path / "secrets" / "s3_access_key_id").read_text().strip()
    assert (len(key_id) == 20 and key_id.isupper()) or key_id.isdigit()
    synapse = tmp_path / "deploy" / "synapse"
    media = synapse / "workers" / "media1.yaml"
    providers = yaml.safe_load(media.read_text())["media_storage_providers"]
    assert providers[0]["config"] == {
        "bucket": BUCKET,
        "prefix": "",
        "access_key_id": key_id,
        "secret_access_key": secret,
        "endpoint_url": "https://s3.test",
    }
    assert providers[0]["store_synchronous"] is True
    assert stat.S_IMODE(media.stat().st_mode) == 0o600
    others = [p for p in synapse.rglob("*.yaml") if p != media]
    assert others and not any(secret in p.read_text() for p in others)

    monolith = helpers.profile_with("monolith", media={"store": "s3", "s3_bucket": BUCKET})
    shared = yaml.safe_load(render_synapse(monolith, COMPOSE, dict.fromkeys(Secret, "x"))["homeserver.yaml"])
    assert shared["media_storage_providers"][0]["config"]["bucket"] == BUCKET


@pytest.mark.parametrize(
    ("media", "message"),
    [
        ({"store": "s3"}, 'media: s3_bucket: required with store = "s3"'),
        ({"store": "s3", "s3_bucket": "Not_A_Bucket"}, "media.s3_bucket: must be an S3 bucket name"),
        ({"store": "s3", "s3_bucket": BUCKET, "s3_endpoint": "s3.test"}, "media.s3_endpoint: must be the store's URL"),
        ({"store": "disk"}, "media.store"),
        ({"cache_size": "lots"}, "media.cache_size: must be a size"),
    ],
)
def test_a_wrong_media_section_is_one_message(tmp_path: Path, media: dict[str, str], message: str) -> None:
    text = 'server_name = "example.org"\n[media]\n' + "".join(f'{k} = "{v}"\n' for k, v in media.items())
    (tmp_path / "fleet.toml").write_text(text)
    done = synfleet("render", "--dir", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "deploy").exists()


def test_media_workers_on_two_hosts_need_a_bucket() -> None:
    data = helpers.profile_with("small", workers={"media": 2}).model_dump(mode="json")
    data["hosts"] = {"a": {"address": "10.9.0.2"}, "b": {"address": "10.9.0.3"}}
    data["placement"] = {"default": "a", "media": ["a", "b"]}
    with pytest.raises(ValueError, match="must share one media store"):
        FleetSpec.model_validate(data)
    data["media"].update(store="s3", s3_bucket=BUCKET)
    assert {w.host for w in FleetSpec.model_validate(data).fleet.workers if w.name.startswith("media")} == {"a", "b"}


def test_offload_refuses_a_fleet_without_a_bucket(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(fleet_toml(helpers.profile_with("small")))
    done = synfleet("media", "offload", "--dir", str(tmp_path))
    assert done.returncode == 2 and 'set media.store = "s3"' in done.stderr, done.stderr
    both = synfleet("media", "offload", "--all", "--keep", "1G", "--dir", str(tmp_path))
    assert both.returncode == 2 and "--all moves every file" in both.stderr
    age = synfleet("media", "offload", "--older-than", "soon", "--dir", str(tmp_path))
    assert age.returncode == 2 and "--older-than: an age such as 30d" in age.stderr
