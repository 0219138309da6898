"""An existing nginx config, parsed with crossplane and evaluated with nginx's semantics.

Enough of nginx to say where a Synapse reverse-proxy config sends a request: server and location
selection (exact, longest prefix, ``^~``, regexes in order, ``internal``), ``map``, the rewrite
module (``set``, ``rewrite`` with its flags, ``return``, ``break``), ``allow``/``deny`` with the
realip module, ``proxy_pass`` to an upstream block or straight to an address, with variables, and
upstream balancing (``hash`` with and without ``consistent``, ``ip_hash``; others are not
deterministic).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane

from synfleet.errors import UsageError
from synfleet.layout import worker_of_server
from synfleet.nginx.lexer import token, unescape
from synfleet.nginx.realip import in_networks, real_client
from synfleet.nginx.upstream import Balancing, Upstream
from synfleet.nginx.uri import parse_method, parse_request_target
from synfleet.nginx.variables import Map, MapEntry, Variables, captures, interpolate

Directive = dict[str, Any]

#: Blocks of nginx's main context: a file with none of them is not a whole config.
MAIN_BLOCKS = frozenset({"events", "http", "stream", "mail"})
#: Blocks of the http context that make a file with no main block an http fragment.
HTTP_BLOCKS = frozenset({"server", "upstream", "map"})
#: How often a request's URI may change by rewrites before nginx answers 500
#: ("rewrite or internal redirection cycle"), NGX_HTTP_MAX_URI_CHANGES.
MAX_URI_CHANGES = 10


def is_fragment(conf: Path) -> bool:
    """``conf`` holds ``server``, ``upstream`` or ``map`` blocks at its top and no main-context block:
    a fragment meant to be included from ``http`` (as Synapse's docker worker mode writes one)."""
    payload = crossplane.parse(str(conf), single=True, catch_errors=True, check_ctx=False, check_args=False)
    names = {d["directive"] for d in payload["config"][0]["parsed"]}
    return not names & MAIN_BLOCKS and bool(names & HTTP_BLOCKS)


def parse_config(conf: Path) -> list[Directive]:
    """The directives of ``conf``, its includes inlined, with the values nginx reads.

    - Every name and argument is unescaped as nginx's lexer does (:func:`~synfleet.nginx.lexer.unescape`).
      crossplane strips a token's quotes and turns ``\\"`` into ``"`` inside ``"..."`` (``\\'`` inside
      ``'...'``) but leaves every other escape as written; unescaping its output again gives what nginx
      reads, since the escapes crossplane resolves are among nginx's.
    - Each directive's ``file`` is the file that holds it: includes (globs too) are inlined from
      crossplane's per-file output, since its combined output names a directive that follows an
      ``include`` in the same block after the included file. Relative include paths are relative to
      the directory of ``conf``, as nginx takes them relative to its main file's.
    - A fragment (:func:`is_fragment`) comes wrapped in ``http { }``, as when included from there.

    The first parse error is one message naming file and line.
    """
    fragment = is_fragment(conf)
    # A fragment's blocks are in their place only inside http, so crossplane checks no contexts.
    payload = crossplane.parse(str(conf), catch_errors=True, single=False, check_ctx=not fragment)
    if payload["errors"]:
        error = payload["errors"][0]
        raise UsageError(f"{error.get('file', conf)}:{error.get('line', '?')}: {error['error']}")
    top = _inline(payload["config"], 0, ())
    if fragment:
        return [{"directive": "http", "args": [], "file": str(conf), "line": 1, "block": top}]
    return top


def _inline(files: list[dict[str, Any]], index: int, including: tuple[int, ...]) -> list[Directive]:
    """File ``index`` of crossplane's per-file output with its includes inlined, names and
    arguments unescaped and each directive's file named; ``including`` are the files it is in."""
    if index in including:
        raise UsageError(f"{files[index]['file']}: includes itself")
    file = files[index]["file"]

    def resolve(block: list[Directive]) -> list[Directive]:
        resolved = []
        for directive in block:
            if "includes" in directive:
                for included in directive["includes"]:
                    resolved += _inline(files, included, (*including, index))
                continue
            directive["file"] = file
            directive["directive"] = unescape(directive["directive"])
            directive["args"] = [unescape(arg) for arg in directive["args"]]
            if "block" in directive:
                directive["block"] = resolve(directive["block"])
            resolved.append(directive)
        return resolved

    # A copy for every place a file is included: each is unescaped once and may be changed alone.
    return resolve(copy.deepcopy(files[index]["parsed"]))


def build_config(block: list[Directive], depth: int = 0) -> str:
    """Config text nginx reads as ``block`` (directives as :func:`parse_config` gives them), each
    value written with :func:`~synfleet.nginx.lexer.token`. Not crossplane.build: it writes Python's
    repr of a value with doubled backslashes made single again, so nginx reads a backslash before
    ``n``, ``t``, ``r``, ``\\`` or a quote in a value (a regex's ``\\n``, say) as an escape."""
    pad = "    " * depth
    lines = []
    for directive in block:
        args = [token(arg) for arg in directive["args"]]
        if directive["directive"] == "if":
            args = ["(", *args, ")"]
        head = pad + " ".join([token(directive["directive"]), *args])
        if "block" in directive:
            inner = build_config(directive["block"], depth + 1)
            lines.append(f"{head} {{\n{inner}\n{pad}}}" if inner else f"{head} {{}}")
        else:
            lines.append(head + ";")
    return "\n".join(lines)


def main_including(fragment: str) -> str:
    """A whole config that includes ``fragment`` (a path, relative to this config's directory or
    absolute) from ``http``: what nginx needs to test or run a fragment (:func:`is_fragment`)."""
    events = {"directive": "events", "args": [], "block": []}
    http = {"directive": "http", "args": [], "block": [{"directive": "include", "args": [fragment]}]}
    return build_config([events, http]) + "\n"


def where(directive: Directive) -> str:
    """``name:line`` of the file that holds ``directive``, for messages."""
    return f"{Path(directive.get('file', '?')).name}:{directive.get('line', '?')}"


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
    status: int | None  # answered by nginx itself (return, rewrite redirect, deny, no proxy_pass)
    upstream: str | None  # upstream block name, or the direct proxy_pass address
    worker: str | None  # the exact worker (for a direct proxy_pass, its address), when deterministic
    candidates: tuple[str, ...] = ()
    key: str = ""
    connection_header: str | None = None  # what the upstream gets as Connection
    http_version: str = "1.0"
    unproxied: bool = False  # the location has no proxy_pass
    answer: str = ""  # the text of `return CODE TEXT`, or where a redirect sends the client
    uri: str = ""  # $uri and $args after rewrites
    args: str = ""
    internal: bool = False  # a rewrite changed the URI, which lets it into `internal` locations


def proxy_target(url: str) -> tuple[str, str]:
    """(address, URI part) of a ``proxy_pass`` URL: the address is an upstream name, ``host:port`` or
    ``unix:/path`` (a socket path ends at the next colon): ``http://unix:/run/s.sock:/x`` ->
    (``unix:/run/s.sock``, ``/x``), ``http://localhost:8080`` -> (``localhost:8080``, ``""``)."""
    rest = re.sub(r"^[a-z]+://", "", url, flags=re.IGNORECASE)
    if rest.startswith("unix:"):
        path, _, uri = rest.removeprefix("unix:").partition(":")
        return f"unix:{path}", uri
    address, slash, uri = rest.partition("/")
    return address, slash + uri


def _find(block: list[Directive], name: str) -> list[Directive]:
    return [d for d in block if d["directive"] == name]


def socket_gateways(http: list[Directive]) -> dict[str, str]:
    """The servers of ``http`` that pass every request to one UNIX socket (``proxy_pass
    http://unix:/path:``, their only one): each of their ``listen`` addresses -> that socket's path."""
    found = {}
    for server in _find(http, "server"):
        block = server.get("block", [])
        passes = [d["args"][0] for d in walk(block) if d["directive"] == "proxy_pass"]
        if len(passes) == 1 and passes[0].startswith("http://unix:"):
            socket = proxy_target(passes[0])[0].removeprefix("unix:")
            found.update({d["args"][0]: socket for d in _find(block, "listen")})
    return found


def socket_relays(stream: list[Directive]) -> dict[str, str]:
    """The servers of a ``stream`` block that listen on a UNIX socket and pass each connection to
    one address: that socket's path -> the address:port."""
    found = {}
    for server in _find(stream, "server"):
        block = server.get("block", [])
        passes = [d["args"][0] for d in _find(block, "proxy_pass")]
        for listen in _find(block, "listen"):
            if listen["args"][0].startswith("unix:") and len(passes) == 1:
                found[listen["args"][0].removeprefix("unix:")] = passes[0]
    return found


def _rewritten(target: str, args: str) -> tuple[str, str]:
    """($uri, $args) after a rewrite to ``target``: arguments it names come first, then the
    request's own, unless ``target`` ends with ``?``."""
    uri, question, new_args = target.partition("?")
    if not question:
        return target, args
    if target.endswith("?"):
        return uri, new_args.removesuffix("?")
    return uri, "&".join(filter(None, (new_args, args)))


def _answer(outcome: Outcome, args: list[str], variables: Variables) -> None:
    """``return CODE [TEXT or URL]``, or ``return URL`` (a 302 redirect)."""
    if args[0].isdigit():
        outcome.status = int(args[0])
        outcome.answer = interpolate(args[1], variables.get) if len(args) > 1 else ""
    else:
        outcome.status = 302
        outcome.answer = interpolate(args[0], variables.get)


def _run_rewrites(block: list[Directive], variables: Variables, outcome: Outcome) -> bool:
    """nginx's rewrite module on ``block``: ``set``, ``rewrite``, ``return`` and ``break`` in order.
    ``return`` and redirects answer (``outcome.status``). True if a ``rewrite`` changed the URI
    with ``last`` or no flag (and no ``break`` followed): nginx then searches the locations again.
    ``rewrite ... break`` changes ``$uri`` and stays."""
    search_again = False
    for directive in block:
        name, args = directive["directive"], directive["args"]
        if name == "set" and len(args) == 2:
            variables.define(args[0].lstrip("$"), interpolate(args[1], variables.get))
        elif name == "return" and args:
            _answer(outcome, args, variables)
            return False
        elif name == "break":
            return False
        elif name == "rewrite" and len(args) >= 2:
            found = re.search(python_regex(args[0]), variables.get("uri"))
            if found is None:
                continue
            variables.capture(captures(found))
            flag = args[2] if len(args) > 2 else ""
            uri, query = _rewritten(interpolate(args[1], variables.get), variables.get("args"))
            if flag in ("redirect", "permanent") or args[1].startswith(("http://", "https://", "$scheme")):
                outcome.status = 301 if flag == "permanent" else 302
                outcome.answer = uri + (f"?{query}" if query else "")
                return False
            variables.rewrite(uri, query)
            outcome.internal = True
            if flag in ("break", "last"):
                return flag == "last"
            search_again = True
    return search_again


@dataclass
class NginxModel:
    """The parts of a parsed config that decide routing."""

    maps: list[Map]
    upstreams: dict[str, Upstream]
    http: list[Directive]
    server: list[Directive]
    locations: list[Location]
    stream: list[Directive] = field(default_factory=list)

    @classmethod
    def load(cls, conf: Path) -> NginxModel:
        top = parse_config(conf)
        http = next((d.get("block", []) for d in top if d["directive"] == "http"), None)
        if http is None:
            raise UsageError(f"{conf}: no http block")
        maps = []
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
                where(d),
                d.get("file", ""),
            )
            for d in _find(server, "location")
        ]
        stream: list[Directive] = next((d.get("block", []) for d in top if d["directive"] == "stream"), [])
        return cls(maps, upstreams, http, server, locations, stream)

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
        """What nginx does with a request; ``ignore_access`` skips allow/deny (to see routing).

        In nginx's phase order: the server's rewrite directives; location search; the location's
        rewrite directives (a URI changed by ``rewrite ... last``, or with no flag, searches again, at
        most :data:`MAX_URI_CHANGES` times, then 500); ``internal`` locations refuse requests no
        rewrite led there (404); allow/deny; then ``proxy_pass``. ``auth_request`` is taken to allow
        every request: the evaluator cannot know what the auth service answers, so a request is
        routed as one it lets through.
        """
        method = parse_method(method)
        uri, args = parse_request_target(url)
        client = self.client_address(remote_addr, headers)
        variables = Variables(method, uri, args, headers, client, self.maps)
        variables.define("request_uri", url if url.startswith("/") else uri)
        outcome = Outcome(None, None, None, None)
        _run_rewrites(self.server, variables, outcome)  # `last` here only ends the server's rewrites
        for _ in range(MAX_URI_CHANGES + 1):
            if outcome.status is not None:
                return outcome
            outcome.location, found = self.select_location(variables.get("uri"))
            if found:  # only a regex sets captures; a prefix match keeps those of a rewrite
                variables.capture(found)
            block = outcome.location.block if outcome.location else []
            if _find(block, "internal") and not outcome.internal:
                outcome.status = 404
                return outcome
            if not _run_rewrites(block, variables, outcome):
                break
        else:
            outcome.status = 500
        if outcome.status is not None:
            return outcome
        outcome.uri, outcome.args = variables.get("uri"), variables.get("args")
        if not ignore_access and not self.access_allowed(outcome.location, client):
            outcome.status = 403
            return outcome
        return self._proxy(outcome, method, variables, client)

    def _proxy(self, outcome: Outcome, method: str, variables: Variables, client: str) -> Outcome:
        """The proxy phase for the location found: where its ``proxy_pass`` sends the request (the
        upstream, the balancing key and the worker) and how (HTTP version, Connection header); 404
        or 405 without a ``proxy_pass``."""
        location = outcome.location
        proxy = _find(location.block, "proxy_pass") if location else []
        if not proxy:
            outcome.status = 404 if method in ("GET", "HEAD") else 405
            outcome.unproxied = True
            return outcome
        address, _ = proxy_target(interpolate(proxy[0]["args"][0], variables.get))
        version = self.inherited(location, "proxy_http_version")
        outcome.http_version = version[0]["args"][0] if version else "1.0"
        outcome.connection_header = "close"
        for header in self.inherited(location, "proxy_set_header"):
            if header["args"][0].lower() == "connection":
                outcome.connection_header = interpolate(header["args"][1], variables.get)
        outcome.upstream = address
        upstream = self.upstreams.get(address)
        if upstream is None:
            outcome.worker = address
            outcome.candidates = (address,)
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
        where(directive),
    )
