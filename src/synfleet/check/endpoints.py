"""The route table proven against the endpoints Synapse registers on each process.

:mod:`synfleet.check.servlets` lists, with Synapse's own classes, every ``(method, path regex)``
each process of a rendered deployment registers. Here each registration becomes concrete requests
(its regex written out, named parts filled with plausible IDs), each request is routed by the
fleet's plan, and the proof holds when:

- every process its upstream may pick registers it (nothing is sent where it cannot be served);
- a request that a stream rule of the table matches reaches a writer of that stream, as the
  rendered ``stream_writers`` say (main when the stream has none);
- a request sent to main that a worker of the fleet registers is main's by a rule that says why
  (``Rule.reason``), or because main writes the stream it touches, or because the fleet has no
  worker of the rule's role (reported, not a failure).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synfleet.check.child import json_lines
from synfleet.errors import UsageError
from synfleet.model.fleet import Role, Stream
from synfleet.model.synapse import process_name
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import ROUTES, Rule

MAIN = Role.MAIN.value

#: Values for the named parts of Synapse's path regexes (by group name, else by its ending).
ROOM_ID = "!abcdef:example.org"
ALIAS = "%23lobby:example.org"
SAMPLES: dict[str, tuple[str, ...]] = {
    "room_id": (ROOM_ID,),
    "old_room_id": (ROOM_ID,),
    "new_room_id": (ROOM_ID,),
    "room_identifier": (ROOM_ID, ALIAS),
    "room_alias": (ALIAS,),
    "user_id": ("@alice:example.org",),
    "event_id": ("$event",),
    "parent_id": ("$event",),
    "server_name": ("example.org",),
    "server": ("example.org",),
    "destination": ("example.org",),
    "media_id": ("abcdefMEDIA",),
    "txn_id": ("m1.1",),
    "transaction_id": ("m1.1",),
}
DEFAULT_SAMPLE = "x1"


def samples(group: str | None) -> tuple[str, ...]:
    if group is None:
        return (DEFAULT_SAMPLE,)
    if group in SAMPLES:
        return SAMPLES[group]
    for ending in ("user_id", "event_id", "room_id"):
        if group.endswith(ending):
            return SAMPLES[ending]
    return (DEFAULT_SAMPLE,)


class _Writer:
    """Writes out a path regex of the kind Synapse registers: literals, groups (named or not),
    alternatives, ``?`` (both ways), and character classes or ``.`` with ``*``/``+`` (filled
    with a sample for the innermost named group)."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.at = 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"{self.text!r} at {self.at}: {what}")

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def alternatives(self, group: str | None) -> list[str]:
        found: list[str] = []
        while True:
            found += self.sequence(group)
            if self.peek() != "|":
                return found
            self.at += 1

    def sequence(self, group: str | None) -> list[str]:
        results = [""]
        while self.peek() not in ("", "|", ")"):
            options = self.atom(group)
            if self.peek() == "?":
                self.at += 1
                options = ["", *options]
            elif self.peek() in ("*", "+"):
                raise self.error("repetition of a literal or group")
            results = [done + more for done, more in itertools.product(results, dict.fromkeys(options))]
        return results

    def atom(self, group: str | None) -> list[str]:
        char = self.peek()
        self.at += 1
        if char in ("^", "$"):
            return [""]
        if char == "(":
            name = group
            if self.text.startswith("?P<", self.at):
                end = self.text.index(">", self.at)
                name = self.text[self.at + 3 : end]
                self.at = end + 1
            elif self.text.startswith("?:", self.at):
                self.at += 2
            elif self.peek() == "?":
                raise self.error("unsupported group")
            inner = self.alternatives(name)
            if self.peek() != ")":
                raise self.error("unclosed group")
            self.at += 1
            return inner
        if char == "." and self.peek() not in ("*", "+"):
            return ["."]  # an unescaped dot in a literal part matches itself
        if char in ("[", ".") or (char == "\\" and self.peek() in "wdsWDS"):
            if char == "[":
                self.at = self.text.index("]", self.at + 1) + 1
            elif char == "\\":
                self.at += 1
            if self.peek() not in ("*", "+"):
                raise self.error("a character class without * or +")
            self.at += 1
            return list(samples(group))
        if char == "\\":
            char = self.peek()
            self.at += 1
        return [char]


@functools.cache  # every worker registers the same regexes
def write_out(pattern: str) -> tuple[str, ...]:
    """Concrete paths for a path regex: every alternative, with and without each optional part,
    named parts filled with :data:`SAMPLES`. Each one matches ``pattern`` (checked)."""
    writer = _Writer(pattern)
    paths = writer.alternatives(None)
    if writer.at != len(pattern):
        raise writer.error("unbalanced )")
    compiled = re.compile(pattern)
    for path in paths:
        if not compiled.match(path):
            raise ValueError(f"{path!r} written out from {pattern!r} does not match it")
    return tuple(paths)


@dataclass(frozen=True)
class Mounted:
    """A resource of a listener: its path, and its routes (None: it serves everything below)."""

    prefix: str
    routes: tuple[tuple[str, re.Pattern[str]], ...] | None


@dataclass(frozen=True)
class Registrations:
    """What one process registers, as Synapse's resource tree dispatches it."""

    process: str
    resources: tuple[Mounted, ...]

    @classmethod
    def from_json(cls, process: str, resources: Sequence[Mapping[str, Any]]) -> Registrations:
        mounted = []
        for resource in resources:
            routes = resource["routes"]
            compiled = None if routes is None else tuple((str(m), re.compile(p)) for m, p in routes)
            mounted.append(Mounted(str(resource["prefix"]), compiled))
        return cls(process, tuple(mounted))

    def resource_for(self, path: str) -> Mounted | None:
        """The resource a request for ``path`` reaches: the longest mounted prefix (by segments)."""
        below = [r for r in self.resources if path == r.prefix or path.startswith(r.prefix.rstrip("/") + "/")]
        return max(below, key=lambda r: len(r.prefix), default=None)

    def serves(self, method: str, path: str) -> bool:
        resource = self.resource_for(path)
        if resource is None:
            return False
        if resource.routes is None:
            return True
        method = "GET" if method == "HEAD" else method
        return any(m == method and pattern.match(path) for m, pattern in resource.routes)

    def endpoints(self) -> Iterator[Endpoint]:
        """Every request this process can answer, one per written-out path of each route."""
        for resource in self.resources:
            if resource.routes is None:
                yield Endpoint("GET", resource.prefix, resource.prefix)
                continue
            for method, pattern in resource.routes:
                for path in write_out(pattern.pattern):
                    if self.resource_for(path) is resource:  # else another resource takes it
                        yield Endpoint(method, path, pattern.pattern)


@dataclass(frozen=True, order=True)
class Endpoint:
    method: str
    path: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Proof:
    """The outcome for one fleet. ``unservable`` and ``wrong_writer`` and ``unlisted_on_main`` must
    be empty; ``kept_on_main`` are the table's reasoned exceptions, ``fallback`` the endpoints
    whose rule's role the fleet has no worker for."""

    endpoints: int = 0
    unservable: list[str] = field(default_factory=list)
    wrong_writer: list[str] = field(default_factory=list)
    unlisted_on_main: list[str] = field(default_factory=list)
    kept_on_main: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """What would fail in the deployment: requests sent where they cannot be served."""
        return [
            *(f"{e} cannot be served there" for e in self.unservable),
            *(f"{e} misses its stream's writer" for e in self.wrong_writer),
        ]

    @property
    def problems(self) -> list[str]:
        """The failures, and main serving what the table should send to a worker."""
        return [*self.failures, *(f"{e} goes to main though a worker serves it" for e in self.unlisted_on_main)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"{self.endpoints} endpoints: {len(self.unservable)} sent where they cannot be served, "
            f"{len(self.wrong_writer)} missing their stream's writer, {len(self.unlisted_on_main)} on main "
            f"though a worker serves them (+{len(self.kept_on_main)} kept on main by the table, "
            f"{len(self.fallback)} on main for want of a worker of their role)"
        )


def stream_rules(rules: Sequence[Rule] = ROUTES) -> list[tuple[Rule, re.Pattern[str]]]:
    return [(rule, re.compile(rule.map_regex)) for rule in rules if isinstance(rule.target, Stream)]


def prove(
    plan: RoutingPlan,
    registrations: Mapping[str, Registrations],
    writers: Mapping[str, Sequence[str]],
) -> Proof:
    """Route every endpoint any process registers through ``plan`` and check where it lands.
    ``writers`` are the rendered ``stream_writers`` (a stream not there is main's)."""
    endpoints = sorted({e for r in registrations.values() for e in r.endpoints()})
    workers = [w.name for w in plan.fleet.workers if w.serves_http and w.name != MAIN and w.name in registrations]
    streams = stream_rules(plan.active)
    proof = Proof(endpoints=len(endpoints))
    for endpoint in endpoints:
        decision = evaluate(plan, endpoint.method, endpoint.path)
        if decision.upstream is None or decision.rule is None:
            continue  # nginx answers itself (not proxied)
        chosen = plan.upstreams[decision.upstream].workers
        detail = f"{endpoint} -> {decision.rule} ({', '.join(chosen)})"
        if any(not registrations[w].serves(endpoint.method, endpoint.path) for w in chosen if w in registrations):
            proof.unservable.append(detail)
        line = f"{endpoint.method} {decision.uri}"
        for rule, regex in streams:
            allowed = tuple(writers.get(str(rule.target), ())) or (MAIN,)
            if regex.match(line) and not set(chosen) <= set(allowed):
                proof.wrong_writer.append(f"{detail}: {rule.target} is written by {', '.join(allowed)}")
        if chosen != (MAIN,) or not any(registrations[w].serves(endpoint.method, endpoint.path) for w in workers):
            continue
        rule = plan.rule(decision.rule)
        if isinstance(rule.target, Stream):
            continue  # main writes that stream
        if rule.target is Role.MAIN and rule.reason:
            proof.kept_on_main.append(f"{detail}: {rule.reason}")
        elif rule.target is not Role.MAIN:
            proof.fallback.append(detail)
        else:
            proof.unlisted_on_main.append(detail)
    return proof


def load_registrations(
    homeserver: Path, worker_files: Sequence[Path], extra: Sequence[Path] = ()
) -> dict[str, Registrations]:
    """Run :mod:`synfleet.check.servlets` on rendered (path-remapped) Synapse files, every process
    loading ``extra`` settings files last."""
    options = [f"--with={path}" for path in extra]
    lines, error = json_lines("synfleet.check.servlets", *options, str(homeserver), *map(str, worker_files))
    if not lines:
        raise UsageError(f"listing Synapse's endpoints failed: {error}")
    failed = [f"{line['process']}: {line['error']}" for line in lines if not line["ok"]]
    if failed:
        raise UsageError(f"listing Synapse's endpoints failed: {'; '.join(failed)}")
    return {line["process"]: Registrations.from_json(line["process"], line["resources"]) for line in lines}


def rendered_writers(homeserver: Path) -> dict[str, list[str]]:
    """The ``stream_writers`` of a rendered homeserver.yaml, main by its process name."""
    config = yaml.safe_load(homeserver.read_text()) or {}
    return {
        str(stream): [process_name(str(name)) for name in names]
        for stream, names in (config.get("stream_writers") or {}).items()
    }
