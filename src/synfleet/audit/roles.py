"""Which Synapse process each upstream server of an existing config is, and what it may serve.

From ``--fleet D`` or ``--synapse-config`` when given (:mod:`synfleet.audit.synapse_config`);
otherwise from the names in the config, and every guess is said:

- a worker's role from its server or upstream name (``rooms3``, ``synapse_inbound_client_sync1``,
  ``synapse_inbound_room_workers``, ...);
- an upstream named after a stream (``typing``, ``to_device``, ``receipts``, ...) is that stream's
  writer, and so are all its servers;
- main is the server named so, else the one the config sends most main-only requests to; the media
  worker likewise;
- another stream's writer is the worker the config sends most of its requests to; if that is main,
  or the config sends it none, main (Synapse's default).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from synfleet.errors import BadRequest
from synfleet.model.fleet import Fleet, Role, Stream, Worker
from synfleet.nginx.binary.harness import Probe
from synfleet.nginx.config import NginxModel
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import Target

# (pattern on a worker or upstream name, role); the first match wins.
NAME_ROLES: tuple[tuple[str, Role], ...] = (
    (r"(^|[_-])(main|master|homeserver)([_-]|\d*$|s$)|^synapse$", Role.MAIN),
    (r"room", Role.ROOMS),
    (r"sync", Role.CLIENT_SYNC),
    (r"federation|fed_?reader|inbound_fed", Role.FEDERATION_READER),
    (r"media", Role.MEDIA),
    (
        r"writer|(^|[_-])streams?([_-]|\d*$)|persister|typing|to_?device|receipt|presence|account_?data",
        Role.STREAM_WRITER,
    ),
    (r"reader|client|generic|worker", Role.CLIENT_READER),
)

#: How an upstream named after a stream spells it. "events" only in the plural or as a persister:
#: an event *creator* is a generic worker, not the events stream's writer.
STREAM_NAMES: dict[Stream, str] = {
    Stream.EVENTS: r"persist|(^|[_-])events($|[_-])",
    Stream.TYPING: r"typing",
    Stream.TO_DEVICE: r"to_?device",
    Stream.ACCOUNT_DATA: r"account_?data",
    Stream.RECEIPTS: r"receipt",
    Stream.PRESENCE: r"presence",
    Stream.PUSH_RULES: r"push_?rule",
    Stream.DEVICE_LISTS: r"device_?list",
    Stream.THREAD_SUBSCRIPTIONS: r"thread_?subscri",
    Stream.QUARANTINED_MEDIA_CHANGES: r"quarantine",
}


def role_from_name(name: str) -> Role | None:
    lowered = name.lower()
    return next((role for pattern, role in NAME_ROLES if re.search(pattern, lowered)), None)


def streams_from_name(name: str) -> frozenset[Stream]:
    lowered = name.lower()
    return frozenset(stream for stream, pattern in STREAM_NAMES.items() if re.search(pattern, lowered))


def infer_fleet(model: NginxModel, probes: Iterable[Probe], server_name: str = "localhost") -> tuple[Fleet, list[str]]:
    """A fleet whose workers are the config's upstream servers, with roles and streams from their
    names; and, in words, each assumption that took."""
    roles, streams, named_by = _named_roles(model)
    routed = _routed(model, probes)
    guesses = _guess_main_and_media(roles, routed)
    by_routing, routed_writers = _guess_stream_writers(roles, streams, named_by, routed)
    names = sorted(roles, key=lambda n: (roles[n] is not Role.MAIN, n))
    summary = "roles from names: " + "; ".join(
        f"{role.value}: {', '.join(n for n in names if roles[n] is role)}" for role in _present(roles)
    )
    assumptions = [summary, *guesses, *routed_writers, *_named_writers(names, streams, named_by)]
    if unnamed := sorted(s.value for s in Stream if s not in named_by and s not in by_routing):
        assumptions.append(
            f"{', '.join(unnamed)}: written by main (Synapse's default), nothing in the config says otherwise"
        )
    workers = tuple(Worker(name, roles[name], frozenset(streams[name])) for name in names)
    return Fleet(server_name, workers), assumptions


def _named_roles(
    model: NginxModel,
) -> tuple[dict[str, Role], dict[str, set[Stream]], dict[Stream, set[str]]]:
    """Each upstream server's role and streams from its own or its upstream's name; and, per
    stream, the upstreams named after it."""
    roles: dict[str, Role] = {}
    streams: dict[str, set[Stream]] = defaultdict(set)
    named_by: dict[Stream, set[str]] = defaultdict(set)
    for upstream in model.upstreams.values():
        group_role = role_from_name(upstream.name)
        named = streams_from_name(upstream.name)
        for stream in named:
            named_by[stream].add(upstream.name)
        for worker in upstream.workers:
            roles.setdefault(worker, role_from_name(worker) or group_role or Role.CLIENT_READER)
            streams[worker] |= named
    return roles, streams, named_by


def _guess_main_and_media(roles: dict[str, Role], routed: dict[Target, Counter[str]]) -> list[str]:
    """Main and the media worker, where no server is named so: the server the config sends most
    of their requests to (main: "main" when it sends none). Adds them to ``roles``."""
    assumptions = []
    if Role.MAIN not in roles.values():
        main, sent = routed[Role.MAIN].most_common(1)[0] if routed[Role.MAIN] else ("main", 0)
        roles[main] = Role.MAIN
        assumptions.append(
            f"main is {main}: no server is named so, and the config sends {sent} of "
            f"{routed[Role.MAIN].total()} main-only requests there"
        )
    media_targets = [(w, n) for w, n in routed[Role.MEDIA].most_common() if roles.get(w) is not Role.MAIN]
    if Role.MEDIA not in roles.values() and media_targets:
        media, sent = media_targets[0]
        roles[media] = Role.MEDIA
        assumptions.append(
            f"the media worker is {media}: no server is named so, and the config sends {sent} of "
            f"{routed[Role.MEDIA].total()} media requests there"
        )
    return assumptions


def _guess_stream_writers(
    roles: dict[str, Role],
    streams: dict[str, set[Stream]],
    named_by: dict[Stream, set[str]],
    routed: dict[Target, Counter[str]],
) -> tuple[set[Stream], list[str]]:
    """The streams no name speaks for whose writer is taken from routing, and what was assumed.

    Such a stream's writer is where the config sends most of its requests, if that is not main.
    Only requests sent elsewhere than that can then be called wrong. Adds the writers to
    ``roles`` and ``streams``.
    """
    by_routing: set[Stream] = set()
    assumptions = []
    for stream in [s for s in Stream if s not in named_by and routed[s]]:
        writer, sent = routed[stream].most_common(1)[0]
        if roles.get(writer) is Role.MAIN:
            continue
        roles.setdefault(writer, Role.STREAM_WRITER)
        streams[writer].add(stream)
        by_routing.add(stream)
        assumptions.append(
            f"{stream.value} is written by {writer}: the config sends {sent} of {routed[stream].total()} of its "
            "requests there (Synapse's default writer is main; give --synapse-config to check stream_writers)"
        )
    return by_routing, assumptions


def _named_writers(names: list[str], streams: dict[str, set[Stream]], named_by: dict[Stream, set[str]]) -> list[str]:
    """For each stream an upstream is named after: who writes it, and why."""
    return [
        f"{stream.value} is written by {', '.join(sorted(w for w in names if stream in streams[w]))}: the upstream "
        f"{', '.join(sorted(named_by[stream]))} is named after it"
        for stream in sorted(named_by)
    ]


def _routed(model: NginxModel, probes: Iterable[Probe]) -> dict[Target, Counter[str]]:
    """For each target of synfleet's route table, the servers the config sends its requests to."""
    table = RoutingPlan(Fleet("localhost", (Worker("main", Role.MAIN),)))
    routed: dict[Target, Counter[str]] = defaultdict(Counter)
    for probe in probes:
        try:
            decision = evaluate(table, probe.method, probe.url, dict(probe.headers))
            if decision.rule is None:
                continue
            outcome = model.evaluate(probe.method, probe.url, dict(probe.headers), "127.0.0.1", ignore_access=True)
        except BadRequest:
            continue
        for worker in (outcome.worker,) if outcome.worker else outcome.candidates:
            routed[table.rule(decision.rule).target][worker] += 1
    return routed


def _present(roles: dict[str, Role]) -> list[Role]:
    return [role for role in Role if role in roles.values()]
