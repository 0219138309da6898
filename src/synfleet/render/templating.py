"""The Jinja environment shared by every render target."""

from __future__ import annotations

from functools import cache

import jinja2


def nginx_quote(value: str) -> str:
    """``value`` as one double-quoted nginx token.

    nginx's lexer turns ``\\"``, ``\\\\``, ``\\t``, ``\\r`` and ``\\n`` inside quotes into other characters;
    synfleet's regexes avoid them, so any that appear are a bug, not something to escape silently.
    """
    for sequence in ('\\"', "\\\\", "\\t", "\\r", "\\n", "\\'"):
        if sequence in value:
            raise ValueError(f"{value!r} contains {sequence!r}, which nginx would rewrite")
    return '"' + value.replace('"', '\\"') + '"'


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("synfleet.render", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["nginx_quote"] = nginx_quote
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
