"""Who owns each directory of the run directory, and how root sets that without being steered.

Run as root, synfleet writes only where no other account can write: the run directory itself,
nginx's prefix, Synapse's config and the secrets (root, readable by the fleet's group), and the log
directory where supervisord and nginx's master write. The fleet's account owns its data, its
sockets, PostgreSQL's cluster and a log directory of its own, and root never opens, follows or
walks anything in them: it makes each such directory in a directory only root can write, then sets
its owner and mode through a descriptor opened without following links.

A run directory made by an earlier version, where the fleet's account owned Synapse's config and
the secrets, is taken back: those trees are removed without following links (they are rendered
again at once), and what the account left in the shared log directory moves to its own.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from synfleet.errors import SynfleetError
from synfleet.run.accounts import Accounts
from synfleet.run.paths import RunPaths

#: Open a directory itself, never what a link in its place points to.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Owner(Enum):
    ROOT = "root"  # root writes; the group reads
    FLEET = "fleet"  # the fleet's account writes


@dataclass(frozen=True)
class Place:
    """A directory of the run directory: who owns it, its group and mode when run as root (run by
    a normal user, that user owns everything, and only public places keep bits beyond the owner's).
    A ``rendered`` place holds only what `up` writes again at once."""

    path: Path
    owner: Owner
    group: str  # "root", "fleet" or "nginx": whose group reads it
    mode: int
    public: bool = False
    rendered: bool = False


def places(paths: RunPaths) -> list[Place]:
    """Every directory `up` makes in the run directory, parents first (PostgreSQL's cluster is
    made by initdb, as the fleet's account)."""
    relays = [  # nginx's relays to other hosts: those the fleet's processes call, those only nginx's workers do
        Place(Path(paths.layout.relay_dir), Owner.ROOT, "fleet", 0o750, rendered=True),
        Place(Path(paths.layout.inbound_relay_dir), Owner.ROOT, "nginx", 0o750, rendered=True),
    ]
    return [
        Place(paths.run, Owner.ROOT, "root", 0o755, public=True),
        Place(paths.nginx_dir, Owner.ROOT, "root", 0o755, public=True, rendered=True),
        Place(paths.nginx_dir / "tmp", Owner.ROOT, "root", 0o755, public=True, rendered=True),
        *(relays if paths.host else []),
        Place(paths.config, Owner.ROOT, "fleet", 0o750, rendered=True),
        Place(paths.secrets, Owner.ROOT, "fleet", 0o750, rendered=True),
        Place(paths.logs, Owner.ROOT, "fleet", 0o750),
        Place(paths.own_logs, Owner.FLEET, "fleet", 0o750),
        Place(paths.data, Owner.FLEET, "fleet", 0o700),
        Place(paths.sockets, Owner.FLEET, "nginx", 0o2750),
    ]


@contextmanager
def opened(path: Path) -> Iterator[int]:
    """A descriptor of the directory ``path`` itself; an error if a link or a file is there."""
    try:
        descriptor = os.open(path, _DIRECTORY)
    except OSError as exc:
        raise SynfleetError(f"{path} must be a directory, not a link or a file: remove it ({exc.strerror})") from None
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def settle(paths: RunPaths, accounts: Accounts | None) -> None:
    """Make every directory of :func:`places` with its owner and mode (``accounts``: run as root)."""
    for place in places(paths):
        _settle(place, accounts)
    if accounts is not None:
        fleet = accounts.fleet
        _take_back(paths.run)
        _take_back(paths.logs, paths.own_logs, fleet.uid, fleet.gid)
        give_tree(paths.postgres_data, fleet.uid, fleet.gid)  # made by an earlier run as a normal user


def _settle(place: Place, accounts: Accounts | None) -> None:
    path = place.path
    try:
        found: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        found = None
    if accounts is None:
        uid, gid = os.getuid(), os.getgid()
        mode = place.mode if place.public else place.mode & 0o7700
    else:
        uid = accounts.fleet.uid if place.owner is Owner.FLEET else 0
        gid = {"root": 0, "fleet": accounts.fleet.gid, "nginx": accounts.nginx.gid}[place.group]
        mode = place.mode
        if found is not None and stat.S_ISDIR(found.st_mode) and found.st_uid != uid:
            if place.rendered:  # another account's copy of what is rendered again now
                remove_tree(path)
                found = None
            elif place.owner is Owner.FLEET:  # made by root (a restore) or by an earlier account
                give_tree(path, uid, gid)
    if found is None:
        os.mkdir(path, 0o700)
    with opened(path) as descriptor:
        if accounts is not None:
            os.fchown(descriptor, uid, gid)
        os.fchmod(descriptor, mode)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and what it holds, never following a link out of it."""
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux has openat
        raise SynfleetError(f"cannot remove {path} safely on this system")
    shutil.rmtree(path)


def give_tree(top: Path, uid: int, gid: int) -> None:
    """Hand ``top``, when another account (or root: a restore) made it, to ``uid``:``gid``: the
    entries that account owns, each through its directory's descriptor, never through a link, and
    never inside a directory someone else owns (where a hard link to any file could wait)."""
    try:
        previous = os.lstat(top).st_uid
    except FileNotFoundError:
        return
    if previous == uid:
        return
    for _, directories, files, descriptor in os.fwalk(top, follow_symlinks=False):
        theirs = {name for name in (*directories, *files) if os.lstat(name, dir_fd=descriptor).st_uid == previous}
        directories[:] = [name for name in directories if name in theirs]
        for name in sorted(theirs):
            os.chown(name, uid, gid, dir_fd=descriptor, follow_symlinks=False)
    with opened(top) as descriptor:
        os.fchown(descriptor, uid, gid)


def _take_back(directory: Path, keep: Path | None = None, uid: int = -1, gid: int = -1) -> None:
    """In a directory only root writes now, what another account left there: its files move to
    ``keep`` (its own log directory inside, given to ``uid``:``gid``), or are removed, and so are
    links and anything else; without ``keep``, its directories stay (the account's places)."""
    with opened(directory) as source:
        for entry in os.scandir(source):
            found = os.lstat(entry.name, dir_fd=source)
            spared = keep is None or entry.name == keep.name
            if found.st_uid == 0 or (stat.S_ISDIR(found.st_mode) and spared):
                continue
            if stat.S_ISREG(found.st_mode) and keep is not None:
                with opened(keep) as target:
                    os.rename(entry.name, entry.name, src_dir_fd=source, dst_dir_fd=target)
                    os.chown(entry.name, uid, gid, dir_fd=target, follow_symlinks=False)
            elif stat.S_ISDIR(found.st_mode):
                shutil.rmtree(entry.name, dir_fd=source)
            else:
                os.unlink(entry.name, dir_fd=source)
