"""A request as nginx sees it: the method, the normalised ``$uri`` and the raw ``$args``.

- :func:`parse_request_target` splits a request target into the normalised ``$uri`` (percent-decoded,
  slashes merged, dot segments resolved, as ``ngx_http_parse_complex_uri`` does) and raw ``$args``.
- :func:`arg` is ``$arg_<name>``: the first ``name=`` in the raw query, name matched case-insensitively.
"""

from __future__ import annotations

import re

from synfleet.errors import BadRequest

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
