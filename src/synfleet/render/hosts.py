"""A fleet on several hosts: what each host's nginx opens to the others.

Synapse's processes keep their UNIX sockets on every host. The links between hosts are TCP, on
each host's private address, carried by that host's nginx: a process's inbound requests come from
the front nginx's host only, its replication requests from the fleet's hosts only (and carry the
replication secret). PostgreSQL and Redis, on their host, take TCP connections from the fleet's
hosts, with the generated passwords.
"""

from __future__ import annotations

from collections.abc import Callable

from synfleet.layout import COMPOSE_HOST, Layout
from synfleet.metrics.targets import Target
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.storage import Database
from synfleet.render.nginx import Gateway
from synfleet.routing.plan import RoutingPlan

AUTH_METHOD = "scram-sha-256"


def hba(database: Database, hosts: tuple[str, ...] = ()) -> str:
    """Who may connect, always with the password: the socket; on a fleet of several hosts also its
    hosts' private addresses, to Synapse's database only."""
    lines = [
        "# Rendered by synfleet: password logins on the socket (and from the fleet's hosts) only.",
        f"local all all {AUTH_METHOD}",
    ]
    for address in hosts:
        prefix = 128 if ":" in address else 32
        lines.append(f"host {database.name} {database.user} {address}/{prefix} {AUTH_METHOD}")
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
