"""The audit's checks: an existing config's answers compared with synfleet's route table.

The config's answer for each request of a corpus (every endpoint family of the route table) is
compared with synfleet's route table for the same fleet. Findings are grouped: one per kind of
mistake and rule, with an example request and a count.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable

from synfleet.audit.findings import ERROR, WARNING, Finding
from synfleet.audit.repair import TestedConfig, add_proxy_pass
from synfleet.errors import BadRequest
from synfleet.model.fleet import WORKER_FORWARDED_STREAMS, Fleet, Role, Stream
from synfleet.nginx.binary.harness import Probe
from synfleet.nginx.config import NginxModel, Outcome
from synfleet.routing.corpus import legacy_room_id, syt_token, v12_room_id
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import DEFAULT_RULE, Rule

#: Streams whose endpoints fail (HTTP 500) on a process that does not write them.
STRICT_STREAMS = frozenset({Stream.TYPING, Stream.TO_DEVICE, Stream.RECEIPTS, Stream.PRESENCE})

PUBLIC_CLIENT = "203.0.113.50"
DOCKER_PROXY = "172.18.0.2"


def _acceptable(plan: RoutingPlan, rule: Rule) -> tuple[set[str], str] | None:
    """Workers that can serve a rule's requests and the severity of missing them; None: any worker."""
    target = rule.target
    fleet = plan.fleet
    if target in WORKER_FORWARDED_STREAMS:
        return None
    if isinstance(target, Stream):
        writers = {w.name for w in plan.serving(target)} or {fleet.main.name}
        return writers, ERROR if target in STRICT_STREAMS else WARNING
    if target is Role.MAIN:
        # Explicitly main-only endpoints fail elsewhere; endpoints the table does not know may not.
        return {fleet.main.name}, WARNING if rule is DEFAULT_RULE else ERROR
    if target is Role.MEDIA:
        return ({w.name for w in fleet.with_role(Role.MEDIA)} or {fleet.main.name}), ERROR
    return None


def _label(outcome: Outcome) -> str:
    if outcome.status is not None:
        return f"nginx answers {outcome.status}"
    if outcome.worker:
        return f"{outcome.upstream} -> {outcome.worker}"
    return f"{outcome.upstream} -> any of {', '.join(outcome.candidates)}"


def _room_probes(rng: random.Random, rooms: int) -> list[tuple[str, Probe]]:
    """Several endpoints for each of ``rooms`` rooms, legacy and v12, raw and percent-encoded."""
    templates = [
        ("GET", "/_matrix/client/v3/rooms/{room}/messages?dir=b"),
        ("PUT", "/_matrix/client/v3/rooms/{room}/send/m.room.message/t{n}"),
        ("GET", "/_matrix/client/v3/rooms/{room}/state/m.room.member/@someone:other.example"),
        ("GET", "/_matrix/client/v3/rooms/{room}/members"),
        ("GET", "/_matrix/client/v3/rooms/{room}/context/$event{n}"),
        ("GET", "/_matrix/federation/v1/make_join/{room}/@user:other.example"),
        ("GET", "/_matrix/federation/v1/state_ids/{room}?event_id=$e"),
    ]
    probes = []
    for n in range(rooms):
        room = v12_room_id(rng) if n % 2 else legacy_room_id(rng)
        for i, (method, template) in enumerate(templates):
            spelled = room.replace("!", "%21").replace(":", "%3A") if i % 2 else room
            probes.append((room, Probe(method, template.format(room=spelled, n=n))))
    return probes


class Auditor:
    """``fleet`` says which process may serve what; ``process_for`` names the process behind a server
    of the config (default: the server's own label is the process's name)."""

    def __init__(
        self, model: NginxModel, fleet: Fleet, process_for: Callable[[str], str | None] = lambda label: label
    ) -> None:
        self.model = model
        self.plan = RoutingPlan(fleet)
        self.process_for = process_for
        self.findings: list[Finding] = []
        self.used_upstreams: set[str] = set()
        self.unknown_servers: set[str] = set()  # servers no process of the fleet is known to be
        self.unproxied_seen = False  # some requests hit a location without proxy_pass

    def _name(self, label: str) -> str:
        name = self.process_for(label)
        if name is None:
            self.unknown_servers.add(label)
        return name or label

    def outcome(self, probe: Probe, remote: str = "127.0.0.1", ignore_access: bool = True) -> Outcome:
        result = self.model.evaluate(probe.method, probe.url, dict(probe.headers), remote, ignore_access=ignore_access)
        if result.upstream:
            self.used_upstreams.add(result.upstream)
        self.unproxied_seen |= result.unproxied
        if result.worker is not None:
            result.worker = self._name(result.worker)
        result.candidates = tuple(self._name(c) for c in result.candidates)
        return result

    def routing(self, probes: Iterable[Probe]) -> int:
        """Requests sent to a process that cannot serve them."""
        groups: dict[tuple[str, str], list[tuple[Probe, Outcome, set[str]]]] = defaultdict(list)
        severities: dict[tuple[str, str], str] = {}
        count = 0
        for probe in probes:
            try:
                ours = evaluate(self.plan, probe.method, probe.url, dict(probe.headers))
            except BadRequest:
                continue
            count += 1
            theirs = self.outcome(probe)
            if ours.rule is None:
                continue
            rule = self.plan.rule(ours.rule)
            acceptable = _acceptable(self.plan, rule)
            if acceptable is None or theirs.status is not None:
                continue
            allowed, severity = acceptable
            reached = {theirs.worker} if theirs.worker else set(theirs.candidates)
            if reached - allowed:
                key = (rule.name, theirs.upstream or "")
                groups[key].append((probe, theirs, allowed))
                severities[key] = severity
        for (rule_name, upstream), cases in groups.items():
            probe, theirs, allowed = cases[0]
            rule = self.plan.rule(rule_name)
            target = rule.target.value
            message = (
                f"requests for endpoints synfleet knows no worker for reach {upstream or 'another process'}; "
                f"Synapse serves them on {', '.join(sorted(allowed))}, and they may fail elsewhere"
                if rule is DEFAULT_RULE
                else f"{rule_name} requests reach a process that cannot serve them ({target} belongs on "
                f"{', '.join(sorted(allowed))})"
            )
            self.findings.append(
                Finding(
                    "wrong_process",
                    severities[(rule_name, upstream)],
                    message,
                    (
                        f"send requests no worker serves to {', '.join(sorted(allowed))}"
                        if rule is DEFAULT_RULE
                        else f"route {rule.name} requests to {', '.join(sorted(allowed))}, before broader locations"
                    ),
                    probe.method,
                    probe.url,
                    _label(theirs),
                    target,
                    len(cases),
                    theirs.location.label if theirs.location else "",
                )
            )
        return count

    def rooms(self, rng: random.Random) -> None:
        """One room, one worker; and rooms (v12 too) reach the room workers at all."""
        room_workers = {w.name for w in self.plan.fleet.with_role(Role.ROOMS)}
        by_room: dict[str, list[tuple[Probe, Outcome]]] = defaultdict(list)
        missed: dict[str, list[tuple[Probe, Outcome]]] = defaultdict(list)
        for room, probe in _room_probes(rng, 24):
            theirs = self.outcome(probe)
            if theirs.unproxied:  # already a missing_proxy_pass finding; nothing to say about routing
                continue
            form = "room version 12" if ":" not in room else "!opaque:server"
            by_room[room].append((probe, theirs))
            if room_workers and theirs.worker not in room_workers and not set(theirs.candidates) & room_workers:
                missed[form].append((probe, theirs))
        broken = []
        for cases in by_room.values():
            workers = {o.worker for _, o in cases}
            if len(workers) > 1 or (None in workers and any(len(o.candidates) > 1 for _, o in cases)):
                broken.append(cases)
        if broken:
            cases = broken[0]
            first, other = (
                cases[0],
                next(c for c in cases[1:] if c[1].worker != cases[0][1].worker or c[1].worker is None),
            )
            self.findings.append(
                Finding(
                    "affinity_broken",
                    ERROR,
                    f"requests for one room reach different workers ({len(broken)} of {len(by_room)} rooms): caches "
                    f"are split and /messages pagination can break; e.g. {other[0].method} {other[0].url} goes to "
                    f"{_label(other[1])}",
                    "hash room workers on the room ID's opaque part only, cut at ':' or '/', from the decoded $uri",
                    first[0].method,
                    first[0].url,
                    _label(first[1]),
                    "one worker per room",
                    len(broken),
                )
            )
        for form, cases in missed.items():
            probe, theirs = cases[0]
            self.findings.append(
                Finding(
                    "rooms_not_sharded",
                    ERROR if form == "room version 12" else WARNING,
                    f"requests naming {form} rooms never reach the room workers ({len(cases)} requests)",
                    "match room IDs as '!' (or %21) followed by anything up to '/', with or without ':server'",
                    probe.method,
                    probe.url,
                    _label(theirs),
                    "rooms",
                    len(cases),
                )
            )

    def sync(self, rng: random.Random) -> None:
        """Every sync request of one user reaches the same sync worker."""
        if not self.plan.fleet.with_role(Role.CLIENT_SYNC):
            return
        for n in range(12):
            token = syt_token(f"user{n}", rng)
            probes = [
                Probe("GET", "/_matrix/client/v3/sync?timeout=30000&since=s1", (("Authorization", f"Bearer {token}"),)),
                Probe("GET", f"/_matrix/client/v3/sync?since=s2&access_token={token}"),
                # Incremental syncs only: an initial-sync pool rightly takes the user's syncs without since.
                Probe("GET", "/_matrix/client/r0/sync?since=s3", (("Authorization", f"Bearer {token}"),)),
            ]
            outcomes = [self.outcome(p) for p in probes]
            workers = {o.worker for o in outcomes}
            if len(workers) > 1 or (None in workers and any(len(o.candidates) > 1 for o in outcomes)):
                self.findings.append(
                    Finding(
                        "sync_not_sticky",
                        WARNING,
                        "one user's /sync requests reach different sync workers (token in the header vs the query, "
                        "or no stable key): each worker rebuilds the user's sync state",
                        "hash sync workers on the user from the access token, in the header and in ?access_token=",
                        probes[1].method,
                        probes[1].url,
                        ", ".join(_label(o) for o in outcomes),
                        "one sync worker per user",
                    )
                )
                return

    def admin(self) -> None:
        """The admin API must not answer the public, directly or through a proxy on a Docker network."""
        probe = Probe("GET", "/_synapse/admin/v1/server_version")
        cases = [
            ("from a public address", self.outcome(probe, PUBLIC_CLIENT, ignore_access=False)),
            (
                f"through a reverse proxy on a Docker network ({DOCKER_PROXY}) for a public client",
                self.outcome(
                    Probe(probe.method, probe.url, (("X-Forwarded-For", PUBLIC_CLIENT),)), DOCKER_PROXY, False
                ),
            ),
        ]
        for how, theirs in cases:
            if theirs.status is None:
                self.findings.append(
                    Finding(
                        "admin_exposed",
                        ERROR,
                        f"/_synapse/admin answers {how}",
                        "allow only admin addresses; behind a proxy, set set_real_ip_from <proxy> and "
                        "real_ip_header X-Forwarded-For so the allow list sees the real client",
                        probe.method,
                        probe.url,
                        _label(theirs),
                        "403",
                        where=theirs.location.label if theirs.location else "",
                    )
                )

    def keepalive(self, probes: Iterable[Probe]) -> None:
        closing = None
        direct: dict[str, Probe] = {}  # proxy_pass straight to an address: nginx keeps no connection to it
        for probe in probes:
            theirs = self.outcome(probe)
            if theirs.status is None and theirs.upstream and theirs.upstream not in self.model.upstreams:
                direct.setdefault(theirs.upstream, probe)
            if (
                closing is None
                and theirs.upstream in self.model.upstreams
                and (theirs.connection_header not in ("", "keep-alive") or theirs.http_version != "1.1")
            ):
                closing = (probe, theirs)
        for address, probe in direct.items():
            self.findings.append(
                Finding(
                    "keepalive_disabled",
                    WARNING,
                    f"requests go to {address} by proxy_pass without an upstream block: nginx reuses no "
                    "connection to it, every request opens a new one",
                    f"define `upstream` for {address} with `keepalive 32;`, and proxy_pass to it",
                    probe.method,
                    probe.url,
                    address,
                )
            )
        if closing:
            probe, theirs = closing
            self.findings.append(
                Finding(
                    "keepalive_disabled",
                    WARNING,
                    f"requests reach Synapse with 'Connection: {theirs.connection_header}' over HTTP/"
                    f"{theirs.http_version}: upstream keepalive is never used, every request opens a new connection",
                    'proxy_http_version 1.1; and proxy_set_header Connection "" unless the request upgrades',
                    probe.method,
                    probe.url,
                    f"Connection: {theirs.connection_header}",
                    "no Connection header",
                )
            )
        for upstream in self.model.upstreams.values():
            if upstream.name in self.used_upstreams and upstream.keepalive == 0:
                self.findings.append(
                    Finding(
                        "keepalive_disabled",
                        WARNING,
                        f"upstream {upstream.name} keeps no idle connections",
                        "add `keepalive 32;` after the balancing method",
                        where=upstream.line,
                    )
                )

    def unused(self) -> None:
        if self.unproxied_seen:  # requests that never reach an upstream say nothing about its use
            return
        for upstream in self.model.upstreams.values():
            if upstream.name not in self.used_upstreams:
                self.findings.append(
                    Finding(
                        "unused_upstream",
                        WARNING,
                        f"upstream {upstream.name} ({', '.join(upstream.workers)}) receives no request: its workers "
                        "idle while another process does their work",
                        f"route the endpoints meant for {upstream.name} to it (check for a location sending them "
                        "elsewhere)",
                        where=upstream.line,
                    )
                )


def nginx_findings(tested: TestedConfig) -> list[Finding]:
    return [
        Finding(
            "nginx_error",
            ERROR,
            f"{problem.file}:{problem.line}: {problem.plain}",
            "fix that line" + ("; synfleet analysed a repaired copy" if problem.repaired else ""),
            where=f"{problem.file}:{problem.line}",
        )
        for problem in tested.problems
    ]


#: Directives that give a location content of its own, so that it needs no proxy_pass.
CONTENT = frozenset(
    {
        "proxy_pass",
        "return",
        "root",
        "alias",
        "try_files",
        "fastcgi_pass",
        "uwsgi_pass",
        "grpc_pass",
        "scgi_pass",
        "memcached_pass",
        "stub_status",
        "empty_gif",
        "rewrite",
    }
)


def missing_proxy_pass(model: NginxModel, tested: TestedConfig) -> list[Finding]:
    """Locations that never proxy_pass (nginx answers 404/405 itself); each is repaired where it can
    be, so that analysis goes on."""
    missing = []
    for location in model.locations:
        if any(d["directive"] in CONTENT for d in location.block):
            continue
        missing.append(location)
        add_proxy_pass(location, tested)
    if not missing:
        return []
    return [
        Finding(
            "missing_proxy_pass",
            ERROR,
            f"{len(missing)} locations never proxy_pass: nginx answers 404/405 itself instead of passing "
            f"requests to Synapse (e.g. {missing[0].label})",
            "add the proxy_pass (e.g. `proxy_pass $proxy_pass;` in the proxy.conf every location includes)",
            where=missing[0].label,
            count=len(missing),
        )
    ]
