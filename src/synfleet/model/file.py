"""``fleet.toml``: the validated description of a deployment.

Every section is a small strict model: unknown keys, wrong types and out-of-range values are
rejected with a message that names the field and says what would be valid.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synfleet.errors import FleetError
from synfleet.model.fleet import (
    DEFAULT_ADMIN_ALLOW,
    HTTP_ROLES,
    SEED_COUNTS,
    SINGLE_WRITER_STREAMS,
    Fleet,
    Role,
    Service,
    Stream,
    Worker,
    build_fleet,
)

NAME_PATTERN = re.compile(r"[a-z0-9_]+")
# A DNS name (labels of letters, digits and inner hyphens) or an IP literal, with an optional port.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SERVER_NAME_PATTERN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
MEMORY_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]+)?[kmg]?", re.IGNORECASE)
VERSION_PATTERN = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(?:rc[0-9]+)?")
SIZE_PATTERN = re.compile(r"([0-9]+)([KMG]?)")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}

#: The largest request body Synapse takes other than a media upload: a full federation /send of
#: 200 events of at most 64 KiB each (Synapse's own limit, 12.5 MiB).
REQUEST_BODY_LIMIT = 200 * 64 * 1024

Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=0, le=64)]


def parse_size(value: str) -> int:
    """The bytes in a size such as 50M (K, M and G are powers of 1024); ValueError if it is none."""
    match = SIZE_PATTERN.fullmatch(value)
    if not match or int(match[1]) == 0:
        raise ValueError(f"must be a size such as 50M, 512K or 2G (powers of 1024), got {value!r}")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def check_server_name(value: str) -> str:
    """``value`` if it can be a homeserver's name; else ValueError saying what would be valid."""
    if not SERVER_NAME_PATTERN.fullmatch(value) or len(value) > 255:
        raise ValueError(f"must be a host name such as example.org (optionally :port), got {value!r}")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Listen(Section):
    """Where nginx accepts client and federation traffic."""

    bind: str = "127.0.0.1"
    http_port: Port = 8008
    https_port: Port = 8448

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.http_port == self.https_port:
            raise ValueError(f"http_port and https_port must differ (both {self.http_port})")
        return self


class Tls(Section):
    """TLS on nginx's https_port; off when another proxy terminates TLS."""

    enabled: bool = False
    certificate: str = ""
    key: str = ""

    @model_validator(mode="after")
    def _paths(self) -> Self:
        if self.enabled and not (self.certificate and self.key):
            raise ValueError("certificate and key (PEM file paths) are required when enabled = true")
        return self


def _networks(values: list[str]) -> list[str]:
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network such as 10.0.0.0/8") from None
    return out


class Access(Section):
    """Who may use the admin API, and which proxies may set the client address (X-Forwarded-For)."""

    admin_allow: list[str] = Field(default_factory=lambda: list(DEFAULT_ADMIN_ALLOW))
    trusted_proxies: list[str] = Field(default_factory=list)

    _check = field_validator("admin_allow", "trusted_proxies")(_networks)


class Federation(Section):
    """Talking to other homeservers. Each key is the Synapse setting named in its comment."""

    # federation_custom_ca_list: a PEM bundle trusted for outbound federation (private federations).
    trusted_ca: str = ""
    # federation_domain_whitelist: federate only with these servers; absent: with every server.
    domain_whitelist: list[str] | None = None
    # ip_range_whitelist: private networks that outbound requests may reach despite Synapse's blocklist.
    ip_range_whitelist: list[str] = Field(default_factory=list)
    # trusted_key_servers: notaries asked for other servers' signing keys; [] asks each server itself.
    trusted_key_servers: list[str] = Field(default_factory=lambda: ["matrix.org"])

    _ranges = field_validator("ip_range_whitelist")(_networks)

    @field_validator("domain_whitelist", "trusted_key_servers")
    @classmethod
    def _servers(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            check_server_name(name)
        return value


class Workers(Section):
    """How many workers of each role; 0 leaves that work to main. The defaults are the seed's."""

    client_sync: Count = SEED_COUNTS[Role.CLIENT_SYNC]
    rooms: Count = SEED_COUNTS[Role.ROOMS]
    client_reader: Count = SEED_COUNTS[Role.CLIENT_READER]
    federation_reader: Count = SEED_COUNTS[Role.FEDERATION_READER]
    media: Count = SEED_COUNTS[Role.MEDIA]
    tasks: Count = SEED_COUNTS[Role.TASKS]
    senders: Count = SEED_COUNTS[Role.SENDER]

    def counts(self) -> dict[Role, int]:
        return {
            Role.CLIENT_SYNC: self.client_sync,
            Role.ROOMS: self.rooms,
            Role.CLIENT_READER: self.client_reader,
            Role.FEDERATION_READER: self.federation_reader,
            Role.MEDIA: self.media,
            Role.TASKS: self.tasks,
            Role.SENDER: self.senders,
        }


class Metrics(Section):
    """Prometheus metrics: each Synapse process listens on <base_port + its index> (127.0.0.1 in the
    native run, the service network in compose) and nginx reports its status on ``nginx_status_port``;
    compose's ``metrics`` profile adds Prometheus and Grafana, Grafana published on ``grafana_port``."""

    enabled: bool = False
    base_port: Port = 19100
    nginx_status_port: Port = 19099
    grafana_port: Port = 3000


class Media(Section):
    """Media uploads: the largest file a client may upload, enforced by nginx and Synapse alike."""

    max_upload_size: str = "50M"

    @field_validator("max_upload_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def max_upload_bytes(self) -> int:
        return parse_size(self.max_upload_size)


class Routing(Section):
    """How nginx balances room workers. Room-blind balancing exists to measure what hashing buys."""

    room_balancing: Literal["consistent_hash", "round_robin", "least_conn"] = "consistent_hash"


#: PostgreSQL's port; the fleet's own listens there.
DEFAULT_POSTGRES_PORT = 5432


class Database(Section):
    """PostgreSQL. An empty host means the fleet's own server (a UNIX socket)."""

    name: str = Field("synapse", pattern=r"^[A-Za-z0-9_]+$")
    user: str = Field("synapse", pattern=r"^[A-Za-z0-9_]+$")
    host: str = ""
    port: Port = DEFAULT_POSTGRES_PORT
    pool_min: int = Field(5, ge=1, le=100)
    pool_max: int = Field(10, ge=1, le=100)

    @property
    def local(self) -> bool:
        """The fleet runs its own PostgreSQL (no host given)."""
        return not self.host

    @model_validator(mode="after")
    def _pool(self) -> Self:
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) must not exceed pool_max ({self.pool_max})")
        return self


class Redis(Section):
    """Redis for replication. An empty host means the fleet's own server (a UNIX socket)."""

    host: str = ""
    port: Port = 6379
    dbid: int = Field(0, ge=0, le=15)

    @property
    def local(self) -> bool:
        """The fleet runs its own Redis (no host given)."""
        return not self.host


class Host(Section):
    """A machine of a fleet on several hosts: where the others reach it (a private address)."""

    address: str

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"must be an IP address such as 10.0.0.2 (the host's private address), got {value!r}"
            ) from None
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{value} is not one host's address: give the address the other hosts reach it at")
        return str(address)


class Transport(Section):
    """The TCP ports of the links between hosts, on each host's private address: a Synapse process's
    inbound HTTP at ``inbound_base_port`` + its index, its replication at ``replication_base_port``
    + its index (PostgreSQL and Redis keep ``database.port`` and ``redis.port``)."""

    inbound_base_port: Port = 18100
    replication_base_port: Port = 18600


class Resources(Section):
    """Limits for one docker compose service."""

    memory: str = "1g"
    cpus: float = Field(1.0, gt=0, le=256)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not MEMORY_PATTERN.fullmatch(value):
            raise ValueError(f"must be a size such as 512m or 2g, got {value!r}")
        return value.lower()


class Synapse(Section):
    """Synapse itself."""

    version: str = "1.163.2"
    relaxed_rate_limits: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    gc_thresholds: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    #: How the native run starts Synapse's processes: "fork" imports Synapse once, in the
    #: supervisor, and forks each process from it (shared memory, faster start); "exec" starts a
    #: new Python for each. Containers always start their one process the exec way.
    start: Literal["fork", "exec"] = "fork"

    @field_validator("gc_thresholds")
    @classmethod
    def _gc(cls, value: list[int]) -> list[int]:
        if value and len(value) != 3:
            raise ValueError(f"must be three integers (Python's gc thresholds, e.g. [700, 10, 10]), got {value}")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_PATTERN.fullmatch(value):
            raise ValueError(f"must be a release such as 1.163.2, got {value!r}")
        return value


#: A container image reference: [registry[:port]/]path[:tag][@digest], as docker and podman take it.
IMAGE_PATTERN = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


def check_image(value: str) -> str:
    if value and not IMAGE_PATTERN.fullmatch(value):
        raise ValueError(f"must be an image reference such as registry.example.org/synapse:v1.163.2, got {value!r}")
    return value


OFFICIAL_SYNAPSE_IMAGE = "matrixdotorg/synapse"


class Images(Section):
    """The images docker compose runs; a private registry or mirror goes here. An empty ``synapse``
    means the official image of ``synapse.version``."""

    synapse: str = ""
    nginx: str = "nginx:mainline-alpine-slim"
    postgres: str = "postgres:15-alpine"
    redis: str = "redis:7-alpine"
    prometheus: str = "prom/prometheus:v3.5.0"
    grafana: str = "grafana/grafana:12.2.0"

    _image = field_validator("synapse", "nginx", "postgres", "redis", "prometheus", "grafana")(check_image)

    @field_validator("nginx", "postgres", "redis", "prometheus", "grafana")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("must name an image")
        return value


#: Groups that take docker compose limits: every process's group (see :meth:`Fleet.group`), and a
#: default. Those that are not worker roles come first.
FIXED_GROUPS = ("default", Role.MAIN.value, *(s.value for s in Service))
RESOURCE_GROUPS = (*FIXED_GROUPS, *(r.value for r in Role if r is not Role.MAIN))


class FleetSpec(Section):
    """The whole fleet file."""

    server_name: str
    public_baseurl: str = ""
    listen: Listen = Field(default_factory=Listen)
    tls: Tls = Field(default_factory=Tls)
    access: Access = Field(default_factory=Access)
    federation: Federation = Field(default_factory=Federation)
    workers: Workers = Field(default_factory=Workers)
    stream_writers: dict[Annotated[Stream, Field(strict=False)], list[str]] = Field(default_factory=dict)
    routing: Routing = Field(default_factory=Routing)
    metrics: Metrics = Field(default_factory=Metrics)
    media: Media = Field(default_factory=Media)
    database: Database = Field(default_factory=Database)
    redis: Redis = Field(default_factory=Redis)
    synapse: Synapse = Field(default_factory=Synapse)
    images: Images = Field(default_factory=Images)
    resources: dict[str, Resources] = Field(default_factory=dict)
    hosts: dict[str, Host] = Field(default_factory=dict)
    placement: dict[str, str | list[str]] = Field(default_factory=dict)
    transport: Transport = Field(default_factory=Transport)

    _server_name = field_validator("server_name")(check_server_name)

    @field_validator("public_baseurl")
    @classmethod
    def _baseurl(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/\s]+/(?:[^\s]*)", value):
            raise ValueError(f"must be an http(s) URL ending in /, such as https://matrix.example.org/, got {value!r}")
        return value

    @field_validator("stream_writers")
    @classmethod
    def _writers(cls, value: dict[Stream, list[str]]) -> dict[Stream, list[str]]:
        for stream, names in value.items():
            if not names:
                raise ValueError(f"{stream.value}: needs at least one worker name (or remove the key)")
            for name in names:
                if not NAME_PATTERN.fullmatch(name):
                    raise ValueError(f"{stream.value}: worker name {name!r} may only use a-z, 0-9 and _")
            if len(set(names)) != len(names):
                raise ValueError(f"{stream.value}: {names} names a worker twice")
            if stream in SINGLE_WRITER_STREAMS and len(names) > 1:
                allowed = ", ".join(sorted(s.value for s in Stream if s not in SINGLE_WRITER_STREAMS))
                raise ValueError(
                    f"{stream.value}: Synapse allows a single writer for this stream, got {len(names)} "
                    f"({', '.join(names)}); streams with several writers: {allowed}"
                )
        return value

    @field_validator("resources")
    @classmethod
    def _resource_groups(cls, value: dict[str, Resources]) -> dict[str, Resources]:
        for group in value:
            if group not in RESOURCE_GROUPS:
                raise ValueError(f"unknown group {group!r}; allowed: {', '.join(RESOURCE_GROUPS)}")
        return value

    @model_validator(mode="after")
    def _writers_serve_http(self) -> Self:
        fleet = self.fleet
        for stream, names in self.stream_writers.items():
            if stream is Stream.EVENTS:
                continue
            for name in names:
                worker = fleet.worker(name)
                if not worker.serves_http:
                    raise ValueError(
                        f"stream_writers.{stream.value}: {name} is a {worker.role.value} worker, which "
                        "serves no "
                        "HTTP requests; use a new name for a dedicated writer, or a worker of role "
                        + ", ".join(sorted(r.value for r in HTTP_ROLES))
                    )
        return self

    @model_validator(mode="after")
    def _metrics_ports(self) -> Self:
        """The Synapse processes' metrics ports fit below 65536 and do not take nginx's status port."""
        last = self.metrics.base_port + len(self.fleet.workers) - 1
        if last > 65535:
            raise ValueError(
                f"metrics: base_port {self.metrics.base_port} leaves no room for {len(self.fleet.workers)} "
                f"processes' ports (the last would be {last}; ports end at 65535)"
            )
        if self.metrics.base_port <= self.metrics.nginx_status_port <= last:
            raise ValueError(
                f"metrics: nginx_status_port {self.metrics.nginx_status_port} is one of the Synapse processes' "
                f"ports ({self.metrics.base_port}-{last}); pick one outside that range"
            )
        return self

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: dict[str, Host]) -> dict[str, Host]:
        seen: dict[str, str] = {}
        for name, host in value.items():
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{name}: a host name may only use a-z, 0-9 and _")
            if host.address in seen:
                raise ValueError(f"{name}: address {host.address} is also host {seen[host.address]}'s")
            seen[host.address] = name
        return value

    @model_validator(mode="after")
    def _transport_ports(self) -> Self:
        """Each process's inbound and replication ports fit below 65536 and do not overlap."""
        count = len(self.fleet.workers)
        inbound, replication = self.transport.inbound_base_port, self.transport.replication_base_port
        for key, first in (("inbound_base_port", inbound), ("replication_base_port", replication)):
            if first + count - 1 > 65535:
                raise ValueError(
                    f"transport.{key}: {first} leaves no room for {count} processes' ports (ports end at 65535)"
                )
        if inbound < replication + count and replication < inbound + count:
            raise ValueError(
                f"transport: the inbound ports ({inbound}-{inbound + count - 1}) and the replication ports "
                f"({replication}-{replication + count - 1}) overlap; move one base"
            )
        if not self.hosts:
            return self

        def one(port: int) -> range:
            return range(port, port + 1)

        taken = {"listen.http_port": one(self.listen.http_port)}
        if self.tls.enabled:
            taken["listen.https_port"] = one(self.listen.https_port)
        if self.database.local:
            taken["database.port"] = one(self.database.port)
        if self.redis.local:
            taken["redis.port"] = one(self.redis.port)
        if self.metrics.enabled:
            taken["metrics.base_port"] = range(self.metrics.base_port, self.metrics.base_port + count)
            taken["metrics.nginx_status_port"] = one(self.metrics.nginx_status_port)
        for kind, first in (("inbound", inbound), ("replication", replication)):
            for key, ports in taken.items():
                if first < ports.stop and ports.start < first + count:
                    raise ValueError(
                        f"transport.{kind}_base_port: the {kind} ports ({first}-{first + count - 1}) include "
                        f"{key}'s ({ports.start}); move one of them"
                    )
        return self

    @model_validator(mode="after")
    def _placement(self) -> Self:
        if self.placement and not self.hosts:
            raise ValueError("placement: places processes on hosts, but there is no [hosts.<name>] with an address")
        if not self.hosts:
            return self
        names = {w.name for w in self.fleet.workers}
        groups = {*(w.role.value for w in self.fleet.workers), *(s.value for s in Service)}
        for key, value in self.placement.items():
            hosts = [value] if isinstance(value, str) else value
            where = f"placement.{key}"
            if key != "default" and key not in groups and key not in names:
                known = ", ".join(["default", *sorted(groups), *sorted(names - groups)])
                raise ValueError(f"{where}: no group or process of that name in this fleet; known: {known}")
            if not hosts:
                raise ValueError(f"{where}: names no host")
            for host in hosts:
                if host not in self.hosts:
                    raise ValueError(f"{where}: no host {host!r}; hosts: {', '.join(self.hosts)}")
            if len(hosts) > 1 and (key == "default" or key in names or key in tuple(Service)):
                raise ValueError(f"{where}: one process runs on one host; a list spreads a group of workers")
        if "default" not in self.placement and len(self.hosts) > 1:
            raise ValueError(
                "placement.default: required with more than one host (where nginx, main, PostgreSQL and Redis run "
                "unless placed)"
            )
        for service, section in ((Service.POSTGRES, self.database), (Service.REDIS, self.redis)):
            if service.value in self.placement and not section.local:
                raise ValueError(f"placement.{service.value}: the fleet uses an external one ({section.host})")
        if self.database.local and self.database.port != DEFAULT_POSTGRES_PORT:
            raise ValueError(
                f"database.port: the fleet's own PostgreSQL listens on {DEFAULT_POSTGRES_PORT} on its host; "
                "leave port out, or give database.host for an external one"
            )
        media = {self.host_of(w.name) for w in self.fleet.with_role(Role.MEDIA)}
        if len(media) > 1:
            raise ValueError(
                f"placement: media workers on hosts {', '.join(sorted(media))}; they must share one media store, "
                "so place them on one host"
            )
        return self

    def host_of(self, process: str) -> str:
        """The host ``process`` (a Synapse process or a service) runs on; "" without [hosts]."""
        if not self.hosts:
            return ""
        if process in self.placement:
            value = self.placement[process]
            return value if isinstance(value, str) else value[0]
        default = self.placement.get("default", next(iter(self.hosts)))
        fallback = default if isinstance(default, str) else default[0]
        if process in tuple(Service):
            return fallback
        worker = self.fleet.worker(process)
        group = self.placement.get(worker.role.value)
        if group is None:
            return fallback
        if isinstance(group, str):
            return group
        return group[self.fleet.with_role(worker.role).index(worker) % len(group)]

    def address_of(self, host: str, port: int) -> str:
        """``host``'s private address with ``port``, as nginx and Synapse write it."""
        address = self.hosts[host].address
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def inbound_port(self, process: str) -> int:
        """The TCP port on its host's private address where a Synapse process takes requests from
        another host's nginx (multi-host fleets)."""
        return self.transport.inbound_base_port + self.fleet.workers.index(self.fleet.worker(process))

    def replication_port(self, process: str) -> int:
        """The TCP port on its host's private address where a Synapse process takes replication
        requests from other hosts (multi-host fleets)."""
        return self.transport.replication_base_port + self.fleet.workers.index(self.fleet.worker(process))

    def remote_inbound(self, viewpoint: str) -> dict[str, str]:
        """The Synapse processes on other hosts than ``viewpoint``, each with the address:port
        where that host takes its inbound requests; empty without [hosts]."""
        return {
            w.name: self.address_of(self.host_of(w.name), self.inbound_port(w.name))
            for w in self.fleet.workers
            if self.hosts and self.host_of(w.name) != viewpoint
        }

    def processes_on(self, host: str) -> list[str]:
        """The processes of ``host``: its services and Synapse processes, in the fleet's order."""
        local = [s.value for s in Service if self._runs_here(s.value)]
        return [p for p in [*local, *(w.name for w in self.fleet.workers)] if self.host_of(p) == host]

    def _runs_here(self, service: str) -> bool:
        return {Service.POSTGRES.value: self.database.local, Service.REDIS.value: self.redis.local}.get(service, True)

    @property
    def baseurl(self) -> str:
        return self.public_baseurl or f"https://{self.server_name}/"

    @property
    def public_host(self) -> str:
        """The host clients and other servers connect to (public_baseurl's, else server_name's)."""
        return urlsplit(self.baseurl).hostname or self.server_name

    @property
    def federation_address(self) -> str:
        """Where other servers reach this one: the public host on nginx's HTTPS port."""
        return f"{self.public_host}:{self.listen.https_port}"

    @property
    def delegated(self) -> bool:
        """Other servers cannot find this one from server_name alone (its host, port 8448): nginx
        serves /.well-known/matrix/server to say where it is."""
        return self.federation_address != (self.server_name if ":" in self.server_name else f"{self.server_name}:8448")

    @property
    def synapse_image(self) -> str:
        return self.images.synapse or f"{OFFICIAL_SYNAPSE_IMAGE}:v{self.synapse.version}"

    @cached_property
    def fleet(self) -> Fleet:
        """The fleet this file describes (built once)."""
        fleet = build_fleet(
            self.server_name,
            self.workers.counts(),
            self.stream_writers,
            tuple(self.access.admin_allow),
            tuple(self.access.trusted_proxies),
        )
        return replace(fleet, room_balancing=self.routing.room_balancing)

    def metrics_port(self, worker: Worker) -> int | None:
        """The TCP port of a process's Prometheus listener (metrics cannot be served on a socket)."""
        if not self.metrics.enabled:
            return None
        return self.metrics.base_port + self.fleet.workers.index(worker)

    def resources_for(self, group: str) -> Resources:
        return self.resources.get(group) or self.resources.get("default") or Resources.model_validate({})


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"] if part != "[key]")
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = error["loc"][:-1]
        allowed = _fields_at(model, parent)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{location}: unknown key{hint}"
    if kind == "missing":
        return f"{location}: required key is missing"
    if kind == "enum":
        return f"{location}: unknown value {error['input']!r}; allowed: {error['ctx']['expected']}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if location and re.match(r"[a-z_]+: ", message):  # a validator naming the key inside a table
        return f"{location}.{message}"
    if kind in (
        "int_type",
        "bool_type",
        "string_type",
        "float_type",
        "list_type",
        "greater_than_equal",
        "less_than_equal",
        "greater_than",
        "less_than",
        "string_pattern_mismatch",
    ):
        message += f" (got {_as_toml(error['input'])})"
    return f"{location}: {message}" if location else message


def _as_toml(value: Any) -> str:
    """A scalar as it is written in TOML (true, 2.0, "8008"); anything else as Python shows it."""
    if isinstance(value, bool | int | float | str):
        return json.dumps(value)
    return repr(value)


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in path:
        field = current.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        current = field.annotation
    return list(current.model_fields)


def parse_fleet(text: str, source: str = "fleet.toml") -> FleetSpec:
    """Validate a fleet file's text. Raises FleetError naming the file and the first bad field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{source}: not valid TOML: {exc}") from None
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(dict(e), FleetSpec) for e in exc.errors()]
        raise FleetError(f"{source}: " + "; ".join(problems)) from None


def read_fleet(path: Path) -> FleetSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise FleetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_fleet(text, str(path))
