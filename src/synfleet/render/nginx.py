"""nginx back end: the seed's six files, with routing rendered from the route table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from synfleet.metrics.targets import NGINX_METRICS_PATH, NGINX_STATUS_PATH
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.synapse import REQUEST_BODY_LIMIT
from synfleet.render.templating import render
from synfleet.routing.plan import RoutingPlan, Variable
from synfleet.routing.table import MEDIA_UPLOAD_PREFIXES, ZONES

#: A line of the access log in nginx.conf's ``synfleet`` format: the request, its status, the route
#: and upstream nginx chose, and the address(es) it tried.
ACCESS_LINE = re.compile(
    r'"(?P<method>\S+) (?P<url>\S+) HTTP/[0-9.]+" (?P<status>\d+) \d+ '
    r'route=(?P<route>\S+) upstream=(?P<upstream>\S+) addr="(?P<addr>[^"]*)"'
)


def access_lines(log: Path) -> list[dict[str, str]]:
    """The fields of every line of an access log written in the ``synfleet`` format."""
    return [m.groupdict() for m in map(ACCESS_LINE.search, log.read_text().splitlines()) if m]


NGINX_FILES = ("nginx.conf", "maps.conf", "upstreams.conf", "locations.conf", "proxy.conf", "private.conf")


@dataclass(frozen=True)
class NginxTls:
    """The HTTPS server: its listen addresses, certificate files and the port redirects point to."""

    listen: tuple[str, ...]
    certificate: str
    key: str
    public_port: int
    http2_on: bool

    @property
    def redirect_port(self) -> str:
        return "" if self.public_port == 443 else f":{self.public_port}"


class Peer(StrEnum):
    """Who may use a link between hosts, by the certificate it presents (see :mod:`synfleet.pki.fleet`)."""

    FRONT = "front"  # the front's nginx, with the client's requests
    HOST = "host"  # a host of the fleet: its processes' replication requests


@dataclass(frozen=True)
class Gateway:
    """A link from another host of the fleet to a Synapse socket on this one: nginx listens on this
    host's private address with TLS, lets in only ``allow`` (the fleet's hosts) presenting a
    certificate of ``peer`` from the fleet's CA, and passes each request unchanged (its
    X-Forwarded-For is the front nginx's) to ``socket``. The front's inbound requests never ask for
    replication or metrics."""

    name: str  # the process and the link, e.g. "rooms1 inbound"
    listen: str  # address:port
    allow: tuple[str, ...]
    socket: str
    peer: Peer


@dataclass(frozen=True)
class Relay:
    """A link from this host to another: nginx listens on a UNIX socket here (``listen``) and
    carries each connection over TLS to ``target`` (address:port), whose certificate must name
    ``peer`` (its host), presenting this host's certificate, or the front's (``front``)."""

    name: str
    listen: str
    target: str
    peer: str
    front: bool = False


@dataclass(frozen=True)
class LinkTls:
    """The files of the links between hosts, as nginx reads them: the CAs they trust, this host's
    certificate and key, the front's (on the front's host), and the subject of every certificate
    each :class:`Peer` presents."""

    trust: str
    certificate: str
    key: str
    front_certificate: str
    front_key: str
    peers: tuple[tuple[str, Peer], ...]  # (subject as nginx writes it, peer)


@dataclass(frozen=True)
class NginxLayout:
    """Where nginx writes logs, and what it listens on. Only the layout differs between docker
    compose, the native run and tests; the routing (with the sockets) comes from the plan."""

    log_dir: str
    listen: tuple[str, ...]
    user: str | None = None  # the account of the worker processes, when the master runs as root
    pid_file: str | None = None
    temp_dir: str | None = None
    access_log_buffer: str = " buffer=64k flush=1s"
    tls: NginxTls | None = None
    status_listen: str | None = None  # nginx's own status (stub_status), when metrics are on
    #: The links from other hosts into this host's Synapse sockets (a fleet on several hosts), the
    #: relays from this host to theirs, their certificates, and where nginx's stream module is (the
    #: relays need it; "" when it is built in).
    gateways: tuple[Gateway, ...] = ()
    relays: tuple[Relay, ...] = ()
    links: LinkTls | None = None
    stream_module: str = ""
    #: The public front: the route table, its upstreams and the listeners clients reach. Without it
    #: (a host of a fleet on several hosts that does not run the front), only the gateways.
    front: bool = True


def first_link(layout: NginxLayout) -> str:
    """Where nginx on a host that is not the front shows it serves: its first link from another
    host (address:port), else its first relay to another (a UNIX socket); "" if it has neither."""
    if layout.gateways:
        return layout.gateways[0].listen
    return layout.relays[0].listen if layout.relays else ""


@dataclass(frozen=True)
class Site:
    """What nginx says and allows by itself, from the fleet file: the largest media upload, and the
    ``/.well-known/matrix/`` documents (JSON text by name, ``server`` and ``client``) when the server
    is delegated to another host or port."""

    max_upload: int
    well_known: dict[str, str] = field(default_factory=dict)


def site_of(spec: FleetSpec) -> Site:
    well_known = {}
    if spec.delegated:
        well_known = {
            "server": json.dumps({"m.server": spec.federation_address}),
            "client": json.dumps({"m.homeserver": {"base_url": spec.baseurl.rstrip("/")}}),
        }
    return Site(spec.media.max_upload_bytes, well_known)


def render_nginx(plan: RoutingPlan, layout: NginxLayout, site: Site, keepalive: int = 32) -> dict[str, str]:
    """The contents of every nginx file, by file name. Request bodies are limited to what Synapse
    takes: the site's upload size for media uploads, REQUEST_BODY_LIMIT for every other request."""
    context = {
        "body_limit": REQUEST_BODY_LIMIT,
        "max_upload": site.max_upload,
        "well_known": site.well_known,
        "upload_prefixes": MEDIA_UPLOAD_PREFIXES,
        "layout": layout,
        "maps": plan.maps,
        "upstreams": list(plan.upstreams.values()),
        "keepalive": keepalive,
        "zones": ZONES,
        "admin_allow": plan.fleet.admin_allow,
        "trusted_proxies": plan.fleet.trusted_proxies,
        "status_path": NGINX_STATUS_PATH,
        "metrics_path": NGINX_METRICS_PATH,
        "var": Variable,
    }
    return {name: render(f"nginx/{name}.j2", **context) for name in NGINX_FILES}
