"""Which host each process of a fleet on several hosts runs on, from the fleet file's [placement]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from synfleet.model.fleet import Fleet, Service


def _choices(value: str | list[str], fallback: str) -> list[str]:
    """The hosts a placement value names (an empty list, refused by validation, names the fallback)."""
    return ([value] if isinstance(value, str) else value) or [fallback]


def assign_hosts(fleet: Fleet, hosts: Sequence[str], placement: Mapping[str, str | list[str]]) -> dict[str, str]:
    """The host of every Synapse process and service, by name; empty without hosts.

    A process placed by name runs there; a worker of a placed group too, a list spreading the
    group's workers in turn (``rooms = ["b", "c"]``: rooms1 on b, rooms2 on c, rooms3 on b);
    everything else on the ``default`` host (the first host when there is only one)."""
    if not hosts:
        return {}
    fallback = _choices(placement.get("default", hosts[0]), hosts[0])[0]
    where = {service.value: _choices(placement.get(service.value, fallback), fallback)[0] for service in Service}
    for worker in fleet.workers:
        named = worker.name in placement
        choices = _choices(placement[worker.name] if named else placement.get(worker.role.value, fallback), fallback)
        turn = 0 if named else fleet.with_role(worker.role).index(worker)
        where[worker.name] = choices[turn % len(choices)]
    return where
