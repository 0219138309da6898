"""A fleet on several hosts: what each host's nginx opens to the others.

Synapse's processes keep their UNIX sockets on every host. The links between hosts are TCP, on
each host's private address, carried by that host's nginx: a process's inbound requests come from
the front nginx's host only, its replication requests from the fleet's hosts only (and carry the
replication secret). PostgreSQL and Redis, on their host, take TCP connections from the fleet's
hosts, with the generated passwords.
"""

from __future__ import annotations

from synfleet.layout import Layout
from synfleet.model.file import FleetSpec
from synfleet.model.fleet import Service
from synfleet.render.nginx import Gateway
from synfleet.routing.plan import RoutingPlan


def fleet_addresses(spec: FleetSpec) -> tuple[str, ...]:
    return tuple(host.address for host in spec.hosts.values())


def gateways(spec: FleetSpec, host: str, layout: Layout) -> tuple[Gateway, ...]:
    """The links into ``host``'s Synapse sockets: inbound HTTP for the workers the front nginx
    (on another host) routes to, replication for every process other processes call."""
    if not spec.hosts:
        return ()
    front = spec.host_of(Service.NGINX)
    routed = {w for upstream in RoutingPlan(spec.fleet).upstreams.values() for w in upstream.workers}
    found = []
    for worker in spec.fleet.workers:
        if spec.host_of(worker.name) != host:
            continue
        if host != front and worker.name in routed:
            found.append(
                Gateway(
                    f"{worker.name} inbound",
                    spec.address_of(host, spec.inbound_port(worker.name)),
                    (spec.hosts[front].address,),
                    layout.inbound_socket(worker.name),
                )
            )
        if worker.in_instance_map and len(spec.hosts) > 1:
            found.append(
                Gateway(
                    f"{worker.name} replication",
                    spec.address_of(host, spec.replication_port(worker.name)),
                    fleet_addresses(spec),
                    layout.replication_socket(worker.name),
                )
            )
    return tuple(found)
