"""Putting a staged fleet in place of a deployment directory, so that the directory always holds
one fleet whole.

`restore` writes the new fleet into ``D.restore-<time>`` beside ``D`` (so on the same filesystem),
flushes it to disk, then exchanges the two directories in one rename (``renameat2`` with
``RENAME_EXCHANGE``): at every instant ``D`` holds the old fleet whole or the new one whole. The old
fleet is then renamed ``D.replaced-<time>`` and kept. What ``D`` held besides the fleet (backups,
TLS files, notes) moves on into the new ``D``; the fleet's own entries (:data:`FLEET_ENTRIES`: its
file, secrets, run directories and compose rendering) stay with the old fleet.

A run directory that lives in /var/lib/synfleet/runs (see
:func:`~synfleet.run.paths.place_run_directory`) is made there for the staged directory, under its
name: the new ``D/run`` never links to the old fleet's run directory and PostgreSQL cluster, and
those stay where the old fleet's own ``run`` link points.

The staged directory holds a journal, :data:`JOURNAL`, naming its time and locked while its restore
runs. It moves into ``D`` with the new fleet and is removed last, so the next restore finishes a
restore that was killed after the exchange, and removes a staged copy that never got swapped in
(:func:`finish_interrupted`).

On a filesystem without ``RENAME_EXCHANGE``, ``D`` is renamed aside first, then the staged directory
into its place: killed between the two renames, ``D`` is missing until the next restore puts the
staged fleet there.

The steps, as ``SYNFLEET_FAULT`` names them (:mod:`synfleet.run.faults`): ``staging`` (part of the
archive written), ``staged`` (all of it, on disk), ``exchanged``, ``moved-aside`` (without
``RENAME_EXCHANGE``), ``set-aside`` (the old fleet renamed) and ``carried-over`` (D's other files
moved).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.load import FLEET_FILE
from synfleet.render.deploy import DEPLOY_DIR
from synfleet.render.files import sync
from synfleet.run.faults import crash_point
from synfleet.run.paths import RELOCATED_RUNS, RUN_DIR, RunPaths, place_run_directory

Report = Callable[[str], None]

#: The journal of a restore, in its staged directory, then in ``D`` until the restore is done.
JOURNAL = ".synfleet-restore"
#: What belongs to a fleet (besides its run directories): it stays with the old fleet when a
#: restore replaces it; everything else in ``D`` moves into the new one.
FLEET_ENTRIES = frozenset({FLEET_FILE, SECRETS_DIR, DEPLOY_DIR, JOURNAL})
_STAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z(\.[0-9]+)?")
#: What renameat2 answers when the filesystem (or the kernel) cannot exchange.
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class Swap:
    """The names that the restore into ``directory`` (absolute) started at ``stamp`` uses."""

    directory: Path
    stamp: str

    @property
    def staged(self) -> Path:
        return self.directory.with_name(f"{self.directory.name}.restore-{self.stamp}")

    @property
    def replaced(self) -> Path:
        return self.directory.with_name(f"{self.directory.name}.replaced-{self.stamp}")


def belongs_to_fleet(name: str) -> bool:
    return name in FLEET_ENTRIES or name == RUN_DIR or name.startswith(f"{RUN_DIR}-")


@contextmanager
def staging(directory: Path) -> Iterator[Swap]:
    """A new directory beside ``directory`` for the fleet that is to replace it, with its mode, and
    its run directory placed (in it, or in /var/lib/synfleet/runs). Removed, with that run
    directory, unless :func:`swap_in` put it in place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    swap, journal = _create(directory)
    try:
        sync(directory.parent)
        place_run_directory(swap.staged)
        RunPaths(swap.staged).run.mkdir(exist_ok=True)
        yield swap
    finally:
        try:
            if _holds_journal(swap.staged, journal):  # not swapped in
                _discard(swap.staged)
        finally:
            os.close(journal)


def _create(directory: Path) -> tuple[Swap, int]:
    """The staged directory, made with its journal (open and locked): the mode of ``directory``, or
    of a new directory."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in range(100):
        swap = Swap(directory, stamp if attempt == 0 else f"{stamp}.{attempt}")
        if os.path.lexists(swap.replaced):
            continue
        try:
            os.mkdir(swap.staged, 0o700)
        except FileExistsError:
            continue
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            journal = os.open(swap.staged / JOURNAL, flags, 0o600)
        except OSError:
            os.rmdir(swap.staged)
            raise
        try:
            fcntl.flock(journal, fcntl.LOCK_EX)
            os.write(journal, f"{swap.stamp}\n".encode())
            if directory.is_dir():
                mode = stat.S_IMODE(os.stat(directory).st_mode)
            else:
                umask = os.umask(0o077)
                os.umask(umask)
                mode = 0o777 & ~umask
            os.chmod(swap.staged, mode)
        except BaseException:
            os.close(journal)
            shutil.rmtree(swap.staged, ignore_errors=True)
            raise
        return swap, journal
    raise UsageError(f"{directory}: too many restores started this second; try again")


def swap_in(swap: Swap, report: Report) -> Path | None:
    """Flush the staged fleet to disk and put it in place of ``swap.directory``, keeping the old one
    beside it; that directory, when it holds anything."""
    directory = swap.directory
    staged_run = RunPaths(swap.staged).run
    if directory.is_dir():  # the new directory's owner is the old one's
        found = os.stat(directory)
        if (found.st_uid, found.st_gid) != (os.geteuid(), os.getegid()) and os.geteuid() == 0:
            os.chown(swap.staged, found.st_uid, found.st_gid)
    sync_tree(swap.staged)
    if staged_run != swap.staged / RUN_DIR:
        sync_tree(staged_run)
    crash_point("staged")
    if not directory.exists():
        os.rename(swap.staged, directory)
        sync(directory.parent)
        return _finish(swap)
    try:
        _exchange(swap.staged, directory)
    except OSError as error:
        if error.errno not in _NO_EXCHANGE:
            raise
        report(f"{directory.parent} cannot swap directories in one step: renaming {directory} aside first")
        os.rename(directory, swap.replaced)
        crash_point("moved-aside")
        try:
            os.rename(swap.staged, directory)
        except OSError:
            os.rename(swap.replaced, directory)
            raise
    else:
        crash_point("exchanged")
        os.rename(swap.staged, swap.replaced)
    sync(directory.parent)
    crash_point("set-aside")
    return _finish(swap)


def _finish(swap: Swap) -> Path | None:
    """After the swap: the old fleet renamed ``replaced`` (if the exchange was all that happened),
    the other entries of the old directory moved into the new one, then the journal removed; the
    replaced directory, unless nothing was left in it."""
    directory, replaced = swap.directory, swap.replaced
    try:
        if swap.staged.is_dir() and not os.path.lexists(swap.staged / JOURNAL):
            os.rename(swap.staged, replaced)
            sync(directory.parent)
        kept: Path | None = None
        if replaced.is_dir():
            for name in sorted(os.listdir(replaced)):
                if not belongs_to_fleet(name) and not os.path.lexists(directory / name):
                    os.rename(replaced / name, directory / name)
            sync(replaced)
            sync(directory)
            crash_point("carried-over")
            if os.listdir(replaced):
                kept = replaced
            else:
                replaced.rmdir()
        (directory / JOURNAL).unlink(missing_ok=True)
        sync(directory)
        sync(directory.parent)
    except OSError as error:
        raise SynfleetError(
            f"{directory} holds the restored fleet, but moving {error.filename} failed: {error.strerror}; "
            f"`synfleet restore` into {directory} again finishes it"
        ) from None
    return kept


def finish_interrupted(directory: Path, report: Report) -> None:
    """Finish the restores into ``directory`` that were killed: a swap done but not its last steps
    (the journal is in ``directory``), or not done (a staged directory with its journal beside it:
    removed, or put in place if ``directory`` was renamed aside already)."""
    journal = directory / JOURNAL
    if os.path.isfile(journal):
        with _taken(journal, directory) as stamp:
            kept = _finish(Swap(directory, stamp))
        report(f"finished the restore into {directory} that was interrupted" + (f"; kept {kept}" if kept else ""))
    for staged in sorted(directory.parent.glob(f"{glob.escape(directory.name)}.restore-*")):
        found = os.lstat(staged)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
            continue
        if not os.path.isfile(staged / JOURNAL):
            report(f"{staged} looks left by a restore that was interrupted, but holds no journal: remove it by hand")
            continue
        with _taken(staged / JOURNAL, directory) as stamp:
            swap = Swap(directory, stamp)
            if swap.staged != staged:
                continue
            if not directory.exists() and swap.replaced.is_dir():  # killed between the two renames
                os.rename(staged, directory)
                sync(directory.parent)
                kept = _finish(swap)
                report(f"finished the restore into {directory} that was interrupted; kept {kept}")
            else:
                _discard(staged)
                report(f"removed {staged}, staged by a restore that did not finish")


@contextmanager
def _taken(journal: Path, directory: Path) -> Iterator[str]:
    """The time a journal names, while it is locked; refused if its restore is still running."""
    descriptor = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another restore into {directory} is under way: wait until it ends") from None
        stamp = os.read(descriptor, 100).decode("ascii", "replace").strip()
        if not _STAMP.fullmatch(stamp):
            raise UsageError(f"{journal}: not a synfleet restore journal; remove it")
        yield stamp
    finally:
        os.close(descriptor)


def _holds_journal(staged: Path, journal: int) -> bool:
    try:
        found = os.lstat(staged / JOURNAL)
    except FileNotFoundError:
        return False
    mine = os.fstat(journal)
    return (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)


def _discard(staged: Path) -> None:
    """Remove a staged directory, and the run directory made for it in /var/lib/synfleet/runs."""
    link = staged / RUN_DIR
    if link.is_symlink():
        target = Path(os.readlink(link))
        if target.parent == RELOCATED_RUNS and target.name.startswith(f"{staged.name}-"):
            shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


def _exchange(first: Path, second: Path) -> None:
    """Swap two directories in one step (Linux's renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        renameat2 = libc.renameat2
    except AttributeError:
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first), None, str(second))


def sync_tree(top: Path) -> None:
    """Flush every file and directory under ``top`` (links not followed) to disk, and ``top``'s
    entry in its parent."""
    for root, _, files in os.walk(top):
        for name in files:
            path = Path(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                sync(path)
        sync(Path(root))
    sync(top.parent)
