"""The runtime model of a fleet: which Synapse processes exist, what each one does, and where it
runs: its host, that host's private address, and its ports.

Everything downstream (routing, rendering, running) reads this model. The fleet file
(``fleet.toml``) is validated by :mod:`synfleet.model.schema` and resolved into it once by
:func:`synfleet.model.resolve.resolve`; without a fleet file, :func:`seed_fleet` gives the seed's
topology.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

#: Who may use the admin API unless the fleet file says otherwise: this machine only.
DEFAULT_ADMIN_ALLOW = ("127.0.0.1/32", "::1/128")


class Role(StrEnum):
    """What a Synapse process is for. Each worker has exactly one role."""

    MAIN = "main"
    CLIENT_SYNC = "client_sync"
    INITIAL_SYNC = "initial_sync"
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
    QUARANTINED_MEDIA_CHANGES = "quarantined_media_changes"


#: Streams whose HTTP endpoints every generic worker serves, passing writes to the stream's writer
#: over replication: device lists (devices, delete_devices, keys/upload, signing keys), since
#: Synapse 1.135, checked on 1.163. Routing them to the writer saves that hop.
WORKER_FORWARDED_STREAMS = frozenset({Stream.DEVICE_LISTS})


#: Streams that main and every process loading the media repository write: the media admin API's
#: quarantine endpoints record each change in them where they run, and main's background update
#: records media quarantined before the stream existed (Synapse 1.152+, checked on 1.163).
MEDIA_REPOSITORY_STREAMS = frozenset({Stream.QUARANTINED_MEDIA_CHANGES})

#: Streams that Synapse allows only one writer for.
SINGLE_WRITER_STREAMS = frozenset(
    {Stream.TYPING, Stream.TO_DEVICE, Stream.ACCOUNT_DATA, Stream.PRESENCE, Stream.PUSH_RULES}
)

#: Roles whose processes serve HTTP requests routed by nginx.
HTTP_ROLES = frozenset(
    {
        Role.MAIN,
        Role.CLIENT_SYNC,
        Role.INITIAL_SYNC,
        Role.ROOMS,
        Role.CLIENT_READER,
        Role.FEDERATION_READER,
        Role.MEDIA,
        Role.STREAM_WRITER,
    }
)


class Service(StrEnum):
    """The fleet's processes besides Synapse's; the same names in the native run, in compose and in
    resource limits and figures."""

    POSTGRES = "postgres"
    REDIS = "redis"
    NGINX = "nginx"
    TURN = "turn"  # coturn, when the fleet file enables it


def host_port(address: str, port: int) -> str:
    """An address with a port, as nginx and Synapse write it (IPv6 in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Host:
    """A machine of a fleet on several hosts, and the private address the others reach it at."""

    name: str
    address: str


@dataclass(frozen=True)
class Worker:
    """One Synapse process. ``main`` is the worker named ``main`` with role MAIN.

    On a fleet on several hosts, ``host`` is where it runs and ``address`` that host's private
    address, where other hosts reach its ``inbound_port`` (requests from the front nginx) and
    ``replication_port``; both are empty on one host. ``metrics_port`` is its Prometheus listener's
    port when metrics are on."""

    name: str
    role: Role
    streams: frozenset[Stream] = frozenset()
    background_tasks: bool = False
    pusher: bool = False
    host: str = ""
    address: str = ""
    inbound_port: int = 0
    replication_port: int = 0
    metrics_port: int | None = None

    @property
    def inbound_link(self) -> str:
        """address:port where the front nginx on another host reaches this process."""
        return host_port(self.address, self.inbound_port)

    @property
    def replication_link(self) -> str:
        """address:port where processes on other hosts reach this process's replication listener."""
        return host_port(self.address, self.replication_port)

    @property
    def in_instance_map(self) -> bool:
        """Stream writers (and main) need a replication listener that the other processes reach."""
        return self.role is Role.MAIN or bool(self.streams)

    @property
    def serves_http(self) -> bool:
        return self.role in HTTP_ROLES


@dataclass(frozen=True)
class ServiceProcess:
    """One of the fleet's own services (PostgreSQL and Redis unless external, nginx, coturn when
    enabled) and its host ("" on one host) with that host's private address."""

    service: Service
    host: str = ""
    address: str = ""


#: The services of a fleet on one host unless its fleet file says otherwise (TURN only when enabled).
LOCAL_SERVICES = tuple(ServiceProcess(service) for service in Service if service is not Service.TURN)


@dataclass(frozen=True)
class Fleet:
    """A whole homeserver: its name, its processes (main first, in a stable order), who may use
    the admin API (``admin_allow``, CIDRs; ``trusted_proxies`` may set the client address), and on
    several hosts its ``hosts`` (none on one host) with the services it runs itself."""

    server_name: str
    workers: tuple[Worker, ...]
    admin_allow: tuple[str, ...] = DEFAULT_ADMIN_ALLOW
    trusted_proxies: tuple[str, ...] = ()
    room_balancing: str = "consistent_hash"  # or round_robin / least_conn: room-blind, for comparison
    hosts: tuple[Host, ...] = ()
    services: tuple[ServiceProcess, ...] = LOCAL_SERVICES
    _by_name: dict[str, Worker] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {w.name: w for w in self.workers})

    # -- where things run (several hosts) ----------------------------------------------------------

    def host(self, name: str) -> Host:
        return next(host for host in self.hosts if host.name == name)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(host.name for host in self.hosts)

    @property
    def host_addresses(self) -> tuple[str, ...]:
        """Every host's private address, in the fleet file's order."""
        return tuple(host.address for host in self.hosts)

    def process(self, name: str) -> Worker | ServiceProcess:
        """A Synapse process or one of the fleet's own services, by name."""
        if name in self._by_name:
            return self._by_name[name]
        return next(s for s in self.services if s.service == name)

    def host_of(self, process: str) -> str:
        """The host of a Synapse process or of one of the fleet's own services ("" on one host)."""
        return self.process(process).host

    @property
    def front(self) -> str:
        """nginx's host: where clients and other servers come in ("" on one host)."""
        return self.host_of(Service.NGINX)

    def processes_on(self, host: str) -> list[str]:
        """The processes of ``host``: its services and Synapse processes, in the fleet's order."""
        names = [s.service.value for s in self.services if s.host == host]
        return names + [w.name for w in self.workers if w.host == host]

    @property
    def main(self) -> Worker:
        return next(w for w in self.workers if w.role is Role.MAIN)

    def worker(self, name: str) -> Worker:
        return self._by_name[name]

    def with_role(self, role: Role) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.role is role)

    def writers(self, stream: Stream) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if stream in w.streams)

    @property
    def media_repository(self) -> tuple[Worker, ...]:
        """The processes that load the media repository and serve its admin API: the media
        workers, else main."""
        return self.with_role(Role.MEDIA) or (self.main,)

    @property
    def media_stream_writers(self) -> tuple[str, ...]:
        """Who must write :data:`MEDIA_REPOSITORY_STREAMS`: main and the media workers (the
        default :func:`build_fleet` gives)."""
        return (self.main.name, *(w.name for w in self.with_role(Role.MEDIA)))

    def group(self, process: str) -> str:
        """The group a process belongs to for resource limits and figures: a service's own name,
        ``main``, or a worker's role."""
        if process in tuple(Service):
            return process
        return self.worker(process).role.value

    def grown(self, role: Role, extra: int) -> Fleet:
        """This fleet with ``extra`` more workers of ``role``, named like the existing ones."""
        count = len(self.with_role(role))
        streams = MEDIA_REPOSITORY_STREAMS if role is Role.MEDIA else frozenset()
        added = tuple(Worker(f"{role.value}{count + i}", role, streams) for i in range(1, extra + 1))
        return replace(self, workers=self.workers + added)


#: The order roles appear in a fleet (and in rendered files).
ROLE_ORDER = (
    Role.CLIENT_SYNC,
    Role.INITIAL_SYNC,
    Role.CLIENT_READER,
    Role.FEDERATION_READER,
    Role.MEDIA,
    Role.ROOMS,
    Role.TASKS,
    Role.SENDER,
)

#: The seed's worker counts: the default fleet and the ``seed`` profile.
SEED_COUNTS: Mapping[Role, int] = {
    Role.CLIENT_SYNC: 1,
    Role.CLIENT_READER: 1,
    Role.FEDERATION_READER: 1,
    Role.MEDIA: 1,
    Role.ROOMS: 4,
    Role.TASKS: 1,
    Role.SENDER: 4,
}

#: Without other instructions the first sync worker writes these streams (as in the seed).
SYNC_WRITER_STREAMS = frozenset(
    {Stream.TYPING, Stream.TO_DEVICE, Stream.ACCOUNT_DATA, Stream.RECEIPTS, Stream.PRESENCE}
)


def build_fleet(
    server_name: str,
    counts: Mapping[Role, int],
    writers: Mapping[Stream, Sequence[str]] | None = None,
    admin_allow: tuple[str, ...] = DEFAULT_ADMIN_ALLOW,
    trusted_proxies: tuple[str, ...] = (),
) -> Fleet:
    """A fleet from worker counts per role (named ``<role>1``..``<role>N``) and stream writers.

    Streams absent from ``writers`` keep the seed's defaults: the first sync worker writes
    :data:`SYNC_WRITER_STREAMS`, tasks workers persist events (sharded by room), main and the
    media workers write :data:`MEDIA_REPOSITORY_STREAMS`, the rest stay on main. A writer name
    that is not one of the numbered workers becomes a dedicated stream writer. The first tasks
    worker runs background tasks; every tasks worker sends pushes.
    """
    writers = dict(writers or {})
    syncs = [f"{Role.CLIENT_SYNC.value}{i}" for i in range(1, counts.get(Role.CLIENT_SYNC, 0) + 1)]
    tasks = [f"{Role.TASKS.value}{i}" for i in range(1, counts.get(Role.TASKS, 0) + 1)]
    for stream in SYNC_WRITER_STREAMS:
        if stream not in writers and syncs:
            writers[stream] = [syncs[0]]
    if Stream.EVENTS not in writers and tasks:
        writers[Stream.EVENTS] = tasks
    media = [f"{Role.MEDIA.value}{i}" for i in range(1, counts.get(Role.MEDIA, 0) + 1)]
    for stream in MEDIA_REPOSITORY_STREAMS - writers.keys():
        writers[stream] = ["main", *media]
    streams_of: dict[str, set[Stream]] = {}
    for stream, names in writers.items():
        for name in names:
            streams_of.setdefault(name, set()).add(stream)

    workers = [Worker("main", Role.MAIN, frozenset(streams_of.pop("main", ())))]
    for role in ROLE_ORDER:
        for i in range(1, counts.get(role, 0) + 1):
            name = f"{role.value}{i}"
            workers.append(
                Worker(
                    name,
                    role,
                    frozenset(streams_of.pop(name, ())),
                    background_tasks=role is Role.TASKS and i == 1,
                    pusher=role is Role.TASKS,
                )
            )
    for name in sorted(streams_of):
        workers.append(Worker(name, Role.STREAM_WRITER, frozenset(streams_of[name])))
    return Fleet(server_name, tuple(workers), admin_allow, trusted_proxies)


def standard_fleet(
    server_name: str = "localhost",
    *,
    rooms: int = SEED_COUNTS[Role.ROOMS],
    client_sync: int = SEED_COUNTS[Role.CLIENT_SYNC],
    client_reader: int = SEED_COUNTS[Role.CLIENT_READER],
    federation_reader: int = SEED_COUNTS[Role.FEDERATION_READER],
    media: int = SEED_COUNTS[Role.MEDIA],
    tasks: int = SEED_COUNTS[Role.TASKS],
    sender: int = SEED_COUNTS[Role.SENDER],
    dedicated_writers: Iterable[Stream] = (),
) -> Fleet:
    """A fleet laid out like the seed, with adjustable counts; each stream in ``dedicated_writers``
    gets a worker of its own named ``<stream>_writer``."""
    counts = {
        Role.ROOMS: rooms,
        Role.CLIENT_SYNC: client_sync,
        Role.CLIENT_READER: client_reader,
        Role.FEDERATION_READER: federation_reader,
        Role.MEDIA: media,
        Role.TASKS: tasks,
        Role.SENDER: sender,
    }
    return build_fleet(server_name, counts, {s: [f"{s.value}_writer"] for s in dedicated_writers})


def seed_fleet(server_name: str = "localhost") -> Fleet:
    """The seed's topology with the seed's worker names."""
    return standard_fleet(server_name)
