"""The Grafana dashboard for one homeserver's fleet, built with grafana-foundation-sdk.

Every panel is a time series, one line per process (``{{instance}}``), over the labels the scrape config
gives each target: ``job`` (the process's group), ``instance`` (its name) and ``server`` (the homeserver).
The panels are data (:data:`ROWS`); :func:`dashboard` turns them into the SDK's builders and returns the JSON
Grafana's file provisioning reads, and :func:`validate` loads that JSON back through the SDK's own model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import common, prometheus, units
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DataSourceRef,
    Panel,
    RowPanel,
    VariableRefresh,
    VariableSort,
)

#: The Prometheus data source's UID; Grafana's provisioning gives the data source this UID.
DATASOURCE_UID = "synfleet-prometheus"
DATASOURCE_TYPE = "prometheus"


def dashboard_uid(server_name: str) -> str:
    """The dashboard's UID: the same on every render, so provisioning replaces the dashboard instead
    of adding another, and different per homeserver, so two fleets can share one Grafana."""
    return "synfleet-" + hashlib.sha256(server_name.lower().encode()).hexdigest()[:12]


#: In :data:`ROWS`' expressions, replaced by the matchers for the processes the dashboard's variables select.
SELECTED = "<SELECTED>"
#: In :data:`ROWS`' expressions, replaced by the matcher for every process of the homeserver.
SERVER = "<SERVER>"

_PANEL_WIDTH = 12  # two panels side by side on Grafana's 24-column grid
_PANEL_HEIGHT = 8


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and how its series are named in the legend."""

    expr: str
    legend: str = "{{instance}}"


@dataclass(frozen=True)
class Graph:
    """One time series panel: what it shows (``description``), in which unit, from which queries."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class Row:
    """A titled group of panels; a collapsed row's queries only run once it is opened."""

    title: str
    graphs: tuple[Graph, ...]
    collapsed: bool = True


def _selector(metric: str, matchers: str = "") -> str:
    """``metric`` of the selected processes, with extra ``matchers`` (``', name="x"'``) if given."""
    return f"{metric}{{{SELECTED}{matchers}}}"


def _rate(metric: str, matchers: str = "") -> str:
    """``rate`` of a counter of the selected processes, per second, over Grafana's rate interval."""
    return f"rate({_selector(metric, matchers)}[$__rate_interval])"


def _rate_by(labels: str, metric: str, matchers: str = "") -> str:
    """The per-second rate of a counter, summed into one series per value of ``labels``."""
    return f"sum by ({labels}) ({_rate(metric, matchers)})"


def _sum_by(labels: str, metric: str, matchers: str = "") -> str:
    """A gauge summed into one series per value of ``labels``."""
    return f"sum by ({labels}) ({_selector(metric, matchers)})"


def _ratio(numerator: str, denominator: str) -> str:
    """The rate of one counter over the rate of another, per process."""
    return f"{_rate_by('instance', numerator)} / {_rate_by('instance', denominator)}"


def _quantile(q: float, matchers: str = "") -> str:
    """The ``q`` quantile of the HTTP response time per process, from the histogram's buckets."""
    buckets = _rate_by("instance, le", "synapse_http_server_response_time_seconds_bucket", matchers)
    return f"histogram_quantile({q}, {buckets})"


def _events_position(matcher: str) -> str:
    """The events stream position of each process ``matcher`` selects."""
    return f'synapse_storage_stream_current_position{{{matcher}, stream_name="events"}}'


def _events_behind() -> str:
    """How far each selected process's events stream position is behind the furthest of the homeserver's.

    ``max`` keeps only the ``server`` label, so the subtraction matches on it, one maximum to many processes.
    """
    return f"max by (server) ({_events_position(SERVER)}) - on (server) group_right {_events_position(SELECTED)}"


_SYNC = ', servlet="SyncRestServlet"'

ROWS: tuple[Row, ...] = (
    Row(
        "Processes",
        collapsed=False,
        graphs=(
            Graph(
                "CPU",
                "CPU time per second of wall time; 100% is one core busy.",
                units.PercentUnit,
                (Query(_rate_by("instance", "process_cpu_seconds_total")),),
            ),
            Graph(
                "Memory (RSS)",
                "Resident memory of each process.",
                units.BytesIEC,
                (Query(_sum_by("instance", "process_resident_memory_bytes")),),
            ),
            Graph(
                "Reactor tick time",
                "Mean time of one Twisted reactor tick: long ticks mean the process is blocked or CPU-bound.",
                units.Seconds,
                (Query(_ratio("python_twisted_reactor_tick_time_sum", "python_twisted_reactor_tick_time_count")),),
            ),
        ),
    ),
    Row(
        "HTTP",
        collapsed=False,
        graphs=(
            Graph(
                "Requests by servlet",
                "Requests received per second, per process and servlet (the route group that handled them).",
                units.RequestsPerSecond,
                (
                    Query(
                        _rate_by("instance, servlet", "synapse_http_server_requests_received_total"),
                        "{{instance}} {{servlet}}",
                    ),
                ),
            ),
            Graph(
                "Response time",
                "Median and 99th percentile time to respond, per process, over all servlets.",
                units.Seconds,
                (Query(_quantile(0.5), "{{instance}} p50"), Query(_quantile(0.99), "{{instance}} p99")),
            ),
            Graph(
                "Sync response time",
                "Median and 99th percentile time to answer /sync; long polls wait up to their timeout, so "
                "high values with little traffic are normal.",
                units.Seconds,
                (Query(_quantile(0.5, _SYNC), "{{instance}} p50"), Query(_quantile(0.99, _SYNC), "{{instance}} p99")),
            ),
            Graph(
                "Server errors",
                "Responses with a 5xx status per second, per process.",
                units.RequestsPerSecond,
                (
                    Query(
                        _rate_by("instance, code", "synapse_http_server_responses_total", ', code=~"5.."'),
                        "{{instance}} {{code}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Replication",
        graphs=(
            Graph(
                "Events stream: events behind",
                "How far each process's position in the events stream is behind the furthest process of the "
                "homeserver; it should come back to 0 within moments.",
                units.Short,
                (Query(_events_behind()),),
            ),
            Graph(
                "Replication commands received",
                "Replication commands received per second, per process and command.",
                units.OpsPerSecond,
                (
                    Query(
                        _rate_by("instance, command", "synapse_replication_tcp_protocol_inbound_commands_total"),
                        "{{instance}} {{command}}",
                    ),
                ),
            ),
            Graph(
                "Replication commands sent",
                "Replication commands sent per second, per process and command.",
                units.OpsPerSecond,
                (
                    Query(
                        _rate_by("instance, command", "synapse_replication_tcp_protocol_outbound_commands_total"),
                        "{{instance}} {{command}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Events and caches",
        graphs=(
            Graph(
                "Events persisted",
                "Events written to the database per second, by the processes that persist events.",
                units.OpsPerSecond,
                (Query(_rate_by("instance", "synapse_storage_events_persisted_events_total")),),
            ),
            Graph(
                "Cache hit ratio",
                "Share of lookups answered by Synapse's in-memory caches, over all caches of a process.",
                units.PercentUnit,
                # Both are gauges that only grow (hits, and lookups in all), so their rates are meaningful.
                (Query(_ratio("synapse_util_caches_cache_hits", "synapse_util_caches_cache")),),
            ),
        ),
    ),
    Row(
        "Federation",
        graphs=(
            Graph(
                "Federation sender queue",
                "PDUs and EDUs waiting to be sent to other homeservers; only federation senders have any.",
                units.Short,
                (
                    Query(
                        _sum_by("instance", "synapse_federation_transaction_queue_pending_pdus"), "{{instance}} PDUs"
                    ),
                    Query(
                        _sum_by("instance", "synapse_federation_transaction_queue_pending_edus"), "{{instance}} EDUs"
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Database",
        graphs=(
            Graph(
                "Time in database transactions",
                "Seconds spent in database transactions per second, per process; above 1 means several "
                "connections busy at once.",
                units.Seconds,
                (Query(_rate_by("instance", "synapse_storage_transaction_time_sum_total")),),
            ),
            Graph(
                "Wait for a database connection",
                "Mean time a transaction waits for a free connection of the pool: above a few ms the pool is "
                "too small or the database too slow.",
                units.Seconds,
                (Query(_ratio("synapse_storage_schedule_time_sum", "synapse_storage_schedule_time_count")),),
            ),
            Graph(
                "Busy database threads",
                "Threads of each database pool running a transaction.",
                units.Short,
                (
                    Query(
                        _sum_by("instance, name", "synapse_threadpool_working_threads", ', name=~"database.*"'),
                        "{{instance}} {{name}}",
                    ),
                ),
            ),
        ),
    ),
)


def _server_matcher(server_name: str) -> str:
    """The matcher for the homeserver's processes: the ``server`` label, as a PromQL string literal."""
    escaped = server_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'server="{escaped}"'


def _datasource() -> DataSourceRef:
    """The reference to the provisioned Prometheus data source; a new one each time, the builders keep it."""
    return DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


def _expression(expr: str, server_name: str) -> str:
    """``expr`` with :data:`SERVER` and :data:`SELECTED` replaced by this homeserver's matchers."""
    server = _server_matcher(server_name)
    return expr.replace(SELECTED, f'{server}, job=~"$job", instance=~"$instance"').replace(SERVER, server)


def _variable(name: str, label: str, query: str) -> dashboard_builders.QueryVariable:
    """A multi-value variable listing a label's values among the homeserver's processes, "All" included."""
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(_datasource())
        .query(query)
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _panel(graph: Graph, panel_id: int, server_name: str) -> timeseries_builders.Panel:
    """One :class:`Graph` as the SDK's time series panel, its queries lettered A, B, ..."""
    legend = (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .calcs(["mean", "max"])
    )
    tooltip = (
        common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
    )
    panel = (
        timeseries_builders.Panel()
        .id(panel_id)
        .title(graph.title)
        .description(graph.description)
        .datasource(_datasource())
        .unit(graph.unit)
        .min(0)
        .span(_PANEL_WIDTH)
        .height(_PANEL_HEIGHT)
        .fill_opacity(10)
        .legend(legend)
        .tooltip(tooltip)
    )
    for ref_id, query in zip(string.ascii_uppercase, graph.queries, strict=False):
        panel.with_target(
            prometheus_builders.Dataquery()
            .ref_id(ref_id)
            .datasource(_datasource())
            .expr(_expression(query.expr, server_name))
            .legend_format(query.legend)
            .range()
        )
    return panel


def _build(server_name: str) -> Dashboard:
    """The dashboard as the SDK's model: variables, then each row and its panels."""
    server = _server_matcher(server_name)
    builder = (
        dashboard_builders.Dashboard(f"synfleet: {server_name}")
        .uid(dashboard_uid(server_name))
        .tags(["synfleet", "synapse"])
        .timezone("browser")
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(_variable("job", "Group", f"label_values(synapse_build_info{{{server}}}, job)"))
        .with_variable(
            _variable("instance", "Process", f'label_values(synapse_build_info{{{server}, job=~"$job"}}, instance)')
        )
    )
    panel_ids = itertools.count(1)
    for row in ROWS:
        row_builder = dashboard_builders.Row(row.title).id(next(panel_ids))
        panels = [_panel(graph, next(panel_ids), server_name) for graph in row.graphs]
        if row.collapsed:
            for panel in panels:
                row_builder.with_panel(panel)
            builder.with_row(row_builder)
        else:
            builder.with_row(row_builder.collapsed(False))
            for panel in panels:
                builder.with_panel(panel)
    return builder.build()


def _to_json(model: Dashboard) -> dict[str, Any]:
    """The model as plain JSON data, through the SDK's encoder (models nest models and enums)."""
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return data


def dashboard(server_name: str) -> dict[str, Any]:
    """The dashboard for ``server_name``'s processes, ready to be written as JSON for Grafana's provisioning.

    It is checked with :func:`validate` before it is returned, so a broken dashboard never reaches a file.
    """
    data = _to_json(_build(server_name))
    validate(data)
    return data


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


def _load(dashboard_json: dict[str, Any]) -> Dashboard:
    """``dashboard_json`` as the SDK's model; :class:`ValueError` when the model cannot read it."""
    # The model decodes targets and panel options through plugins; unregistered, a Prometheus query
    # would load as an opaque "unknown" query and could not be checked.
    register_default_plugins()
    if not isinstance(dashboard_json, dict):
        raise ValueError(f"dashboard JSON must be an object, not {type(dashboard_json).__name__}")
    try:
        return Dashboard.from_json(dashboard_json)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"dashboard JSON does not load as grafana-foundation-sdk's Dashboard: {e!r}") from e


def _first_difference(expected: Any, actual: Any, path: str) -> str | None:
    """Where ``actual`` first loses or changes something of ``expected``, as ``path: what``; None when it
    keeps all of it (fields only ``actual`` has are the model's defaults)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() | actual.keys()):
            if key not in actual:
                return f"{path}.{key}: dropped by the model (an unknown or misspelt field?)"
            if key not in expected:
                continue  # a default the model fills in, which Grafana would assume too
            found = _first_difference(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found = _first_difference(left, right, f"{path}[{index}]")
            if found:
                return found
        return None
    return None if expected == actual else f"{path}: {expected!r} became {actual!r}"


def _check_round_trip(dashboard_json: dict[str, Any], model: Dashboard) -> None:
    """The model written out again must keep all of the JSON it was read from: a field the model drops
    is one it does not know (misspelt, or from another schema), so Grafana may not know it either."""
    difference = _first_difference(dashboard_json, _to_json(model), "dashboard")
    if difference:
        raise ValueError(f"dashboard JSON does not survive a round trip through the SDK's model: {difference}")


def _model_panels(model: Dashboard) -> Iterator[Panel]:
    """Every panel of the model that is not a row, those in rows too."""
    for panel in model.panels or []:
        if isinstance(panel, RowPanel):
            yield from panel.panels
        else:
            yield panel


def _datasource_of(reference: object) -> tuple[str | None, str | None]:
    """The (type, uid) of a data source reference, read from the model or from raw JSON."""
    if isinstance(reference, DataSourceRef):
        return reference.type_val, reference.uid
    if isinstance(reference, dict):
        return reference.get("type"), reference.get("uid")
    return None, None


def _check_panel(panel: Panel) -> None:
    """A panel has at least one Prometheus query, each with an expression and the provisioned data source."""
    where = f"panel {panel.title!r} (id {panel.id_val})"
    if not panel.targets:
        raise ValueError(f"{where}: has no queries")
    for target in panel.targets:
        if not isinstance(target, prometheus.Dataquery):
            raise ValueError(f"{where}: a target is not a Prometheus query ({type(target).__name__})")
        if not target.expr.strip():
            raise ValueError(f"{where}: target {target.ref_id!r} has an empty expression")
        source = _datasource_of(target.datasource) if target.datasource is not None else (None, None)
        if source == (None, None):
            source = _datasource_of(panel.datasource)
        if source != (DATASOURCE_TYPE, DATASOURCE_UID):
            raise ValueError(
                f"{where}: target {target.ref_id!r} uses data source {source}, "
                f"expected ({DATASOURCE_TYPE!r}, {DATASOURCE_UID!r})"
            )


# $name or ${name} / ${name:format}; names starting with "__" are Grafana's own ($__rate_interval).
_VARIABLE_USE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<plain>\w+))")


def _check_variables(model: Dashboard, queries: list[str]) -> None:
    """Every ``$variable`` a query uses is one of the dashboard's template variables or a Grafana global."""
    defined = {variable.name for variable in model.templating.list_val or []}
    for query in queries:
        for use in _VARIABLE_USE.finditer(query):
            name = use["braced"] or use["plain"]
            if not name.startswith("__") and name not in defined:
                raise ValueError(f"query {query!r} uses ${name}, which is not a variable of the dashboard")


def validate(dashboard_json: dict[str, Any]) -> None:
    """Raise :class:`ValueError` unless ``dashboard_json`` is a dashboard the SDK's model loads and writes
    back unchanged, whose every panel queries the provisioned Prometheus data source with only variables
    the dashboard defines."""
    model = _load(dashboard_json)
    _check_round_trip(dashboard_json, model)
    panels = list(_model_panels(model))
    if not panels:
        raise ValueError("dashboard has no panels")
    for panel in panels:
        _check_panel(panel)
    _check_variables(model, panel_queries(dashboard_json))
