"""Reading the PromQL of a dashboard: every query of its panels, the metric names an expression selects,
and the dashboard variables (``$job``) it uses.

These read the text only; whether an expression parses is for ``promtool`` to say.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard's JSON, those in (collapsed) rows too; rows themselves are left out."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


def panel_queries(dashboard_json: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel's targets, in the dashboard's order."""
    return [
        target["expr"] for panel in _panels(dashboard_json.get("panels", [])) for target in panel.get("targets", [])
    ]


_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# A name not inside a number (1e3) or a variable ($job); `called` is set when a "(" follows: a function.
_IDENTIFIER = re.compile(r"(?<![\w.$])(?P<name>[A-Za-z_:][\w:]*)\s*(?P<called>\()?")
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)


def query_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, range durations and label lists (``by (...)``, ``on (...)``) are removed
    first; of the names left, those followed by ``(`` are functions or aggregations and keywords are
    operators, and the rest are metrics. Names given as ``{__name__="..."}`` are not seen.
    """
    text = _STRING_LITERAL.sub(" ", expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {
        match["name"]
        for match in _IDENTIFIER.finditer(text)
        if match["called"] is None and match["name"].lower() not in _KEYWORDS
    }


# $name or ${name} / ${name:format}; names starting with "__" are Grafana's own ($__rate_interval).
_VARIABLE_USE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<plain>\w+))")


def dashboard_variables(expr: str) -> Iterator[str]:
    """The names of the dashboard variables ``expr`` uses, in order; Grafana's own (``$__...``) are left out."""
    for use in _VARIABLE_USE.finditer(expr):
        name = use["braced"] or use["plain"]
        if not name.startswith("__"):
            yield name
