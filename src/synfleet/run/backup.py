"""`synfleet backup` and `synfleet restore`: a running native fleet in one archive, and back.

The archive is a tar file: ``manifest.json`` (format, server name, and the size and SHA-256 of
every other member), ``fleet.toml``, ``secrets/`` (the signing key among them), ``database.dump``
(``pg_dump``, custom format) and ``media/`` (the media store). After the tar's end comes one line,
``synfleet-backup sha256 <hex>``, the digest of every byte before it: a single flipped byte
anywhere is found before anything is written.

The database is dumped first, then the media store is read: every media file the dump names was
written before the dump began (Synapse stores the file, then its row), so it is in the archive.

``restore`` writes the fleet file, the secrets and the media into a new directory and leaves the
dump where ``up`` finds it: ``up`` loads it into the fleet's fresh database before Synapse starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from synfleet.errors import UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.schema import FleetSpec, parse_fleet
from synfleet.run.paths import RunPaths, place_run_directory
from synfleet.run.postgres import client
from synfleet.run.supervisor import Supervisor

Report = Callable[[str], None]

FORMAT = "synfleet-backup"
VERSION = 1
MANIFEST = "manifest.json"
DATABASE_DUMP = "database.dump"
MEDIA = "media"
MEDIA_STORE = "media_store"
TRAILER_PREFIX = b"\nsynfleet-backup sha256 "
TRAILER_LENGTH = len(TRAILER_PREFIX) + 64 + 1
CHUNK = 1 << 20


def pending_dump(paths: RunPaths) -> Path:
    """Where ``restore`` leaves the database for ``up`` to load."""
    return paths.run / "restore" / DATABASE_DUMP


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def _media_files(paths: RunPaths) -> Iterator[tuple[Path, str]]:
    store = paths.data / MEDIA_STORE
    if store.is_dir():
        for path in sorted(store.rglob("*")):
            if path.is_file() and not path.is_symlink():
                yield path, f"{MEDIA}/{path.relative_to(store)}"


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
    members: list[tuple[Path, str]] = [(directory / FLEET_FILE, FLEET_FILE)]
    members += [(path, f"{SECRETS_DIR}/{path.name}") for path in sorted((directory / SECRETS_DIR).iterdir())]
    with tempfile.TemporaryDirectory(prefix=".synfleet-backup-", dir=out.parent) as scratch:
        dump = Path(scratch) / DATABASE_DUMP
        report("database: pg_dump")
        client("pg_dump", paths, spec.database, "--format=custom", f"--file={dump}", failure="pg_dump failed")
        report(f"database: {_size(dump.stat().st_size)} in {time.monotonic() - began:.1f}s")
        members.append((dump, DATABASE_DUMP))
        media = list(_media_files(paths))
        media_bytes = sum(path.stat().st_size for path, _ in media)
        report(f"media: {len(media)} files, {_size(media_bytes)}")
        members += media
        files = {name: {"size": path.stat().st_size, "sha256": _sha256(path)} for path, name in members}
        manifest: dict[str, object] = {
            "format": FORMAT,
            "version": VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "server_name": spec.server_name,
            "database": spec.database.name,
            "files": files,
        }
        partial = Path(scratch) / "archive"
        total = sum(path.stat().st_size for path, _ in members)
        written, shown = 0, 0
        with partial.open("wb") as raw:
            os.chmod(partial, 0o600)
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                data = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
                for path, name in members:
                    info = tar.gettarinfo(str(path), arcname=name)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with path.open("rb") as stream:
                        tar.addfile(info, stream)
                    written += info.size
                    if total and written * 10 // total > shown:
                        shown = written * 10 // total
                        report(f"archive: {shown * 10}% ({_size(written)} of {_size(total)})")
            raw.write(TRAILER_PREFIX + writer.digest.hexdigest().encode() + b"\n")
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


def _extract(path: Path, into: Path) -> None:
    """Every member of a verified archive (regular files with safe names only) into ``into``."""
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.name == MANIFEST:
                continue
            target = into / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            extracted = tar.extractfile(member)
            assert extracted is not None
            with target.open("wb") as stream:
                os.fchmod(stream.fileno(), 0o600)
                shutil.copyfileobj(extracted, stream, CHUNK)


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


def restore(archive_path: Path, directory: Path, force: bool, report: Report) -> dict[str, object]:
    """Rebuild a stopped fleet in ``directory`` from an archive, verified first."""
    manifest = verify(archive_path, report)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir: {directory} is not a directory")
    paths = RunPaths(directory)
    if directory.exists():
        if Supervisor(paths).running():
            raise UsageError(f"the fleet in {directory} is running: `synfleet down --dir {directory}` first")
        if (held := _holds_fleet(directory, paths)) and not force:
            raise UsageError(
                f"{directory} already holds a fleet ({', '.join(held)}): restore into a new directory, "
                "or pass --force to replace it"
            )
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synfleet-restore-", dir=directory) as scratch:
        staged = Path(scratch)
        _extract(archive_path, staged)
        fleet_text = (staged / FLEET_FILE).read_text()
        spec = parse_fleet(fleet_text, f"{archive_path}: {FLEET_FILE}")
        if not spec.database.local:
            raise UsageError(
                f"database.host is {spec.database.host!r}: restore loads the database into the fleet's own "
                f"PostgreSQL; load {DATABASE_DUMP} from the archive into yours with pg_restore"
            )
        report(f"restoring {spec.server_name} (backup of {manifest['created']})")
        # Replace what was there (with --force) only now that everything is staged.
        for old in (directory / FLEET_FILE, directory / SECRETS_DIR):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        for old in (paths.postgres_data, paths.data, pending_dump(paths).parent):
            if old.exists():
                shutil.rmtree(old)
        (directory / FLEET_FILE).write_text(fleet_text)
        (staged / SECRETS_DIR).rename(directory / SECRETS_DIR)
        os.chmod(directory / SECRETS_DIR, 0o700)
        place_run_directory(directory)
        paths.run.mkdir(parents=True, exist_ok=True)
        paths.data.mkdir(parents=True, exist_ok=True)
        if (staged / MEDIA).exists():
            (staged / MEDIA).rename(paths.data / MEDIA_STORE)
        pending_dump(paths).parent.mkdir(mode=0o700)
        (staged / DATABASE_DUMP).rename(pending_dump(paths))
    report(f"restored into {directory}; `synfleet up --dir {directory}` loads the database and starts the fleet")
    return manifest


def load_pending_dump(paths: RunPaths, spec: FleetSpec, report: Report) -> None:
    """After ``restore``: load its dump into the fleet's new, empty database (``up`` calls this
    before Synapse starts), then remove it."""
    dump = pending_dump(paths)
    if not dump.exists():
        return
    report(f"loading the restored database ({_size(dump.stat().st_size)})")
    flags = ("--no-owner", "--no-privileges", "--exit-on-error", str(dump))
    client("pg_restore", paths, spec.database, *flags, failure=f"pg_restore of {dump} failed")
    shutil.rmtree(dump.parent)
