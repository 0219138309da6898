"""`synfleet restore --force` never half-happens: killed at any step, or failing (a full disk, an
archive without a part, a run directory on another filesystem), it leaves the deployment directory
holding the old fleet whole or the new one whole, and the old one is kept beside it.

These tests check the files; tests/test_backup.py starts real fleets after the worst steps. The
archives here are written by :func:`write_archive` (the backup format, with made-up contents):
restore checks an archive's parts, not what its dump holds."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import helpers
from conftest import synfleet
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.run import swap
from synfleet.run.backup import pending_dump, restore
from synfleet.run.paths import RELOCATED_RUNS, RunPaths, place_run_directory

NEW_TOML = fleet_toml(helpers.profile_with("small"))
OLD_TOML = "# the old fleet\n" + NEW_TOML
OLD_KEY, NEW_KEY = b"ed25519 a_old b2xkIGtleQ\n", b"ed25519 a_new bmV3IGtleQ\n"
NEW_DUMP = b"PGDMP" + secrets.token_bytes(2000)
NEW_MEDIA = ("local_content/ab/cd/efgh", secrets.token_bytes(3000))
NEW = {
    "fleet.toml": NEW_TOML.encode(),
    "secrets/signing.key": NEW_KEY,
    "secrets/postgres_password": b"new password\n",
    "database.dump": NEW_DUMP,
    f"media/{NEW_MEDIA[0]}": NEW_MEDIA[1],
}
#: Each step a restore passes, and the fleet the deployment directory holds if it is killed there.
STEPS = [
    ("staging", "old"),  # half the archive written beside D
    ("staged", "old"),  # all of it, synced, before the swap
    ("exchanged", "new"),  # D swapped with the staged directory in one rename
    ("set-aside", "new"),  # the old fleet renamed D.replaced-<time>
    ("carried-over", "new"),  # D's other files (backups, notes) moved into the new D
]
FAULT = "SYNFLEET_FAULT"


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A synfleet backup holding ``members``: manifest first, then the tar, then the digest line."""
    files = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in members.items()}
    manifest = {"format": "synfleet-backup", "version": 1, "created": "2025-01-01T00:00:00+00:00"}
    manifest |= {"server_name": "localhost", "database": "synapse", "files": files}
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    raw = body.getvalue()
    path.write_bytes(raw + b"\nsynfleet-backup sha256 " + hashlib.sha256(raw).hexdigest().encode() + b"\n")
    return path


@dataclass(frozen=True)
class OldRun:
    """The old fleet's run directory: where it was, and what it is wherever it was renamed to."""

    path: Path
    device: int
    inode: int

    def is_(self, path: Path) -> bool:
        try:
            found = path.stat()
        except FileNotFoundError:
            return False
        return (found.st_dev, found.st_ino) == (self.device, self.inode)


def make_old_fleet(directory: Path) -> OldRun:
    """A stopped fleet that has run (a cluster, media), with a backup and a rendering beside it in
    ``directory``; its run directory."""
    directory.mkdir()
    (directory / "fleet.toml").write_text(OLD_TOML)
    (directory / "secrets").mkdir(mode=0o700)
    (directory / "secrets" / "signing.key").write_bytes(OLD_KEY)
    place_run_directory(directory)  # run as root out of other accounts' reach: /var/lib/synfleet/runs
    paths = RunPaths(directory)
    (paths.postgres_data).mkdir(parents=True)
    (paths.postgres_data / "PG_VERSION").write_text("15\n")
    (paths.data / "media_store").mkdir(parents=True)
    (paths.data / "media_store" / "old.bin").write_bytes(b"old media")
    (directory / "backups").mkdir()
    (directory / "backups" / "kept.backup").write_bytes(b"an earlier backup")
    (directory / "deploy").mkdir()
    (directory / "deploy" / "docker-compose.yml").write_text("the old fleet's rendering\n")
    found = paths.run.stat()
    return OldRun(paths.run, found.st_dev, found.st_ino)


def fleet_in(directory: Path, old_run: OldRun) -> str:
    """``old`` or ``new`` when ``directory`` holds that fleet whole; else what is wrong."""
    if not directory.is_dir():
        return f"{directory.name}: no directory"
    paths = RunPaths(directory)

    def read(path: Path) -> bytes:
        return path.read_bytes() if path.is_file() else b""

    toml, key = read(directory / "fleet.toml").decode(), read(directory / "secrets" / "signing.key")
    media = paths.data / "media_store"
    old = (toml, key) == (OLD_TOML, OLD_KEY) and old_run.is_(paths.run) and read(media / "old.bin") == b"old media"
    if old and (paths.postgres_data / "PG_VERSION").is_file():
        return "old"
    new = (toml, key) == (NEW_TOML, NEW_KEY) and not old_run.is_(paths.run) and not paths.postgres_data.exists()
    if new and read(pending_dump(paths)) == NEW_DUMP and read(media / NEW_MEDIA[0]) == NEW_MEDIA[1]:
        return "new"
    found = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
    return f"{directory.name}: neither fleet whole: run {paths.run}, {found}"


def beside(directory: Path) -> list[Path]:
    return sorted(p for p in directory.parent.iterdir() if p != directory)


def digest(*tops: Path) -> str:
    """Every name, link and file's bytes under ``tops``."""
    h = hashlib.sha256()
    for top in tops:
        for path in sorted(top.rglob("*")) if top.exists() else []:
            h.update(str(path).encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


def relocated_runs(directory: Path) -> list[Path]:
    return sorted(RELOCATED_RUNS.glob(f"{directory.name}*")) if RELOCATED_RUNS.is_dir() else []


@pytest.fixture(params=["here", "relocated"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A deployment directory still to be made: its run directory in it, or (run as root, out of
    other accounts' reach) in /var/lib/synfleet/runs."""
    name = f"fleet{secrets.token_hex(3)}"
    if request.param == "relocated":
        if os.geteuid() != 0:
            pytest.skip("run directories move to /var/lib/synfleet/runs only when synfleet runs as root")
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        try:
            yield private / name
        finally:
            for run in relocated_runs(private / name):
                shutil.rmtree(run)
    else:
        with world_readable_tempdir("synfleet-restore-") as parent:
            yield parent / name


@pytest.fixture
def new_archive(tmp_path: Path) -> Path:
    return write_archive(tmp_path / "new.backup", NEW)


def killed_at(step: str) -> dict[str, str]:
    return {**os.environ, FAULT: step, "PYTHONUNBUFFERED": "1"}


def assert_restored(directory: Path, old_run: OldRun) -> None:
    """The new fleet in ``directory``, the old one whole in ``directory``.replaced-<time>, the
    directory's other files moved along, nothing staged left over."""
    assert fleet_in(directory, old_run) == "new"
    names = [p.name for p in beside(directory)]
    assert all(name.startswith(f"{directory.name}.replaced-") for name in names), names
    assert "old" in [fleet_in(p, old_run) for p in beside(directory)]
    assert (directory / "backups" / "kept.backup").read_bytes() == b"an earlier backup"
    assert not (directory / "deploy").exists()  # the old fleet's rendering stays with it
    linked = {RunPaths(p).run for p in [directory, *beside(directory)]}
    assert set(relocated_runs(directory)) <= linked, "a staged run directory was left in /var/lib/synfleet/runs"


@pytest.mark.parametrize("step, expected", STEPS, ids=[step for step, _ in STEPS])
def test_a_restore_killed_at_any_step_leaves_one_fleet_whole(
    target: Path, new_archive: Path, step: str, expected: str
) -> None:
    old_run = make_old_fleet(target)
    killed = synfleet("restore", str(new_archive), "--force", directory=target, env=killed_at(step))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert fleet_in(target, old_run) == expected
    if expected == "new":  # the old fleet whole beside it, its database where it was
        assert "old" in [fleet_in(p, old_run) for p in beside(target)]
    # Restoring again first finishes (or removes) what the killed restore left.
    again = synfleet("restore", str(new_archive), "--force", directory=target)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_restored(target, old_run)


def test_restore_force_keeps_the_old_fleet_and_says_where(target: Path, new_archive: Path) -> None:
    old_run = make_old_fleet(target)
    done = synfleet("restore", str(new_archive), "--force", directory=target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_restored(target, old_run)
    (replaced,) = beside(target)
    printed = re.sub(r"\n *", "", done.stdout)  # as one line, however the console wrapped it
    assert str(replaced) in printed
    if old_run.path.parent == RELOCATED_RUNS:  # the old cluster stays where the old fleet's run links
        assert RunPaths(replaced).run == old_run.path and str(old_run.path) in printed


def test_a_restore_into_a_new_or_an_empty_directory_leaves_nothing_beside_it(target: Path, new_archive: Path) -> None:
    done = synfleet("restore", str(new_archive), directory=target)
    assert done.returncode == 0, done.stdout + done.stderr
    nothing = OldRun(Path("/nonexistent"), -1, -1)
    assert fleet_in(target, nothing) == "new" and beside(target) == []
    empty = target.parent / f"{target.name}-empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("kept")
    done = synfleet("restore", str(new_archive), directory=empty)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fleet_in(empty, nothing) == "new" and (empty / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, empty.name])


@pytest.mark.parametrize("missing", ["secrets/", "fleet.toml", "database.dump"])
def test_an_archive_without_a_part_is_refused_and_changes_nothing(target: Path, tmp_path: Path, missing: str) -> None:
    incomplete = write_archive(
        tmp_path / "incomplete.backup", {k: v for k, v in NEW.items() if not k.startswith(missing)}
    )
    old_run = make_old_fleet(target)
    before = digest(target.parent, old_run.path)
    result = synfleet("restore", str(incomplete), "--force", directory=target)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("synfleet: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert missing.removesuffix(".dump").rstrip("/") in result.stderr
    assert digest(target.parent, old_run.path) == before and fleet_in(target, old_run) == "old"


@contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounts a small filesystem: needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_while_staging_is_refused_and_changes_nothing(new_archive: Path) -> None:
    big = write_archive(new_archive.parent / "big.backup", {**NEW, "media/big": secrets.token_bytes(600_000)})
    with (
        world_readable_tempdir("synfleet-restore-") as top,
        mounted_tmpfs(top / "small", "size=256k,mode=0755") as disk,
    ):
        directory = disk / "fleet"
        old_run = make_old_fleet(directory)
        before = digest(disk)
        result = synfleet("restore", str(big), "--force", directory=directory)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and "No space left on device" in result.stderr, result.stderr
        assert digest(disk) == before and fleet_in(directory, old_run) == "old"


def test_a_run_directory_on_another_filesystem_than_the_fleet(new_archive: Path) -> None:
    """D on one filesystem, its run directory relocated to /var/lib/synfleet/runs on another."""
    with world_readable_tempdir("synfleet-restore-") as top, mounted_tmpfs(top / "other", "size=16m,mode=0700") as disk:
        directory = disk / f"fleet{secrets.token_hex(3)}"
        try:
            old_run = make_old_fleet(directory)
            assert old_run.path.parent == RELOCATED_RUNS and old_run.device != os.stat(directory).st_dev
            done = synfleet("restore", str(new_archive), "--force", directory=directory)
            assert done.returncode == 0, done.stdout + done.stderr
            assert_restored(directory, old_run)
        finally:
            for run in relocated_runs(directory):
                shutil.rmtree(run)


def unsupported(first: Path, second: Path) -> None:
    raise OSError(errno.EINVAL, "no RENAME_EXCHANGE on this filesystem")


def test_without_rename_exchange_restore_renames_twice(
    target: Path, new_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_run = make_old_fleet(target)
    monkeypatch.setattr(swap, "_exchange", unsupported)
    restore(new_archive, target, True, lambda _: None)
    assert_restored(target, old_run)


def test_without_rename_exchange_a_restore_killed_between_the_renames_is_finished_by_the_next(
    target: Path, new_archive: Path
) -> None:
    old_run = make_old_fleet(target)
    program = (
        "import errno, sys\n"
        "from synfleet.run import swap\n"
        "def unsupported(first, second):\n"
        "    raise OSError(errno.EINVAL, 'no RENAME_EXCHANGE on this filesystem')\n"
        "swap._exchange = unsupported\n"
        "from synfleet.cli import main\n"
        "sys.argv[0] = 'synfleet'\n"
        "main()\n"
    )
    command = [sys.executable, "-c", program, "restore", str(new_archive), "--dir", str(target), "--force"]
    killed = subprocess.run(command, env=killed_at("moved-aside"), capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    # The one instant D is missing: the old fleet whole as D.replaced-<time>, the new one staged.
    assert sorted(fleet_in(p, old_run) for p in beside(target)) == ["new", "old"] and not target.exists()
    again = synfleet("restore", str(new_archive), "--force", directory=target)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_restored(target, old_run)
