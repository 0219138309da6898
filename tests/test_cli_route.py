"""The synfleet route and ring commands, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import synfleet
from helpers import copy_fleet_case, fleet_case
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan


def test_route_table_output(tmp_path: Path) -> None:
    result = synfleet("route", "--dir", str(tmp_path), "GET", "/_matrix/client/v3/rooms/%21abc%3Aexample.org/messages")
    assert result.returncode == 0, result.stderr
    assert "rooms_client" in result.stdout
    assert "synapse_inbound_room_workers" in result.stdout
    assert "rooms" in result.stdout and "abc" in result.stdout


def test_route_json_has_rule_upstream_worker() -> None:
    result = synfleet("route", "--json", "PUT", "/_matrix/client/v3/rooms/!r:s/typing/@u:s")
    data = json.loads(result.stdout)
    assert (data["rule"], data["upstream"], data["worker"]) == (
        "stream_typing",
        "synapse_inbound_typing_writers",
        "client_sync1",
    )


def test_route_batch_keeps_order_and_reports_bad_lines() -> None:
    lines = "GET /_matrix/client/v3/sync\nnonsense\nPOST /_matrix/media/v3/upload\n\nGET /_matrix/client/versions"
    result = synfleet("route", "--json", "--batch", "-", stdin=lines)
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("rule") for o in out] == ["sync", None, "media", "client_reader"]
    assert out[1]["line"] == 2 and "METHOD URL" in out[1]["error"]
    assert result.returncode == 2


def test_bad_url_and_method_give_one_line_and_exit_2() -> None:
    for args in (["GET", "no-slash"], ["G3T", "/x"], ["GET", "/a/%zz"], ["GET", "/.."]):
        result = synfleet("route", *args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("synfleet: error:"), result.stderr
        assert "Traceback" not in result.stderr


def test_bad_header_is_a_usage_error() -> None:
    result = synfleet("route", "GET", "/x", "-H", "NoColon")
    assert result.returncode == 2 and "invalid header" in result.stderr


def test_ring_reports_movement() -> None:
    result = synfleet("ring", "--keys", "20000")
    assert result.returncode == 0, result.stderr
    assert "rooms5" in result.stdout
    assert "growing 4 -> 5 moves" in result.stdout


def test_initial_syncs_go_to_their_pool_when_the_fleet_has_one(tmp_path: Path) -> None:
    """Without since (sliding sync: without pos) a sync is initial; the pool takes those only when
    the fleet has one, and the rendered maps stay as they were without it."""
    pool = copy_fleet_case("initial_sync_pool", tmp_path / "pool")
    requests = [
        ("GET", "/_matrix/client/v3/sync?timeout=0", "initial_sync", "synapse_inbound_initial_syncs"),
        ("GET", "/_matrix/client/v3/sync?since=s1_2&timeout=30000", "sync", "synapse_inbound_client_syncs"),
        ("GET", "/_matrix/client/r0/sync?since=", "initial_sync", "synapse_inbound_initial_syncs"),
        ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "initial_sliding_sync", None),
        ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos=5", "sync", None),
        ("GET", "/_matrix/client/v3/initialSync", "initial_sync_legacy", None),
    ]
    lines = "\n".join(f"{method} {url}" for method, url, _, _ in requests)
    result = synfleet("route", "--json", "--batch", "-", "--dir", str(pool), stdin=lines)
    assert result.returncode == 0, result.stderr
    for (_, url, rule, upstream), out in zip(requests, map(json.loads, result.stdout.splitlines()), strict=True):
        assert out["rule"] == rule, (url, out)
        assert upstream is None or out["upstream"] == upstream, (url, out)
        assert out["target"] == ("client_sync" if rule == "sync" else "initial_sync"), (url, out)

    without = RoutingPlan(fleet_case("seed"))
    assert without.route_map.source == "$request_method $uri" and not without.query_args
    assert not [rule for rule in without.active if rule.optional]
    with_pool = RoutingPlan(fleet_case("initial_sync_pool"))
    assert with_pool.route_map.source == "$request_method $synfleet_arg_pos $synfleet_arg_since $uri"
    assert evaluate(without, "GET", "/_matrix/client/v3/sync").rule == "sync"
