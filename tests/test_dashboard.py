"""The Grafana dashboard: it loads through grafana-foundation-sdk's model, every panel queries Synapse's
metrics for this homeserver's selected processes, and the PromQL parses (and, for the tricky vector
match, evaluates) in promtool. No servers needed."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, RowPanel

from helpers import prometheus_tool
from synfleet.metrics.dashboard import DATASOURCE_UID, dashboard, dashboard_uid, validate
from synfleet.metrics.promql import panel_queries, query_metric_names

SERVER = "m.test"
METRIC_PREFIXES = ("synapse_", "process_", "python_")


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dashboard(SERVER)


def leaf_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels that are not rows, those nested in rows too."""
    result = []
    for panel in panels:
        result.extend(leaf_panels(panel.get("panels", [])) if panel["type"] == "row" else [panel])
    return result


def concrete(expr: str) -> str:
    """``expr`` with Grafana's variables replaced as Grafana would for "All" over a 1 minute rate window."""
    return re.sub(r"\$\w+", ".*", expr.replace("$__rate_interval", "1m"))


def test_dashboard_loads_through_the_sdk_model(board: dict[str, Any]) -> None:
    validate(board)
    register_default_plugins()
    model = Dashboard.from_json(board)
    targets = [
        target
        for panel in model.panels or []
        for inner in (panel.panels if isinstance(panel, RowPanel) else [panel])
        for target in inner.targets or []
    ]
    assert targets
    assert all(isinstance(target, prometheus.Dataquery) for target in targets)


def test_dashboard_is_json_and_the_same_every_time(board: dict[str, Any]) -> None:
    assert json.loads(json.dumps(board)) == board
    assert dashboard(SERVER) == board


def test_uid_stays_per_server_and_title_names_the_server() -> None:
    first, second = dashboard("example.org"), dashboard("other.example")
    assert first["uid"] == dashboard("example.org")["uid"] == dashboard_uid("example.org")
    assert first["uid"] != second["uid"] and len(first["uid"]) <= 40  # Grafana's limit
    assert first["title"] == "synfleet: example.org"
    assert second["title"] == "synfleet: other.example"


def test_variables_select_groups_and_processes(board: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert {"job", "instance"} <= variables.keys()
    for variable in variables.values():
        assert variable["multi"] and variable["includeAll"]
        assert variable["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
    assert "job)" in variables["job"]["query"]


def test_every_panel_has_queries_on_the_provisioned_datasource(board: dict[str, Any]) -> None:
    panels = leaf_panels(board["panels"])
    assert len(panels) >= 10
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
    ids = [panel["id"] for panel in board["panels"]] + [
        inner["id"] for panel in board["panels"] for inner in panel.get("panels", [])
    ]
    assert len(ids) == len(set(ids))


def test_panel_queries_includes_collapsed_rows(board: dict[str, Any]) -> None:
    collapsed = [panel for panel in board["panels"] if panel["type"] == "row" and panel["collapsed"]]
    assert collapsed and all(row["panels"] for row in collapsed)
    nested = [target["expr"] for row in collapsed for panel in row["panels"] for target in panel["targets"]]
    queries = panel_queries(board)
    assert len(queries) == sum(len(panel["targets"]) for panel in leaf_panels(board["panels"]))
    assert set(nested) <= set(queries)


def test_every_query_names_synapse_metrics(board: dict[str, Any]) -> None:
    for query in panel_queries(board):
        names = query_metric_names(query)
        assert names, query
        assert all(name.startswith(METRIC_PREFIXES) for name in names), (query, names)


def test_every_query_is_limited_to_this_server_and_the_selection(board: dict[str, Any]) -> None:
    for query in panel_queries(board):
        assert f'server="{SERVER}"' in query, query
        assert 'job=~"$job"' in query and 'instance=~"$instance"' in query, query
        if "rate(" in query:
            assert "[$__rate_interval]" in query, query


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("process_resident_memory_bytes", {"process_resident_memory_bytes"}),
        (
            "histogram_quantile(0.99, sum by (instance, le) (rate("
            'synapse_http_server_response_time_seconds_bucket{job=~"$job", le!="+Inf"}[$__rate_interval])))',
            {"synapse_http_server_response_time_seconds_bucket"},
        ),
        (
            "sum by (instance) (rate(python_twisted_reactor_tick_time_sum[5m]))"
            " / sum by (instance) (rate(python_twisted_reactor_tick_time_count[5m]))",
            {"python_twisted_reactor_tick_time_sum", "python_twisted_reactor_tick_time_count"},
        ),
        (
            'max by (server) (synapse_storage_stream_current_position{stream_name="events"})'
            ' - on (server) group_right synapse_storage_stream_current_position{job="rooms"}',
            {"synapse_storage_stream_current_position"},
        ),
        ("sum(rate(a_total[1m])) without (le) * 1e3 > bool 0 unless on(x) b offset 5m", {"a_total", "b"}),
        (
            'up{name="rate(fake_metric)", job=~"$job"} and ignoring (name) group_left (le) c:recorded',
            {"up", "c:recorded"},
        ),
    ],
)
def test_query_metric_names(expr: str, names: set[str]) -> None:
    assert query_metric_names(expr) == names


def broken(board: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of the dashboard to break, and the panel in it to break: the first one inside a collapsed
    row (``where="nested"``) or the first one at the top level (``where="top"``)."""
    copied = copy.deepcopy(board)
    if where == "nested":
        row = next(panel for panel in copied["panels"] if panel["type"] == "row" and panel["panels"])
        return copied, row["panels"][0]
    return copied, next(panel for panel in copied["panels"] if panel["type"] == "timeseries")


@pytest.mark.parametrize("where", ["top", "nested"])
def test_validate_rejects_a_panel_without_queries(board: dict[str, Any], where: str) -> None:
    copied, panel = broken(board, where)
    del panel["targets"]
    with pytest.raises(ValueError, match="has no queries"):
        validate(copied)


def test_validate_rejects_another_datasource(board: dict[str, Any]) -> None:
    copied, panel = broken(board, "nested")
    panel["datasource"] = {"type": "prometheus", "uid": "elsewhere"}
    for target in panel["targets"]:
        target["datasource"] = {"type": "prometheus", "uid": "elsewhere"}
    with pytest.raises(ValueError, match="elsewhere"):
        validate(copied)


def test_validate_rejects_a_field_the_model_does_not_know(board: dict[str, Any]) -> None:
    copied, panel = broken(board, "top")
    panel["gridpos"] = panel.pop("gridPos")
    with pytest.raises(ValueError, match=r"round trip.*gridpos"):
        validate(copied)


def test_validate_rejects_an_unknown_variable(board: dict[str, Any]) -> None:
    copied, panel = broken(board, "top")
    panel["targets"][0]["expr"] = 'up{job=~"$jobs"}'
    with pytest.raises(ValueError, match=r"\$jobs"):
        validate(copied)


@pytest.mark.parametrize("data", [{"panels": [1]}, {"panels": [{"title": "no type"}]}, {"title": "no panels"}])
def test_validate_rejects_what_does_not_load(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"does not load|no panels"):
        validate(data)


def test_promtool_parses_every_query(board: dict[str, Any], tmp_path: Path) -> None:
    rules = [{"record": f"synfleet:query{i}", "expr": concrete(q)} for i, q in enumerate(panel_queries(board))]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [prometheus_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def position_labels(server: str, instance: str) -> str:
    """The labels the scrape config gives a process, and the events stream's."""
    job = instance.rstrip("0123456789")
    return f'{{server="{server}", job="{job}", instance="{instance}", stream_name="events"}}'


def test_events_behind_counts_from_the_furthest_process_of_this_server(board: dict[str, Any], tmp_path: Path) -> None:
    (query,) = [q for q in panel_queries(board) if "stream_name=" in q]
    positions = {(SERVER, "main"): 10, (SERVER, "rooms1"): 7, (SERVER, "senders1"): 10, ("elsewhere.test", "main"): 99}
    tests = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "synapse_storage_stream_current_position" + position_labels(*key),
                        "values": f"{value}x5",
                    }
                    for key, value in positions.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": concrete(query),
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": position_labels(SERVER, "main"), "value": 0},
                            {"labels": position_labels(SERVER, "rooms1"), "value": 3},
                            {"labels": position_labels(SERVER, "senders1"), "value": 0},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [prometheus_tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
