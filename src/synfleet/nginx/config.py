"""An existing nginx config, parsed with crossplane and evaluated with nginx's semantics.

Enough of nginx to say where a Synapse reverse-proxy config sends a request: server and location
selection (exact, longest prefix, ``^~``, regexes in order), ``map``, ``set``, ``return``,
``allow``/``deny`` with the realip module, ``proxy_pass`` with variables, and upstream balancing
(``hash`` with and without ``consistent``, ``ip_hash``; others are not deterministic).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane

from synfleet.errors import UsageError
from synfleet.layout import worker_of_server
from synfleet.nginx.realip import in_networks, real_client
from synfleet.nginx.upstream import Balancing, Upstream
from synfleet.nginx.uri import parse_method, parse_request_target
from synfleet.nginx.variables import Map, MapEntry, Variables, captures, interpolate

Directive = dict[str, Any]


def parse_config(conf: Path) -> list[Directive]:
    """The directives of ``conf`` with its includes inlined (crossplane's combined form); the first
    parse error is one message naming file and line."""
    parsed = crossplane.parse(str(conf), combine=True, catch_errors=True, single=False)
    if parsed["errors"]:
        error = parsed["errors"][0]
        raise UsageError(f"{error.get('file', conf)}:{error.get('line', '?')}: {error['error']}")
    top: list[Directive] = parsed["config"][0]["parsed"]
    return top


def walk(block: list[Directive]) -> list[Directive]:
    """Every directive of ``block``, at every depth, in order."""
    found = []
    for directive in block:
        found.append(directive)
        found += walk(directive.get("block", []))
    return found


def python_regex(pattern: str) -> str:
    """PCRE's ``(?<name>`` named groups in Python's spelling."""
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)


@dataclass(frozen=True)
class Location:
    modifier: str  # "", "=", "^~", "~", "~*"
    pattern: str
    block: list[Directive]
    line: str
    file: str = ""

    def regex(self) -> re.Pattern[str]:
        return re.compile(python_regex(self.pattern), re.IGNORECASE if self.modifier == "~*" else 0)

    @property
    def label(self) -> str:
        return f"location {self.modifier + ' ' if self.modifier else ''}{self.pattern} ({self.line})"


@dataclass
class Outcome:
    """What nginx does with one request."""

    location: Location | None
    status: int | None  # answered by nginx itself (return, deny, no proxy_pass)
    upstream: str | None  # upstream block name, or the direct proxy_pass address
    worker: str | None  # the exact worker, when deterministic
    candidates: tuple[str, ...] = ()
    key: str = ""
    connection_header: str | None = None  # what the upstream gets as Connection
    http_version: str = "1.0"
    unproxied: bool = False  # the location has no proxy_pass


def _where(directive: Directive) -> str:
    return f"{Path(directive.get('file', '?')).name}:{directive.get('line', '?')}"


def _find(block: list[Directive], name: str) -> list[Directive]:
    return [d for d in block if d["directive"] == name]


@dataclass
class NginxModel:
    """The parts of a parsed config that decide routing."""

    maps: list[Map]
    upstreams: dict[str, Upstream]
    http: list[Directive]
    server: list[Directive]
    locations: list[Location]
    map_lines: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, conf: Path) -> NginxModel:
        top = parse_config(conf)
        http = next((d.get("block", []) for d in top if d["directive"] == "http"), None)
        if http is None:
            raise UsageError(f"{conf}: no http block")
        maps = []
        lines = {}
        for directive in _find(http, "map"):
            source, variable = directive["args"][:2]
            entries = []
            default = ""
            for entry in directive.get("block", []):
                key = entry["directive"]
                value = entry["args"][0] if entry["args"] else ""
                if key == "default":
                    default = value
                elif key in ("hostnames", "volatile", "include"):
                    continue
                else:
                    entries.append(MapEntry(("~" + python_regex(key[1:])) if key.startswith("~") else key, value))
            maps.append(Map(source, variable, tuple(entries), default))
            lines[variable] = _where(directive)
        upstreams = {u.name: u for u in map(_upstream, _find(http, "upstream"))}
        servers = _find(http, "server")
        if not servers:
            raise UsageError(f"{conf}: no server block")
        # The server that routes requests: the first with locations.
        server = next(
            (s.get("block", []) for s in servers if _find(s.get("block", []), "location")), servers[0]["block"]
        )
        locations = [
            Location(
                d["args"][0] if len(d["args"]) > 1 else "",
                d["args"][-1],
                d.get("block", []),
                _where(d),
                d.get("file", ""),
            )
            for d in _find(server, "location")
        ]
        return cls(maps, upstreams, http, server, locations, lines)

    def select_location(self, uri: str) -> tuple[Location | None, dict[str, str]]:
        """nginx's order: exact, longest prefix (stop at ^~), regexes in order, the longest prefix."""
        for location in self.locations:
            if location.modifier == "=" and location.pattern == uri:
                return location, {}
        prefixes = [loc for loc in self.locations if loc.modifier in ("", "^~") and uri.startswith(loc.pattern)]
        longest = max(prefixes, key=lambda loc: len(loc.pattern), default=None)
        if longest is not None and longest.modifier == "^~":
            return longest, {}
        for location in self.locations:
            if location.modifier in ("~", "~*"):
                found = location.regex().search(uri)
                if found:
                    return location, captures(found)
        return longest, {}

    def inherited(self, location: Location | None, *names: str) -> list[Directive]:
        """Directives that nginx inherits from an outer level only when the inner level has none."""
        for block in (location.block if location else [], self.server, self.http):
            found = [d for d in block if d["directive"] in names]
            if found:
                return found
        return []

    def access_allowed(self, location: Location | None, client: str) -> bool:
        """allow/deny in order, the first rule that matches ``client`` wins."""
        for rule in self.inherited(location, "allow", "deny"):
            network = rule["args"][0]
            try:
                matches = network == "all" or in_networks(client, (network,))
            except ValueError:  # not a network nginx would accept; nginx -t reports it
                continue
            if matches:
                return bool(rule["directive"] == "allow")
        return True

    def client_address(self, remote_addr: str, headers: Mapping[str, str]) -> str:
        trusted = tuple(d["args"][0] for d in self.http + self.server if d["directive"] == "set_real_ip_from")
        header = next((d["args"][0] for d in self.http + self.server if d["directive"] == "real_ip_header"), "")
        if not trusted or header.lower() != "x-forwarded-for":
            return remote_addr
        forwarded = next((v for k, v in headers.items() if k.lower() == "x-forwarded-for"), "")
        return real_client(remote_addr, forwarded, trusted)

    def evaluate(
        self, method: str, url: str, headers: Mapping[str, str], remote_addr: str, ignore_access: bool = False
    ) -> Outcome:
        """What nginx does with a request; ``ignore_access`` skips allow/deny (to see routing)."""
        method = parse_method(method)
        uri, args = parse_request_target(url)
        client = self.client_address(remote_addr, headers)
        location, captures = self.select_location(uri)
        variables = Variables(method, uri, args, headers, client, self.maps)
        variables.define("request_uri", url if url.startswith("/") else uri)
        for name, value in captures.items():
            variables.define(name, value)
        outcome = Outcome(location, None, None, None)
        for directive in location.block if location else []:
            name, args_ = directive["directive"], directive["args"]
            if name == "set" and len(args_) == 2:
                variables.define(args_[0].lstrip("$"), interpolate(args_[1], variables.get))
            elif name == "return":
                outcome.status = int(args_[0]) if args_[0].isdigit() else 302
                return outcome
        if not ignore_access and not self.access_allowed(location, client):
            outcome.status = 403
            return outcome
        proxy = _find(location.block, "proxy_pass") if location else []
        if not proxy:
            outcome.status = 404 if method in ("GET", "HEAD") else 405
            outcome.unproxied = True
            return outcome
        target = interpolate(proxy[0]["args"][0], variables.get)
        host = re.sub(r"^[a-z]+://", "", target).split("/", 1)[0]
        upstream = self.upstreams.get(host)
        version = self.inherited(location, "proxy_http_version")
        outcome.http_version = version[0]["args"][0] if version else "1.0"
        outcome.connection_header = "close"
        for header in self.inherited(location, "proxy_set_header"):
            if header["args"][0].lower() == "connection":
                outcome.connection_header = interpolate(header["args"][1], variables.get)
        outcome.upstream = host
        if upstream is None:
            outcome.worker = host
            outcome.candidates = (host,)
            return outcome
        outcome.key = interpolate(upstream.key, variables.get) if upstream.key else ""
        outcome.worker = upstream.worker_for(outcome.key, client)
        outcome.candidates = upstream.workers
        return outcome


def _upstream(directive: Directive) -> Upstream:
    servers, weights = [], []
    balancing, key, keepalive = Balancing.ROUND_ROBIN, "", 0
    for entry in directive.get("block", []):
        name, args = entry["directive"], entry["args"]
        if name == "server":
            servers.append(args[0])
            weight = next((int(a.split("=", 1)[1]) for a in args[1:] if a.startswith("weight=")), 1)
            weights.append(weight)
        elif name == "hash":
            key = args[0]
            balancing = Balancing.CONSISTENT_HASH if "consistent" in args[1:] else Balancing.HASH
        elif name in ("ip_hash", "least_conn", "random"):
            balancing = Balancing(name)
        elif name == "keepalive":
            keepalive = int(args[0])
    return Upstream(
        directive["args"][0],
        tuple(servers),
        tuple(worker_of_server(s) for s in servers),
        tuple(weights),
        balancing,
        key,
        keepalive,
        _where(directive),
    )
