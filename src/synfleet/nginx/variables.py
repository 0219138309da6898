"""nginx variables and the ``map`` directive, evaluated as nginx does.

- :class:`Map` is the ``map`` directive: exact strings first, then regexes in order, first match wins;
  named captures become variables for the value.
- :class:`Variables` resolves ``$name`` like nginx does for the variables routing uses: built-ins,
  ``$http_*``, ``$arg_*``, ``map`` results, ``set`` and regex captures; ``$uri`` and ``$args``
  change with a ``rewrite``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from synfleet.nginx.uri import arg

#: ``${name}``, a regex capture ``$1``..``$9`` (one digit: ``$12`` is ``$1`` then "2"), or ``$name``.
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z0-9_]+)\}|(?P<capture>[1-9])|(?P<name>[A-Za-z0-9_]+))")


def interpolate(template: str, lookup: Callable[[str], str]) -> str:
    """Expand ``$name``, ``${name}`` and captures ``$1``..``$9`` in ``template``."""
    return _VARIABLE.sub(lambda m: lookup(m.group("braced") or m.group("capture") or m.group("name")), template)


@dataclass(frozen=True)
class MapEntry:
    """One line of a ``map`` block: ``~regex`` (``~*`` ignores case) or an exact string, and the value
    it gives; ``match`` as nginx reads the key (a leading backslash lets an exact string start with ``~``)."""

    match: str
    value: str

    @property
    def is_regex(self) -> bool:
        return self.match.startswith("~")

    @property
    def exact(self) -> str:
        """The string an exact entry matches."""
        return self.match.removeprefix("\\")


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
            if pattern is None and entry.exact == subject:
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
    """nginx variables for one request: built-ins, ``$http_*``, ``$arg_*``, ``map`` results, ``set``
    and regex captures."""

    def __init__(
        self,
        method: str,
        uri: str,
        args: str,
        headers: Mapping[str, str],
        remote_addr: str,
        maps: Sequence[Map],
    ) -> None:
        self._headers = {name.lower().replace("-", "_"): value for name, value in headers.items()}
        self._builtin = {
            "request_method": method,
            "remote_addr": remote_addr,
            "host": self._headers.get("host", "localhost").split(":")[0].lower(),
            "scheme": "http",
        }
        self.rewrite(uri, args)
        self._maps = {m.variable.lstrip("$"): m for m in maps}
        self._cache: dict[str, str] = {}  # set, captures, and map values (nginx keeps one per request)

    def rewrite(self, uri: str, args: str) -> None:
        """A new ``$uri`` and ``$args``, as the request has after a ``rewrite``."""
        self._builtin.update(uri=uri, args=args, query_string=args, is_args="?" if args else "")

    def define(self, name: str, value: str) -> None:
        """Set a variable, as ``set $name value`` or a named regex capture does."""
        self._cache[name] = value

    def capture(self, values: Mapping[str, str]) -> None:
        """A regex match's captures (:func:`captures`): they replace the numbered ones of any earlier match."""
        for name in [name for name in self._cache if name.isdigit()]:
            del self._cache[name]
        self._cache.update(values)

    def get(self, name: str) -> str:
        if name in self._cache:
            return self._cache[name]
        if name in self._builtin:
            return self._builtin[name]
        if name.startswith("http_"):
            return self._headers.get(name[5:], "")
        if name.startswith("arg_"):
            return arg(self._builtin["args"], name[4:])
        if name.isdigit():  # a capture the last regex did not have
            return ""
        if name not in self._maps:
            raise KeyError(f"unknown nginx variable ${name}")
        value = self._cache[name] = self._maps[name].evaluate(self)
        return value
