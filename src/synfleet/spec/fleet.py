"""The runtime model of a fleet: which Synapse processes exist and what each one does.

Everything downstream (routing, rendering, running) reads this model and nothing else. The fleet
file (``fleet.toml``) is parsed and validated into it; without a fleet file, :func:`seed_fleet`
gives the seed's topology.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """What a Synapse process is for. Each worker has exactly one role."""

    MAIN = "main"
    CLIENT_SYNC = "client_sync"
    ROOMS = "rooms"
    CLIENT_READER = "client_reader"
    FEDERATION_READER = "federation_reader"
    MEDIA = "media"
    TASKS = "tasks"
    SENDER = "sender"
    STREAM_WRITER = "stream_writer"


class Stream(StrEnum):
    """Synapse replication streams that can be written by a worker instead of main."""

    EVENTS = "events"
    TYPING = "typing"
    TO_DEVICE = "to_device"
    ACCOUNT_DATA = "account_data"
    RECEIPTS = "receipts"
    PRESENCE = "presence"
    PUSH_RULES = "push_rules"
    DEVICE_LISTS = "device_lists"
    THREAD_SUBSCRIPTIONS = "thread_subscriptions"


#: Streams that Synapse allows only one writer for.
SINGLE_WRITER_STREAMS = frozenset(
    {Stream.TYPING, Stream.TO_DEVICE, Stream.ACCOUNT_DATA, Stream.PRESENCE, Stream.PUSH_RULES}
)

#: Roles whose processes serve HTTP requests routed by nginx.
HTTP_ROLES = frozenset(
    {
        Role.MAIN,
        Role.CLIENT_SYNC,
        Role.ROOMS,
        Role.CLIENT_READER,
        Role.FEDERATION_READER,
        Role.MEDIA,
        Role.STREAM_WRITER,
    }
)


@dataclass(frozen=True)
class Worker:
    """One Synapse process. ``main`` is the worker named ``main`` with role MAIN."""

    name: str
    role: Role
    streams: frozenset[Stream] = frozenset()
    background_tasks: bool = False
    pusher: bool = False

    @property
    def serves_http(self) -> bool:
        return self.role in HTTP_ROLES


@dataclass(frozen=True)
class Fleet:
    """A whole homeserver: its name, its processes (main first, in a stable order) and who may use
    the admin API (``admin_allow``, CIDRs; ``trusted_proxies`` may set the client address)."""

    server_name: str
    workers: tuple[Worker, ...]
    admin_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    trusted_proxies: tuple[str, ...] = ()
    _by_name: dict[str, Worker] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {w.name: w for w in self.workers})

    @property
    def main(self) -> Worker:
        return self._by_name["main"]

    def worker(self, name: str) -> Worker:
        return self._by_name[name]

    def with_role(self, role: Role) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.role is role)

    def writers(self, stream: Stream) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if stream in w.streams)


def numbered(role: Role, count: int, prefix: str | None = None, **attrs: object) -> list[Worker]:
    """``count`` workers of one role named ``<prefix>1`` .. ``<prefix><count>``."""
    stem = prefix or role.value
    return [Worker(name=f"{stem}{i}", role=role, **attrs) for i in range(1, count + 1)]  # type: ignore[arg-type]


#: The seed's sync worker also writes the streams whose endpoints it served there.
SYNC_WRITER_STREAMS = frozenset(
    {Stream.TYPING, Stream.TO_DEVICE, Stream.ACCOUNT_DATA, Stream.RECEIPTS, Stream.PRESENCE}
)


def standard_fleet(
    server_name: str = "localhost",
    *,
    rooms: int = 4,
    client_sync: int = 1,
    client_reader: int = 1,
    federation_reader: int = 1,
    media: int = 1,
    tasks: int = 1,
    senders: int = 4,
    dedicated_writers: Iterable[Stream] = (),
) -> Fleet:
    """A fleet laid out like the seed, with adjustable counts.

    The first sync worker writes the streams of :data:`SYNC_WRITER_STREAMS`; tasks workers persist
    events (sharded by room) and send pushes, the first one also runs background tasks. Streams
    named in ``dedicated_writers`` get a worker of their own (``<stream>_writer``) instead.
    """
    dedicated = frozenset(dedicated_writers)
    sync_streams = SYNC_WRITER_STREAMS - dedicated
    workers: list[Worker] = [Worker("main", Role.MAIN)]
    for i, w in enumerate(numbered(Role.CLIENT_SYNC, client_sync)):
        workers.append(Worker(w.name, w.role, streams=sync_streams if i == 0 else frozenset()))
    workers += numbered(Role.CLIENT_READER, client_reader)
    workers += numbered(Role.FEDERATION_READER, federation_reader)
    workers += numbered(Role.MEDIA, media)
    workers += numbered(Role.ROOMS, rooms)
    events = frozenset({Stream.EVENTS}) - dedicated
    for i, w in enumerate(numbered(Role.TASKS, tasks)):
        workers.append(Worker(w.name, w.role, streams=events, background_tasks=i == 0, pusher=True))
    workers += numbered(Role.SENDER, senders)
    for stream in sorted(dedicated):
        workers.append(Worker(f"{stream.value}_writer", Role.STREAM_WRITER, streams=frozenset({stream})))
    return Fleet(server_name=server_name, workers=tuple(workers))


def seed_fleet(server_name: str = "localhost") -> Fleet:
    """The seed's topology with the seed's worker names."""
    return standard_fleet(server_name)
