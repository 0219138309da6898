"""nginx's config lexer, as far as synfleet writes tokens for it."""

from __future__ import annotations


def quote(value: str) -> str:
    """``value`` as one double-quoted nginx token.

    nginx's lexer turns ``\\"``, ``\\\\``, ``\\t``, ``\\r`` and ``\\n`` inside quotes into other characters;
    synfleet's regexes avoid them, so any that appear are a bug, not something to escape silently.
    """
    for sequence in ('\\"', "\\\\", "\\t", "\\r", "\\n", "\\'"):
        if sequence in value:
            raise ValueError(f"{value!r} contains {sequence!r}, which nginx would rewrite")
    return '"' + value.replace('"', '\\"') + '"'
