"""A fleet on several hosts: its hosts, where each process runs (placement), and the ports of the
links between hosts."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pydantic import field_validator

from synfleet.model.fleet import Role, Service
from synfleet.model.placement import assign_hosts
from synfleet.model.ports import POSTGRES_PORT
from synfleet.model.schema.values import NAME_PATTERN, Port, Section

if TYPE_CHECKING:
    from synfleet.model.schema.fleet import FleetSpec


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


def check_hosts(value: dict[str, Host]) -> dict[str, Host]:
    """Host names are plain names, and no two hosts share an address."""
    seen: dict[str, str] = {}
    for name, host in value.items():
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name}: a host name may only use a-z, 0-9 and _")
        if host.address in seen:
            raise ValueError(f"{name}: address {host.address} is also host {seen[host.address]}'s")
        seen[host.address] = name
    return value


def ports_taken(spec: FleetSpec, count: int) -> dict[str, range]:
    """The ports the fleet's other listeners take on a host, by the key that sets them."""

    def one(port: int) -> range:
        return range(port, port + 1)

    taken = {"listen.http_port": one(spec.listen.http_port)}
    if spec.tls.enabled:
        taken["listen.https_port"] = one(spec.listen.https_port)
    if spec.database.local:
        taken["database.port"] = one(spec.database.port)
    if spec.redis.local:
        taken["redis.port"] = one(spec.redis.port)
    if spec.metrics.enabled:
        taken["metrics.base_port"] = range(spec.metrics.base_port, spec.metrics.base_port + count)
        taken["metrics.nginx_status_port"] = one(spec.metrics.nginx_status_port)
    if spec.turn.enabled:
        taken["turn.port"] = one(spec.turn.port)
        taken["turn.relay_min_port"] = spec.turn.relay_ports
    return taken


def check_transport_ports(spec: FleetSpec, count: int) -> None:
    """Each of ``count`` processes' inbound and replication ports fit below 65536, do not overlap,
    and (on several hosts) take none of the other listeners' ports."""
    inbound, replication = spec.transport.inbound_base_port, spec.transport.replication_base_port
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
    if not spec.hosts:
        return
    taken = ports_taken(spec, count)
    for kind, first in (("inbound", inbound), ("replication", replication)):
        for key, ports in taken.items():
            if first < ports.stop and ports.start < first + count:
                raise ValueError(
                    f"transport.{kind}_base_port: the {kind} ports ({first}-{first + count - 1}) include "
                    f"{key}'s ({ports.start}); move one of them"
                )


def _check_placement_keys(spec: FleetSpec) -> None:
    """Each key of [placement] is ``default``, a group or a process, and names known hosts."""
    fleet = spec.fleet
    names = {w.name for w in fleet.workers}
    groups = {*(w.role.value for w in fleet.workers), *(s.value for s in Service)}
    for key, value in spec.placement.items():
        hosts = [value] if isinstance(value, str) else value
        where = f"placement.{key}"
        if key != "default" and key not in groups and key not in names:
            known = ", ".join(["default", *sorted(groups), *sorted(names - groups)])
            raise ValueError(f"{where}: no group or process of that name in this fleet; known: {known}")
        if not hosts:
            raise ValueError(f"{where}: names no host")
        for host in hosts:
            if host not in spec.hosts:
                raise ValueError(f"{where}: no host {host!r}; hosts: {', '.join(spec.hosts)}")
        if len(hosts) > 1 and (key == "default" or key in names or key in tuple(Service)):
            raise ValueError(f"{where}: one process runs on one host; a list spreads a group of workers")


def check_placement(spec: FleetSpec) -> None:
    """[placement] places known processes on known hosts, and what must share a host does."""
    if spec.placement and not spec.hosts:
        raise ValueError("placement: places processes on hosts, but there is no [hosts.<name>] with an address")
    if not spec.hosts:
        return
    _check_placement_keys(spec)
    if "default" not in spec.placement and len(spec.hosts) > 1:
        raise ValueError(
            "placement.default: required with more than one host (where nginx, main, PostgreSQL and Redis run "
            "unless placed)"
        )
    for service, section in ((Service.POSTGRES, spec.database), (Service.REDIS, spec.redis)):
        if service.value in spec.placement and not section.local:
            raise ValueError(f"placement.{service.value}: the fleet uses an external one ({section.host})")
    if Service.TURN in spec.placement and not spec.turn.enabled:
        raise ValueError("placement.turn: places coturn, but [turn] is not enabled (turn.enabled = true)")
    if spec.database.local and spec.database.port != POSTGRES_PORT:
        raise ValueError(
            f"database.port: the fleet's own PostgreSQL listens on {POSTGRES_PORT} on its host; "
            "leave port out, or give database.host for an external one"
        )
    where = assign_hosts(spec.fleet, tuple(spec.hosts), spec.placement)
    media = {where[w.name] for w in spec.fleet.with_role(Role.MEDIA)}
    if len(media) > 1 and not spec.media.in_bucket:
        raise ValueError(
            f"placement: media workers on hosts {', '.join(sorted(media))}; they must share one media store, "
            'so place them on one host (or keep media in a bucket: media.store = "s3")'
        )
