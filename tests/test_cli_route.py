"""The synfleet route and ring commands, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import synfleet


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
