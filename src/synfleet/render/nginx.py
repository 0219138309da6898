"""nginx back end: the seed's six files, with routing rendered from the route table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from synfleet.metrics.targets import NGINX_STATUS_PATH
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


@dataclass(frozen=True)
class Gateway:
    """A link from another host of the fleet to a Synapse socket on this one: nginx listens on this
    host's private address, lets in only ``allow`` (the fleet's hosts), and passes each request
    unchanged (its X-Forwarded-For is the front nginx's) to ``socket``."""

    name: str  # the process and the link, e.g. "rooms1 inbound"
    listen: str  # address:port
    allow: tuple[str, ...]
    socket: str


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
    #: The links from other hosts into this host's Synapse sockets (a fleet on several hosts).
    gateways: tuple[Gateway, ...] = ()
    #: The public front: the route table, its upstreams and the listeners clients reach. Without it
    #: (a host of a fleet on several hosts that does not run the front), only the gateways.
    front: bool = True


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
        "var": Variable,
    }
    return {name: render(f"nginx/{name}.j2", **context) for name in NGINX_FILES}
