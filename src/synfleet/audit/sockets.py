"""Synapse's UNIX sockets that any local account can connect to, going around nginx and its access
rules (the admin API allow list, for one).

Connecting to a UNIX socket takes write permission on it and search permission on every directory
above it. Each socket is looked at with ``stat`` only, never connected to; sockets that do not exist
on this machine (the config is for another one) are left alone.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

from synfleet.audit.findings import ERROR, Finding
from synfleet.nginx.config import NginxModel, proxy_target

SHOWN = 3


def open_to_everyone(path: Path) -> str | None:
    """How the socket at ``path`` lets every local account connect (its mode), or None if it does not:
    no such socket, no write permission for others, or a directory above it others cannot search."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if not stat.S_ISSOCK(mode) or not mode & stat.S_IWOTH:
        return None
    # The directories of the path as written and of the one its links lead to.
    for directory in {*path.parents, *path.resolve().parents}:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return None
        except OSError:
            return None
    return f"mode {stat.S_IMODE(mode):04o}"


def configured_sockets(model: NginxModel) -> Iterator[tuple[Path, str]]:
    """(socket, where the config names it) for every ``unix:`` upstream server and proxy_pass."""
    for upstream in model.upstreams.values():
        for server in upstream.servers:
            if server.startswith("unix:"):
                yield Path(server.removeprefix("unix:")), f"upstream {upstream.name} ({upstream.line})"
    for location in model.locations:
        for directive in location.block:
            if directive["directive"] == "proxy_pass":
                address, _ = proxy_target(directive["args"][0])
                if address.startswith("unix:"):
                    yield Path(address.removeprefix("unix:")), location.label


def reachable_sockets(model: NginxModel, socket_dir: Path | None = None) -> list[Finding]:
    """One finding for all sockets, named by the config or found in ``socket_dir``, that any local
    account can connect to."""
    candidates = [(path, where) for path, where in configured_sockets(model) if path.is_absolute()]
    if socket_dir is not None and socket_dir.is_dir():
        candidates += [(path, f"in {socket_dir}") for path in sorted(socket_dir.rglob("*"))]
    open_sockets: dict[Path, str] = {}
    for path, where in candidates:
        if path not in open_sockets and (how := open_to_everyone(path)):
            open_sockets[path] = f"{path} ({how}, {where})"
    if not open_sockets:
        return []
    shown = list(open_sockets.values())
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    return [
        Finding(
            "socket_reachable",
            ERROR,
            f"any local account can connect to {'these UNIX sockets' if len(shown) > 1 else 'this UNIX socket'} "
            "(writable by others, every directory above it searchable) and reach Synapse without nginx and its "
            f"access rules, such as the admin API allow list: {'; '.join(shown[:SHOWN])}{more}",
            "let in only nginx's and Synapse's accounts: a socket directory of mode 0750 whose group is nginx's, or "
            "sockets of mode 0660 with that group",
            count=len(shown),
            where=str(next(iter(open_sockets))),
        )
    ]
