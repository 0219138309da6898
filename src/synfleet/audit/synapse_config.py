"""The audit's ``--synapse-config``: what a deployment's own Synapse config says about its processes.

homeserver.yaml names the stream writers, the federation senders and whether main loads the media
repository; each worker file names its worker, its listeners and whether it loads the media
repository. With them the audit knows which process may serve what, and which process is behind
each upstream server of the nginx config (by socket path, or by port), instead of guessing.

Given one homeserver.yaml, the worker files beside it and in a ``workers/`` folder next to it are
read too; more files can be given explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synfleet.audit.roles import role_from_name
from synfleet.errors import UsageError
from synfleet.layout import worker_of_server
from synfleet.model.fleet import Fleet, Role, Stream, Worker
from synfleet.model.synapse import Resource, process_name

MAIN = "main"
#: Roles a generic worker's name may give it; anything else that serves HTTP is a client reader.
NAMED_HTTP_ROLES = frozenset({Role.ROOMS, Role.CLIENT_SYNC, Role.FEDERATION_READER, Role.CLIENT_READER})
#: Listener resources that mean a process takes requests from nginx.
SERVED = frozenset({Resource.CLIENT, Resource.FEDERATION, Resource.MEDIA})


@dataclass(frozen=True)
class Process:
    """One Synapse process as its config describes it."""

    name: str
    ports: frozenset[int]
    sockets: frozenset[str]  # stems of its UNIX socket listeners, as nginx configs name them
    serves_http: bool
    media: bool
    #: Each listener on a UNIX socket, of any type: its path -> its resource names.
    socket_resources: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    #: The file's own ``enable_media_repo``; None when it has none (a worker then has the shared one).
    enable_media_repo: bool | None = None


@dataclass(frozen=True)
class SynapseConfig:
    shared: dict[str, Any]
    processes: tuple[Process, ...]  # main first

    def writers(self) -> dict[str, set[Stream]]:
        """The streams each process writes; streams nobody is named for stay with main."""
        written: dict[str, set[Stream]] = {p.name: set() for p in self.processes}
        configured = self.shared.get("stream_writers") or {}
        for stream in Stream:
            names = configured.get(stream.value) or [MAIN]
            for name in [names] if isinstance(names, str) else names:
                written.setdefault(process_name(str(name)), set()).add(stream)
        return written

    def fleet(self) -> tuple[Fleet, list[str]]:
        """The fleet these processes make, and the assumptions that remain (generic workers' roles
        for the affinity checks, from their names)."""
        senders = set(self.shared.get("federation_sender_instances") or [])
        writers = self.writers()
        workers = []
        guessed = []
        for process in self.processes:
            if process.name == MAIN:
                role = Role.MAIN
            elif process.media:
                role = Role.MEDIA
            elif not process.serves_http:
                role = Role.SENDER if process.name in senders else Role.TASKS
            else:
                named = role_from_name(process.name)
                role = named if named in NAMED_HTTP_ROLES else Role.CLIENT_READER
                guessed.append(f"{process.name}: {role.value}")
            workers.append(Worker(process.name, role, frozenset(writers.get(process.name, ()))))
        assumptions = [f"roles of generic workers from their names (for affinity only): {'; '.join(guessed)}"]
        return Fleet(str(self.shared.get("server_name", "localhost")), tuple(workers)), assumptions if guessed else []

    def process_for(self, label: str) -> str | None:
        """The process behind an upstream label nginx uses (a socket's stem, or ``host:port`` matched
        by port, when exactly one process listens on it); None if none does."""
        for process in self.processes:
            if label in process.sockets:
                return process.name
        port = label.rpartition(":")[2]
        owners = [p.name for p in self.processes if port.isdigit() and int(port) in p.ports]
        return owners[0] if len(owners) == 1 else None


def _load(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{path}: not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a Synapse config (expected a YAML mapping of settings)")
    return data


def _is_worker(data: dict[str, Any]) -> bool:
    return "worker_app" in data or "worker_name" in data


def _media_setting(data: dict[str, Any]) -> bool | None:
    return bool(data["enable_media_repo"]) if "enable_media_repo" in data else None


def _process(name: str, listeners: Any, media: bool, source: Path, setting: bool | None) -> Process:
    if not isinstance(listeners, list):
        raise UsageError(f"{source}: listeners must be a list")
    ports, sockets, serves = set(), set(), False
    socket_resources: dict[str, frozenset[str]] = {}
    for listener in listeners:
        if not isinstance(listener, dict):
            continue
        names = {n for r in listener.get("resources") or [] if isinstance(r, dict) for n in r.get("names") or []}
        if isinstance(listener.get("path"), str):
            socket_resources[listener["path"]] = frozenset(names)
        if listener.get("type", "http") != "http" or not names & SERVED:
            continue
        serves = True
        if isinstance(listener.get("port"), int):
            ports.add(listener["port"])
        if isinstance(listener.get("path"), str):
            sockets.add(worker_of_server(f"unix:{listener['path']}"))
    return Process(name, frozenset(ports), frozenset(sockets), serves, media, socket_resources, setting)


def _siblings(shared: Path) -> list[Path]:
    """Worker files beside homeserver.yaml and in a workers/ folder next to it."""
    folder = shared.parent
    candidates = sorted([*folder.glob("*.yaml"), *folder.glob("workers/*.yaml")])
    found = []
    for path in candidates:
        if path.resolve() == shared.resolve():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # not a worker file (log configs and others live here too)
        if isinstance(data, dict) and _is_worker(data):
            found.append(path)
    return found


def read_synapse_config(paths: Sequence[Path]) -> SynapseConfig:
    """The processes of a Synapse deployment from its homeserver.yaml and worker files.

    UsageError naming the file: not YAML, not a Synapse config, no homeserver.yaml among them, a
    worker without a name."""
    loaded = [(path, _load(path)) for path in paths]
    shared = [(path, data) for path, data in loaded if not _is_worker(data)]
    for path, data in shared:
        if "server_name" not in data and "listeners" not in data:
            raise UsageError(f"{path}: not a Synapse config (no server_name, listeners, worker_app or worker_name)")
    if len(shared) != 1:
        given = ", ".join(str(p) for p in paths)
        raise UsageError(f"--synapse-config: give exactly one homeserver.yaml (a file with server_name), got {given}")
    shared_path, shared_data = shared[0]
    workers = [(path, data) for path, data in loaded if _is_worker(data)]
    if len(paths) == 1:
        workers += [(path, _load(path)) for path in _siblings(shared_path)]
    main_media = bool(shared_data.get("enable_media_repo", True))
    main_listeners = shared_data.get("listeners") or []
    processes = [_process(MAIN, main_listeners, main_media, shared_path, _media_setting(shared_data))]
    seen = {MAIN}
    for path, data in workers:
        name = data.get("worker_name")
        if not isinstance(name, str) or not name:
            raise UsageError(f"{path}: a worker config without worker_name")
        if name in seen:
            continue
        seen.add(name)
        media = bool(data.get("enable_media_repo")) or str(data.get("worker_app", "")).endswith("media_repository")
        processes.append(_process(name, data.get("worker_listeners") or [], media, path, _media_setting(data)))
    return SynapseConfig(shared_data, tuple(processes))
