"""A fleet on several hosts: what each host's nginx opens to the others.

Synapse's processes keep their UNIX sockets on every host. The links between hosts are TCP, on
each host's private address, carried by that host's nginx: a process's inbound requests come from
the front nginx's host only, its replication requests from the fleet's hosts only (and carry the
replication secret). PostgreSQL and Redis, on their host, take TCP connections from the fleet's
hosts, with the generated passwords: PostgreSQL for Synapse's role only, to its database (its
superuser logs in on the socket only, on every target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from synfleet.layout import COMPOSE_HOST, Layout
from synfleet.metrics.targets import Target
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.storage import POSTGRES_SUPERUSER, Database
from synfleet.render.nginx import Gateway
from synfleet.routing.plan import RoutingPlan

AUTH_METHOD = "scram-sha-256"
#: Synapse's role: it logs in, with its password, and owns its database; no privilege beyond that.
SYNAPSE_ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
#: Synapse's database: UTF-8 with the C collation Synapse requires.
DATABASE_OPTIONS = "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"


@dataclass(frozen=True)
class SuperuserLogin:
    """Who logs in as PostgreSQL's superuser: on the socket only, never with a password, by peer
    authentication (the connecting process's OS account, as the server sees it). Without a
    ``map``, the account named like the role (the ``postgres`` account of the official image);
    with one, the accounts pg_ident.conf maps to ``roles`` (natively: the account that owns the
    cluster)."""

    roles: tuple[str, ...] = (POSTGRES_SUPERUSER,)
    map: str = ""


#: In a container: the image's own ``postgres`` account.
IMAGE_SUPERUSER = SuperuserLogin()


def hba(
    database: Database,
    hosts: tuple[str, ...] = (),
    superuser: SuperuserLogin = IMAGE_SUPERUSER,
    anywhere: bool = False,
) -> str:
    """Who may connect: PostgreSQL's superuser on the socket only (see :class:`SuperuserLogin`);
    Synapse's role to Synapse's database only, with its password, on the socket and from the
    fleet's ``hosts`` (with ``anywhere``, from any address: a pod's, which no one knows in advance)."""
    peer = f"peer map={superuser.map}" if superuser.map else "peer"
    lines = [
        "# Rendered by synfleet: PostgreSQL's superuser on the socket only, by peer authentication (no password);",
        "# Synapse's role to its database only, with its password (on the socket, and from the fleet's hosts).",
        f"local all {','.join(superuser.roles)} {peer}",
        f"local {database.name} {database.user} {AUTH_METHOD}",
    ]
    for address in hosts:
        prefix = 128 if ":" in address else 32
        lines.append(f"host {database.name} {database.user} {address}/{prefix} {AUTH_METHOD}")
    if anywhere:
        lines.append(f"host {database.name} {database.user} all {AUTH_METHOD}")
    return "\n".join(lines) + "\n"


def local_metrics(spec: FleetSpec, host: str) -> Callable[[Target], str | None]:
    """Where a host's Prometheus finds a process's metrics: 127.0.0.1 for the processes of ``host``
    (every process without [hosts]); other hosts' metrics listeners take no connections from here."""
    return lambda target: "127.0.0.1" if spec.fleet.host_of(target.process) == host else None


def runs_nginx(spec: FleetSpec, host: str) -> bool:
    """Whether ``host`` runs nginx: the front's host, and every host another host reaches."""
    return spec.fleet.front == host or bool(gateways(spec, host, COMPOSE_HOST))


def gateways(spec: FleetSpec, host: str, layout: Layout) -> tuple[Gateway, ...]:
    """The links into ``host``'s Synapse sockets: inbound HTTP for the workers the front nginx
    (on another host) routes to, replication for every process other processes call."""
    if not spec.hosts:
        return ()
    front = spec.fleet.front
    routed = {w for upstream in RoutingPlan(spec.fleet).upstreams.values() for w in upstream.workers}
    found = []
    for worker in spec.fleet.workers:
        if worker.host != host:
            continue
        if host != front and worker.name in routed:
            found.append(
                Gateway(
                    f"{worker.name} inbound",
                    worker.inbound_link,
                    (spec.fleet.host(front).address,),
                    layout.inbound_socket(worker.name),
                )
            )
        if worker.in_instance_map and len(spec.hosts) > 1:
            found.append(
                Gateway(
                    f"{worker.name} replication",
                    worker.replication_link,
                    spec.fleet.host_addresses,
                    layout.replication_socket(worker.name),
                )
            )
    return tuple(found)
