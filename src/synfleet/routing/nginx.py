"""The parts of nginx's request processing that decide routing, reproduced in Python.

- :func:`parse_request_target` splits a request target into the normalised ``$uri`` (percent-decoded,
  slashes merged, dot segments resolved, as ``ngx_http_parse_complex_uri`` does) and raw ``$args``.
- :func:`arg` is ``$arg_<name>``: the first ``name=`` in the raw query, name matched case-insensitively.
- :class:`Map` is the ``map`` directive: exact strings first, then regexes in order, first match wins;
  named captures become variables for the value.
- :class:`Variables` resolves ``$name`` like nginx does for the variables routing uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from synfleet.errors import BadRequest

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z0-9_]+)\}|(?P<name>[A-Za-z0-9_]+))")
_METHOD = re.compile(r"[A-Z_-]+")
_HEX = "0123456789abcdefABCDEF"


def parse_method(method: str) -> str:
    """The method as nginx sees it; nginx accepts only upper-case letters, ``_`` and ``-``."""
    if not _METHOD.fullmatch(method):
        raise BadRequest(f"invalid HTTP method {method!r}: use upper-case letters, e.g. GET or PUT")
    return method


def parse_request_target(target: str) -> tuple[str, str]:
    """``(uri, args)`` for a request target (``/path?query`` or ``http(s)://host/path?query``)."""
    if re.match(r"https?://", target, re.IGNORECASE):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    if not target.startswith("/"):
        raise BadRequest(f"invalid URL {target!r}: it must start with / or http(s)://")
    bad = next((c for c in target if ord(c) <= 0x20 or ord(c) >= 0x7F or c == "#"), None)
    if bad is not None:
        raise BadRequest(f"invalid URL {target!r}: character {bad!r} must be percent-encoded")
    path, _, args = target.partition("?")
    return normalise_path(path, target), args


def normalise_path(path: str, shown: str | None = None) -> str:
    """nginx's ``$uri`` for a raw path: decode %XX, merge slashes, resolve ``.`` and ``..``.

    A decoded ``%``, ``?`` or ``#`` is taken literally; any other decoded character is processed as
    if it had been sent raw (so ``%2F`` separates segments and ``%2E%2E`` climbs up).
    """
    shown = shown or path
    out: list[str] = []
    state = "slash"  # position just after a '/', as the path always starts with one
    i = 0
    chars: list[tuple[str, bool]] = []  # (character, literal) after percent-decoding
    while i < len(path):
        c = path[i]
        if c == "%":
            pair = path[i + 1 : i + 3]
            if len(pair) < 2 or any(h not in _HEX for h in pair):
                raise BadRequest(f"invalid URL {shown!r}: bad percent-escape {path[i : i + 3]!r}")
            decoded = chr(int(pair, 16))
            if decoded == "\0":
                raise BadRequest(f"invalid URL {shown!r}: %00 is not allowed")
            chars.append((decoded, decoded in "%?#"))
            i += 3
        else:
            chars.append((c, False))
            i += 1
    out.append(chars[0][0] if chars else "/")
    for c, literal in chars[1:]:
        if literal:
            out.append(c)
            state = "usual"
        elif c == "/":
            if state == "slash":
                continue  # merge_slashes
            if state in ("dot", "dotdot"):
                _drop_dot_segment(out, state, shown)
            else:
                out.append("/")
            state = "slash"
        elif c == "." and state == "slash":
            out.append(".")
            state = "dot"
        elif c == "." and state == "dot":
            out.append(".")
            state = "dotdot"
        else:
            out.append(c)
            state = "usual"
    if state in ("dot", "dotdot"):
        _drop_dot_segment(out, state, shown)
    return "".join(out)


def _drop_dot_segment(out: list[str], state: str, shown: str) -> None:
    """Remove a trailing ``.`` or ``..`` segment (and for ``..`` the segment before it)."""
    if state == "dot":
        out.pop()  # "/." -> "/"
        return
    del out[-3:]  # "/.." -> "" (the slash before ".." is removed too)
    while out and out[-1] != "/":
        out.pop()
    if not out:
        raise BadRequest(f"invalid URL {shown!r}: '..' climbs above the root")


def arg(args: str, name: str) -> str:
    """``$arg_<name>``: value of the first ``name=`` parameter, name compared case-insensitively."""
    lowered = args.lower()
    needle = name.lower() + "="
    start = 0
    while True:
        found = lowered.find(needle, start)
        if found < 0:
            return ""
        if found == 0 or args[found - 1] == "&":
            end = args.find("&", found)
            return args[found + len(needle) : end if end >= 0 else len(args)]
        start = found + 1


def interpolate(template: str, lookup: Callable[[str], str]) -> str:
    """Expand ``$name`` and ``${name}`` in ``template``."""
    return _VARIABLE.sub(lambda m: lookup(m.group("braced") or m.group("name")), template)


@dataclass(frozen=True)
class MapEntry:
    """One line of a ``map`` block: ``~regex`` or an exact string, and the value it gives."""

    match: str
    value: str

    @property
    def is_regex(self) -> bool:
        return self.match.startswith("~")


@dataclass(frozen=True)
class Map:
    """``map <source> $<variable> { ... }`` with nginx's matching order."""

    source: str
    variable: str
    entries: tuple[MapEntry, ...]
    default: str = ""
    comment: str = ""
    _compiled: tuple[tuple[re.Pattern[str] | None, MapEntry], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled: list[tuple[re.Pattern[str] | None, MapEntry]] = []
        for entry in self.entries:
            if entry.is_regex:
                flags = re.IGNORECASE if entry.match.startswith("~*") else 0
                pattern = entry.match[2:] if entry.match.startswith("~*") else entry.match[1:]
                compiled.append((re.compile(pattern, flags), entry))
            else:
                compiled.append((None, entry))
        object.__setattr__(self, "_compiled", tuple(compiled))

    def evaluate(self, variables: Variables) -> str:
        subject = interpolate(self.source, variables.get)
        for pattern, entry in self._compiled:
            if pattern is None and entry.match == subject:
                return interpolate(entry.value, variables.get)
        for pattern, entry in self._compiled:
            if pattern is None:
                continue
            found = pattern.search(subject)
            if found:
                return interpolate(entry.value, _with_captures(found, variables))
        return interpolate(self.default, variables.get)


def captures(found: re.Match[str]) -> dict[str, str]:
    """A regex match's captures as nginx variables: $0, $1.., and named ones."""
    values = {k: v or "" for k, v in found.groupdict().items()}
    values.update({str(i): g or "" for i, g in enumerate(found.groups(), 1)})
    values["0"] = found.group(0)
    return values


def _with_captures(found: re.Match[str], variables: Variables) -> Callable[[str], str]:
    """Variable lookup where a regex's captures ($1, $name) shadow request variables."""
    values = captures(found)
    return lambda name: values[name] if name in values else variables.get(name)


class Variables:
    """nginx variables for one request: built-ins, ``$http_*``, ``$arg_*`` and ``map`` results."""

    def __init__(
        self,
        method: str,
        uri: str,
        args: str,
        headers: Mapping[str, str],
        remote_addr: str,
        maps: Sequence[Map],
    ) -> None:
        self._builtin = {
            "request_method": method,
            "uri": uri,
            "args": args,
            "remote_addr": remote_addr,
            "query_string": args,
        }
        self._headers = {name.lower().replace("-", "_"): value for name, value in headers.items()}
        self._builtin["host"] = self._headers.get("host", "localhost").split(":")[0].lower()
        self._builtin["scheme"] = "http"
        self._maps = {m.variable.lstrip("$"): m for m in maps}
        self._cache: dict[str, str] = {}

    def define(self, name: str, value: str) -> None:
        """Set a variable, as ``set $name value`` or a regex capture does."""
        self._cache[name] = value

    def get(self, name: str) -> str:
        if name in self._cache:
            return self._cache[name]
        if name in self._builtin:
            value = self._builtin[name]
        elif name.startswith("http_"):
            value = self._headers.get(name[5:], "")
        elif name.startswith("arg_"):
            value = arg(self._builtin["args"], name[4:])
        elif name in self._maps:
            value = self._maps[name].evaluate(self)
        else:
            raise KeyError(f"unknown nginx variable ${name}")
        self._cache[name] = value
        return value
