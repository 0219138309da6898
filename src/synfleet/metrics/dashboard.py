"""The Grafana dashboard for one homeserver's fleet, built with grafana-foundation-sdk.

:func:`dashboard` turns the panels (:data:`synfleet.metrics.panels.ROWS`) into the SDK's builders, for this
homeserver's processes, and returns the JSON Grafana's file provisioning reads; :func:`validate` loads that
JSON back through the SDK's own model and checks each panel's data source and variables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import string
from collections.abc import Iterator
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import common, prometheus
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DataSourceRef,
    Panel,
    RowPanel,
    VariableRefresh,
    VariableSort,
)

from synfleet.metrics.panels import ROWS, SELECTED, SERVER, Graph
from synfleet.metrics.promql import dashboard_variables, panel_queries

#: The Prometheus data source's UID; Grafana's provisioning gives the data source this UID.
DATASOURCE_UID = "synfleet-prometheus"
DATASOURCE_TYPE = "prometheus"


def dashboard_uid(server_name: str) -> str:
    """The dashboard's UID: the same on every render, so provisioning replaces the dashboard instead
    of adding another, and different per homeserver, so two fleets can share one Grafana."""
    return "synfleet-" + hashlib.sha256(server_name.lower().encode()).hexdigest()[:12]


_PANEL_WIDTH = 12  # two panels side by side on Grafana's 24-column grid
_PANEL_HEIGHT = 8


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


def _check_variables(model: Dashboard, queries: list[str]) -> None:
    """Every ``$variable`` a query uses is one of the dashboard's template variables or a Grafana global."""
    defined = {variable.name for variable in model.templating.list_val or []}
    for query in queries:
        for name in dashboard_variables(query):
            if name not in defined:
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
