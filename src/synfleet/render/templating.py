"""The Jinja environment shared by every render target."""

from __future__ import annotations

import json
from functools import cache

import jinja2

from synfleet.nginx.lexer import quote


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
    env.filters["nginx_quote"] = quote
    # JSON is YAML too: lists and strings for the compose file, without HTML escapes.
    env.filters["json"] = json.dumps
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
