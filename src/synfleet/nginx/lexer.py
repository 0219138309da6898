"""nginx's config lexer: the value nginx reads from a token, and tokens that read back as a value.

nginx (``ngx_conf_read_token``) unescapes every token, quoted or not, before any directive sees it:
``\\"``, ``\\'`` and ``\\\\`` lose their backslash, ``\\t``, ``\\r`` and ``\\n`` become tab, CR and LF,
and any other backslash stays, with the character after it (so the regex ``\\.`` reaches PCRE as is).
"""

from __future__ import annotations

import re

#: What follows a backslash that nginx's lexer replaces: the pair becomes the value.
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
#: Control characters a written token spells as escapes, to stay on one line.
_SPELLED = {value: "\\" + letter for letter, value in _ESCAPES.items() if letter in "trn"}
#: Characters nginx would not read back as themselves in a bare token: separators, quotes, an
#: escape, braces (a block, or ``${name}``) and ``#`` (a comment where a token starts).
_NEEDS_QUOTES = re.compile(r"""[\s"'\\;{}#]""")


def unescape(token: str) -> str:
    """The value nginx reads from ``token`` (its text without surrounding quotes)."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m[1], m[0]), token)


def quote(value: str) -> str:
    """``value`` as one double-quoted nginx token: nginx reads back exactly ``value``.

    A backslash is doubled only where nginx would otherwise take it and the next character as an
    escape (or as escaping the closing quote), so a regex's ``\\.`` or ``\\d`` is written as is.
    """
    out = []
    for i, char in enumerate(value):
        after = value[i + 1 : i + 2]
        if char == "\\" and (after in _ESCAPES or after == ""):
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        else:
            out.append(_SPELLED.get(char, char))
    return '"' + "".join(out) + '"'


def token(value: str) -> str:
    """``value`` as an nginx token: bare where nginx reads it back unchanged, quoted otherwise."""
    return value if value and not _NEEDS_QUOTES.search(value) else quote(value)
