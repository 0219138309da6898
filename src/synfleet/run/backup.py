"""`synfleet backup` and `synfleet restore`: a running native fleet in one archive, and back.

The archive is a tar file: ``manifest.json`` (format, server name, and the size and SHA-256 of
every other member), ``fleet.toml``, ``secrets/`` (the signing key among them), ``database.dump``
(``pg_dump``, custom format) and ``media/`` (the media store). After the tar's end comes one line,
``synfleet-backup sha256 <hex>``, the digest of every byte before it: a single flipped byte
anywhere is found before anything is written.

The database is dumped first, then the media store is read: every media file the dump names was
written before the dump began (Synapse stores the file, then its row), so it is in the archive.

``restore`` checks the whole archive, then stages the fleet file, the secrets, the media and the
dump beside the target directory and swaps it in whole (:mod:`synfleet.run.swap`): killed at any
step, the directory holds the old fleet or the new one. The dump waits where ``up`` finds it: ``up``
loads it into the fleet's new database before Synapse starts.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import MEDIA_STORE, SECRETS_DIR
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.schema import FleetSpec, parse_fleet
from synfleet.model.schema.storage import Database
from synfleet.render.secrets import Secret
from synfleet.run.faults import crash_point
from synfleet.run.paths import RUN_DIR, RunPaths
from synfleet.run.plan import running_processes
from synfleet.run.postgres import client
from synfleet.run.supervisor import Supervisor
from synfleet.run.swap import finish_interrupted, staging, swap_in

Report = Callable[[str], None]

FORMAT = "synfleet-backup"
VERSION = 1
MANIFEST = "manifest.json"
DATABASE_DUMP = "database.dump"
MEDIA = "media"
TRAILER_PREFIX = b"\nsynfleet-backup sha256 "
TRAILER_LENGTH = len(TRAILER_PREFIX) + 64 + 1
CHUNK = 1 << 20


def pending_dump(paths: RunPaths) -> Path:
    """Where ``restore`` leaves the database for ``up`` to load."""
    return paths.run / "restore" / DATABASE_DUMP


#: How a member of an archive is opened for reading.
Opener = Callable[[], IO[bytes]]


def _reader(path: Path) -> Opener:
    return lambda: path.open("rb")


def _measure(opener: Opener) -> tuple[int, str]:
    """A member's size and SHA-256, for the manifest."""
    digest, size = hashlib.sha256(), 0
    with opener() as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


class _HashingWriter(io.RawIOBase):
    """A file that hashes what is written to it (the archive, for its trailer)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return self.stream.write(data)


def _private_file(path: Path) -> IO[bytes]:
    """A new file at ``path``, open for writing, readable by its owner only from its creation."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "wb")


def _media_files(paths: RunPaths) -> list[tuple[str, Opener]]:
    """Every file of the media store, which the fleet's account owns: found and opened through
    descriptors, never through a link it may have put there (root would read the link's target)."""
    store = paths.data / MEDIA_STORE
    if not store.is_dir():
        return []
    found = []
    for root, _, files, descriptor in os.fwalk(store, follow_symlinks=False):
        for name in files:
            if stat.S_ISREG(os.lstat(name, dir_fd=descriptor).st_mode):
                relative = os.path.relpath(os.path.join(root, name), store)
                found.append((f"{MEDIA}/{relative}", functools.partial(_open_below, store, relative)))
    return sorted(found, key=lambda member: member[0])


def _open_below(top: Path, relative: str) -> IO[bytes]:
    """``top/relative``, opened one component at a time without following a link: a regular file."""
    descriptor = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        *directories, name = relative.split("/")
        for part in directories:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
        opened = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=descriptor)
    finally:
        os.close(descriptor)
    if not stat.S_ISREG(os.fstat(opened).st_mode):
        os.close(opened)
        raise SynfleetError(f"{top / relative} is no longer a file: the media store changed during the backup")
    return os.fdopen(opened, "rb")


def backup(directory: Path, out: Path, report: Report) -> dict[str, object]:
    """Write the running fleet in ``directory`` to ``out`` (mode 0600, written whole or not at all);
    returns the manifest."""
    paths = RunPaths(directory)
    spec = load_spec(directory)
    if not Supervisor(paths).running():
        raise UsageError(f"the fleet in {directory} is not running: backup reads its database; `synfleet up` first")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out: {out} is a directory")
    began = time.monotonic()
    own = [directory / FLEET_FILE, *sorted((directory / SECRETS_DIR).iterdir())]
    members: list[tuple[str, Opener]] = [(str(path.relative_to(directory)), _reader(path)) for path in own]
    with tempfile.TemporaryDirectory(prefix=".synfleet-backup-", dir=out.parent) as scratch:
        dump = Path(scratch) / DATABASE_DUMP
        _private_file(dump).close()  # pg_dump writes into it and keeps its mode
        report("database: pg_dump")
        client("pg_dump", paths, spec.database, "--format=custom", f"--file={dump}", failure="pg_dump failed")
        report(f"database: {_size(dump.stat().st_size)} in {time.monotonic() - began:.1f}s")
        members.append((DATABASE_DUMP, _reader(dump)))
        media = [] if spec.media.in_bucket else _media_files(paths)  # in a bucket: the disk is a cache
        members += media
        measured = {name: _measure(opener) for name, opener in members}
        files = {name: {"size": size, "sha256": sha256} for name, (size, sha256) in measured.items()}
        media_bytes = sum(measured[name][0] for name, _ in media)
        held = media_held(spec)
        report(f"media: {len(media)} files, {_size(media_bytes)}" if not spec.media.in_bucket else held["note"])
        manifest: dict[str, object] = {
            "format": FORMAT,
            "version": VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "server_name": spec.server_name,
            "database": spec.database.name,
            "media": held,
            "files": files,
        }
        partial = Path(scratch) / "archive"
        total = sum(size for size, _ in measured.values())
        written, shown = 0, 0
        with _private_file(partial) as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                data = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
                for name, opener in members:
                    with opener() as stream:
                        info = tarfile.TarInfo(name)
                        info.size, info.mode = measured[name][0], 0o600
                        info.mtime = int(os.fstat(stream.fileno()).st_mtime)
                        tar.addfile(info, stream)
                    written += info.size
                    if total and written * 10 // total > shown:
                        shown = written * 10 // total
                        report(f"archive: {shown * 10}% ({_size(written)} of {_size(total)})")
            raw.write(TRAILER_PREFIX + writer.digest.hexdigest().encode() + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        partial.replace(out)
    report(f"wrote {out} ({_size(out.stat().st_size)}) in {time.monotonic() - began:.1f}s")
    return manifest


def verify(path: Path, report: Report) -> dict[str, object]:
    """The archive's manifest, once the trailer's digest and every member's size and SHA-256 match;
    a UsageError naming the first thing wrong otherwise."""
    try:
        size = path.stat().st_size
        stream = path.open("rb")
    except OSError as error:
        raise UsageError(f"{path}: cannot be read: {error.strerror}") from None
    with stream:
        if size < TRAILER_LENGTH:
            raise UsageError(f"{path}: not a synfleet backup (too short)")
        stream.seek(size - TRAILER_LENGTH)
        trailer = stream.read()
        if not trailer.startswith(TRAILER_PREFIX) or not trailer.endswith(b"\n"):
            raise UsageError(f"{path}: not a synfleet backup (no synfleet-backup trailer)")
        expected = trailer[len(TRAILER_PREFIX) : -1].decode("ascii", "replace")
        stream.seek(0)
        digest, left = hashlib.sha256(), size - TRAILER_LENGTH
        while left:
            chunk = stream.read(min(CHUNK, left))
            digest.update(chunk)
            left -= len(chunk)
        if digest.hexdigest() != expected:
            raise UsageError(f"{path}: damaged: its content does not match its checksum; nothing was written")
    report(f"{path}: checksum ok ({_size(size)})")
    manifest = _read_manifest(path)
    files = manifest["files"]
    assert isinstance(files, dict)
    seen: set[str] = set()
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.name == MANIFEST:
                continue
            entry = files.get(member.name)
            if entry is None or not member.isfile() or not _safe_name(member.name):
                raise UsageError(f"{path}: damaged: {member.name} is not in its manifest")
            extracted = tar.extractfile(member)
            assert extracted is not None
            digest = hashlib.sha256()
            while chunk := extracted.read(CHUNK):
                digest.update(chunk)
            if member.size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                raise UsageError(f"{path}: damaged: {member.name} does not match its manifest")
            seen.add(member.name)
    if missing := sorted(set(files) - seen):
        raise UsageError(f"{path}: damaged: {missing[0]} is missing ({len(missing)} files in all)")
    return manifest


def _safe_name(name: str) -> bool:
    """A relative path that stays inside the directory it is extracted into."""
    parts = Path(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts


def _extract(path: Path, staged: Path) -> None:
    """Every part of a verified archive into its place in the fleet staged in ``staged``: the
    fleet file and the secrets there, the dump and the media in its run directory. Each file is
    private from its creation (the fleet file readable by all, as a rendered one is)."""
    paths = RunPaths(staged)
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            name = member.name
            if name == FLEET_FILE:
                target = staged / FLEET_FILE
            elif name == DATABASE_DUMP:
                target = pending_dump(paths)
            elif name.startswith(f"{MEDIA}/"):
                target = paths.data / MEDIA_STORE / name.removeprefix(f"{MEDIA}/")
            elif Path(name).parent == Path(SECRETS_DIR):
                target = staged / name
            else:  # the manifest, and nothing else a fleet is made of
                continue
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            extracted = tar.extractfile(member)
            assert extracted is not None
            with _private_file(target) as stream:
                if name == FLEET_FILE:
                    os.fchmod(stream.fileno(), 0o644)
                shutil.copyfileobj(extracted, stream, CHUNK)
            if name == DATABASE_DUMP:
                crash_point("staging")


def _read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, mode="r:") as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


def media_held(spec: FleetSpec) -> dict[str, str]:
    """What an archive holds of the media: the media store, or only the name of the bucket that
    holds it (its objects are not in the archive)."""
    media = spec.media
    if not media.in_bucket:
        return {"store": "local", "note": "media: the media store, in the archive"}
    where = f"{media.s3_bucket}" + (f" at {media.s3_endpoint}" if media.s3_endpoint else " (Amazon S3)")
    note = (
        f"media: in the bucket {where}, whose objects are NOT in this archive: back the bucket up with "
        "the store's own means (versioning, replication to another bucket)"
    )
    return {"store": "s3", "bucket": media.s3_bucket, "endpoint": media.s3_endpoint, "note": note}


def _missing_part(files: dict[str, object]) -> str | None:
    """What a fleet needs that the archive's manifest does not list (its database is checked on
    reading the manifest)."""
    if FLEET_FILE not in files:
        return f"{FLEET_FILE} (the fleet file)"
    if not any(name.startswith(f"{SECRETS_DIR}/") for name in files):
        return f"{SECRETS_DIR}/ (the signing key and the other secrets)"
    if f"{SECRETS_DIR}/{Secret.SIGNING_KEY}" not in files:
        return f"{SECRETS_DIR}/{Secret.SIGNING_KEY} (the server's signing key)"
    return None


def _read_manifest(path: Path) -> dict[str, object]:
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise UsageError(f"{path}: not a synfleet backup (no {MANIFEST} first)")
            extracted = tar.extractfile(first)
            assert extracted is not None
            manifest = json.loads(extracted.read())
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path}: not a synfleet backup (not a tar archive with a manifest)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{path}: not a synfleet backup (its manifest names another format)")
    if manifest.get("version") != VERSION:
        raise UsageError(f"{path}: backup format version {manifest.get('version')}; this synfleet reads {VERSION}")
    if not isinstance(manifest.get("files"), dict) or DATABASE_DUMP not in manifest["files"]:
        raise UsageError(f"{path}: not a synfleet backup (its manifest lists no database)")
    return manifest


def _holds_fleet(directory: Path, paths: RunPaths) -> list[str]:
    found = [name for name in (FLEET_FILE, SECRETS_DIR) if (directory / name).exists()]
    if paths.postgres_data.exists():
        found.append("a database")
    if (paths.data / MEDIA_STORE).exists():
        found.append("media")
    return found


def _refuse_running(directory: Path) -> None:
    paths = RunPaths(directory)
    if Supervisor(paths).running():
        raise UsageError(f"the fleet in {directory} is running: `synfleet down --dir {directory}` first")
    if running_processes(paths):
        raise UsageError(
            f"processes of the fleet in {directory} run without their supervisor: "
            f"`synfleet down --dir {directory}` stops them"
        )


def restore(archive_path: Path, directory: Path, force: bool, report: Report) -> dict[str, object]:
    """Rebuild a stopped fleet in ``directory`` from an archive, checked whole first; the fleet
    that was there (with ``force``) is kept beside it as ``directory.replaced-<time>``."""
    manifest = verify(archive_path, report)
    files = manifest["files"]
    assert isinstance(files, dict)
    if missing := _missing_part(files):
        raise UsageError(f"{archive_path}: incomplete: it holds no {missing}; nothing was changed")
    spec = parse_fleet(_read_member(archive_path, FLEET_FILE).decode(errors="replace"), f"{archive_path}: {FLEET_FILE}")
    if not spec.database.local:
        raise UsageError(
            f"database.host is {spec.database.host!r}: restore loads the database into the fleet's own "
            f"PostgreSQL; load {DATABASE_DUMP} from the archive into yours with pg_restore"
        )
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir: {directory} is not a directory")
    if directory.is_dir():
        _refuse_running(directory)
        if os.path.ismount(directory):
            raise UsageError(
                f"{directory} is a mount point: restore renames the new fleet into place, which a mount point "
                "cannot take; restore into a directory inside it"
            )
    finish_interrupted(directory, report)
    if directory.is_dir() and (held := _holds_fleet(directory, RunPaths(directory))) and not force:
        raise UsageError(
            f"{directory} already holds a fleet ({', '.join(held)}): restore into a new directory, "
            "or pass --force to replace it"
        )
    report(f"restoring {spec.server_name} (backup of {manifest['created']})")
    media = manifest.get("media")
    if isinstance(media, dict) and media.get("store") == "s3":
        report(str(media.get("note")))
    try:
        with staging(directory) as swap:
            _extract(archive_path, swap.staged)
            report(f"staged in {swap.staged}")
            if directory.is_dir():
                _refuse_running(directory)
            kept = swap_in(swap, report)
    except OSError as error:  # before the swap (after it, SynfleetError says what is left to do)
        at = f" at {error.filename}" if error.filename else ""
        raise SynfleetError(f"restore into {directory} failed{at}: {error.strerror}; nothing was changed") from None
    if kept is not None:
        run = kept / RUN_DIR
        where = f" (its run directory, with its database: {os.readlink(run)})" if run.is_symlink() else ""
        report(f"the fleet that was in {directory} is kept in {kept}{where}: remove it once the restored fleet serves")
    report(f"restored into {directory}; `synfleet up --dir {directory}` loads the database and starts the fleet")
    return manifest


#: Whether a database holds Synapse's schema: Synapse makes this table first, and a dump holds it.
SYNAPSE_SCHEMA = "SELECT to_regclass('public.schema_version') IS NOT NULL"


def holds_synapse(paths: RunPaths, database: Database) -> bool | None:
    """Whether the fleet's running cluster has Synapse's database, holding Synapse's schema; None
    if the cluster does not say (it refuses Synapse's login for another reason than a missing
    database or role)."""
    import psycopg2

    password = (paths.directory / SECRETS_DIR / Secret.POSTGRES_PASSWORD).read_text().strip()
    try:
        connection = psycopg2.connect(
            host=str(paths.sockets), port=database.port, dbname=database.name, user=database.user, password=password
        )
    except psycopg2.OperationalError as error:
        return False if "does not exist" in str(error) else None
    try:
        with connection.cursor() as cursor:
            cursor.execute(SYNAPSE_SCHEMA)
            row = cursor.fetchone()
    finally:
        connection.close()
    return bool(row and row[0])


def load_pending_dump(paths: RunPaths, spec: FleetSpec, report: Report) -> None:
    """After ``restore``: load its dump into the fleet's new, empty database (``up`` calls this
    before Synapse starts) in one transaction, then remove it. A database that holds Synapse's
    schema already got it from an earlier ``up`` that stopped before removing it."""
    dump = pending_dump(paths)
    if not dump.exists():
        return
    if holds_synapse(paths, spec.database):
        report("the restored database was loaded by an earlier `up`; removing its dump")
    else:
        report(f"loading the restored database ({_size(dump.stat().st_size)})")
        flags = ("--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error", str(dump))
        client("pg_restore", paths, spec.database, *flags, failure=f"pg_restore of {dump} failed")
        crash_point("loaded")
    shutil.rmtree(dump.parent)
