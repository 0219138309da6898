"""The one step from the validated fleet file to the model: every process with its host, that
host's private address and its ports, and the services the fleet runs itself."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from synfleet.model.fleet import Fleet, Host, Service, ServiceProcess, build_fleet
from synfleet.model.placement import assign_hosts

if TYPE_CHECKING:
    from synfleet.model.schema.fleet import FleetSpec


def resolve(spec: FleetSpec) -> Fleet:
    """The fleet ``spec`` describes. A process's ports are its transport and metrics bases plus
    its index in the fleet (main is 0)."""
    fleet = build_fleet(
        spec.server_name,
        spec.workers.counts(),
        spec.stream_writers,
        tuple(spec.access.admin_allow),
        tuple(spec.access.trusted_proxies),
    )
    where = assign_hosts(fleet, tuple(spec.hosts), spec.placement)
    addresses = {name: host.address for name, host in spec.hosts.items()}

    def address(name: str) -> str:
        return addresses.get(where.get(name, ""), "")

    workers = tuple(
        replace(
            worker,
            host=where.get(worker.name, ""),
            address=address(worker.name),
            inbound_port=spec.transport.inbound_base_port + index,
            replication_port=spec.transport.replication_base_port + index,
            metrics_port=spec.metrics.base_port + index if spec.metrics.enabled else None,
        )
        for index, worker in enumerate(fleet.workers)
    )
    own = {
        Service.POSTGRES: spec.database.local,
        Service.REDIS: spec.redis.local,
        Service.NGINX: True,
        Service.TURN: spec.turn.enabled,
    }
    return replace(
        fleet,
        workers=workers,
        room_balancing=spec.routing.room_balancing,
        hosts=tuple(Host(name, address) for name, address in addresses.items()),
        services=tuple(
            ServiceProcess(service, where.get(service.value, ""), address(service.value))
            for service in Service
            if own[service]
        ),
    )
