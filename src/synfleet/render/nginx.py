"""nginx back end: the seed's six files, with routing rendered from the route table."""

from __future__ import annotations

from dataclasses import dataclass

from synfleet.model.file import REQUEST_BODY_LIMIT
from synfleet.render.templating import render
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import MEDIA_UPLOAD_PREFIXES, ZONES

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


def render_nginx(plan: RoutingPlan, layout: NginxLayout, max_upload: int, keepalive: int = 32) -> dict[str, str]:
    """The contents of every nginx file, by file name. Request bodies are limited to what Synapse
    takes: ``max_upload`` bytes for media uploads, REQUEST_BODY_LIMIT for every other request."""
    context = {
        "body_limit": REQUEST_BODY_LIMIT,
        "max_upload": max_upload,
        "upload_prefixes": MEDIA_UPLOAD_PREFIXES,
        "layout": layout,
        "maps": plan.maps,
        "upstreams": list(plan.upstreams.values()),
        "keepalive": keepalive,
        "zones": ZONES,
        "admin_allow": plan.fleet.admin_allow,
        "trusted_proxies": plan.fleet.trusted_proxies,
    }
    return {name: render(f"nginx/{name}.j2", **context) for name in NGINX_FILES}
