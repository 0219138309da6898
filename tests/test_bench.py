"""synfleet bench, smoke-sized: every figure is there for every mode, and nothing failed."""

from __future__ import annotations

import json
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import helpers
from conftest import synfleet
from synfleet.bench.profile import CATEGORY_NAMES, PY_SPY, PY_SPY_MISSING
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.system import find_binary

pytestmark = pytest.mark.integration


def run_bench(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`synfleet bench` on the small profile in ``directory``; whatever happens, nothing it started
    keeps running."""
    init = synfleet("init", "--dir", str(directory), "--server-name", "localhost", "--profile", "small")
    assert init.returncode == 0
    try:
        result = synfleet("bench", *arguments, directory=directory, timeout=900)
    finally:
        for mode in ("monolith", "fleet", "fleet-roundrobin"):
            if (directory / "bench" / mode).exists():
                synfleet("down", "--dir", str(directory / "bench" / mode))
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_bench_smoke_reports_every_figure() -> None:
    with world_readable_tempdir("synfleet-bench-") as directory:
        out, png = directory / "results.json", directory / "results.png"
        run_bench(
            directory,
            "--users",
            "4",
            "--rooms",
            "3",
            "--duration",
            "5",
            "--warmup",
            "2",
            "--repeat",
            "1",
            "--out",
            str(out),
            "--png",
            str(png),
        )
        data = json.loads(out.read_text())
        assert [r["mode"] for r in data["runs"]] == ["monolith", "fleet", "fleet-roundrobin"]
        for run in data["runs"]:
            assert run["errors"] == {}, run["errors"]
            assert run["acknowledged_msgs_per_s"] > 0 and run["requests"] > 0
            assert set(run["send_latency_ms"]) == {"p50", "p95", "p99"} and run["send_latency_ms"]["p50"] > 0
            assert set(run["delivery_latency_ms"]) == {"p50", "p99"} and run["delivery_latency_ms"]["p50"] > 0
            assert {"main", "postgres", "nginx", "redis", "generator"} <= set(run["cpu_seconds"])
            assert run["pg_transactions_per_request"] > 0
            assert any(ratio for ratio in run["cache_hit_ratio"].values())
            assert run["peak_rss_mib"]["main"] > 50
        fleet_run = data["runs"][1]
        assert {"rooms", "client_sync", "tasks"} <= set(fleet_run["cpu_seconds"])
        assert set(data["summary"]["ratios"]) == {"fleet/monolith msgs/s", "fleet/fleet-roundrobin msgs/s"}
        header = png.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24])[0] > 500
        # Nothing is left running.
        assert "not running" in synfleet("status", "--dir", str(directory / "bench" / "fleet")).stdout


def test_capacity_smoke_reports_every_figure() -> None:
    with world_readable_tempdir("synfleet-capacity-") as directory:
        out, png = directory / "capacity.json", directory / "capacity.png"
        result = run_bench(
            directory,
            "--capacity",
            "--compare",
            "monolith,fleet",
            "--users",
            "6",
            "--rooms",
            "6",
            "--start-rate",
            "4",
            "--factor",
            "2",
            "--max-steps",
            "2",
            "--step-seconds",
            "4",
            "--warmup",
            "2",
            "--repeat",
            "1",
            "--out",
            str(out),
            "--png",
            str(png),
        )
        data = json.loads(out.read_text())
        assert [r["mode"] for r in data["runs"]] == ["monolith", "fleet"]
        for run in data["runs"]:
            assert run["steps"], run
            for step in run["steps"]:
                assert step["offered"] > 0 and step["acknowledged"] > 0 and step["delivered"] > 0
                assert step["deliveries"] <= step["deliveries_expected"]
                assert step["send_ms"]["p50"] > 0 and step["delivery_ms"]["p99"] >= step["delivery_ms"]["p50"] > 0
                assert {"main", "postgres", "nginx", "redis", "generator"} <= set(step["cpu_seconds"])
                assert step["passed"] == (step["failed_because"] is None)
            assert run["capacity_per_s"] > 0, run["steps"]
            # The rooms' members are spread evenly: the same share per room worker in every run.
            assert sum(run["room_members_per_worker"].values()) > 0
            # Short steps cannot resolve small costs (a fleet's main does little per message), but
            # PostgreSQL's, and the monolith's main, are well above the clock's resolution.
            costs = run["costs"]["per_message_cpu_ms"]
            assert costs["postgres"] > 0 and (run["mode"] != "monolith" or costs["main"] > 0), costs
        fleet_run = data["runs"][1]
        assert set(fleet_run["room_members_per_worker"]) == {"rooms1", "rooms2"}
        assert {"rooms", "client_sync", "tasks"} <= set(fleet_run["steps"][0]["cpu_seconds"])
        assert data["summary"]["fleet/monolith"]["median"] > 0
        for mode in ("monolith", "fleet"):
            model = data["model"][mode]
            assert model["here"]["predicted"]["capacity_per_s"] > 0
            assert [row["cores"] for row in model["cores"]] == [2, 4, 8, 16, 32]
            assert all(row["this_shape"]["capacity_per_s"] > 0 for row in model["cores"])
        assert "fleet/monolith capacity" in result.stdout
        header = png.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24])[0] > 500


def py_spy_reason() -> str | None:
    if find_binary(PY_SPY) is None:
        return PY_SPY_MISSING
    return helpers.root_reason("py-spy reads the memory of the fleet's processes, which run as the fleet's account")


@pytest.mark.prerequisite(py_spy_reason())
def test_profile_smoke_writes_flame_graphs_and_where_cpu_goes() -> None:
    with world_readable_tempdir("synfleet-profile-") as directory:
        out = directory / "profile"
        result = run_bench(
            directory,
            "--profile",
            str(out),
            "--users",
            "4",
            "--rooms",
            "3",
            "--rate",
            "5",
            "--step-seconds",
            "8",
            "--warmup",
            "2",
        )
        table = json.loads((out / "profile.json").read_text())
        groups = table["groups"]
        assert table["step"]["acknowledged"] > 0 and table["step"]["errors"] == {}
        sampled = {group for group, figures in groups.items() if figures["processes"]}
        assert {"main", "client_sync", "rooms", "tasks"} <= sampled
        assert {"postgres", "nginx", "redis", "generator"} <= set(groups) - sampled
        assert groups["rooms"]["processes"] == ["rooms1", "rooms2"]
        for group in sampled:
            svg = ET.parse(out / f"{group}.svg").getroot()
            assert svg.tag == "{http://www.w3.org/2000/svg}svg"
            assert list(svg.iter("{http://www.w3.org/2000/svg}rect"))
            assert (out / f"{group}.collapsed").exists()
        for group in ("main", "rooms"):
            figures = groups[group]
            assert figures["cpu_ms_per_message"] > 0 and figures["samples"] + figures["waiting_samples"] > 0, figures
            # A flame graph with frames: the root and what ran on it.
            assert len(list(ET.parse(out / f"{group}.svg").getroot().iter("{http://www.w3.org/2000/svg}g"))) > 3
        for group in sampled:
            categories = groups[group]["categories"]
            if groups[group]["samples"]:
                assert list(categories) == list(CATEGORY_NAMES)
                assert sum(c["share"] for c in categories.values()) == pytest.approx(1.0, abs=0.01)
                total = sum(c["cpu_ms_per_message"] for c in categories.values())
                assert total == pytest.approx(groups[group]["cpu_ms_per_message"], rel=0.02, abs=0.05)
        # Synapse's own work for the messages is seen in the samples.
        assert groups["rooms"]["samples"] > 0 and groups["rooms"]["categories"]["other"]["share"] < 0.5, groups["rooms"]
        database = table["postgres_per_message"]
        assert database["transactions"] > 0
        # pg_stat_statements, loaded into the profiled fleet's PostgreSQL, counted Synapse's statements.
        assert database["statements"] > database["transactions"] and database["statement_exec_ms"] > 0
        top = database["top_statements"]
        assert 0 < len(top) <= 10 and all(s["calls"] > 0 and s["query"] for s in top)
        assert [s["exec_ms"] for s in top] == sorted((s["exec_ms"] for s in top), reverse=True)
        assert "the statements that took the most execution time" in result.stdout
        assert "CPU ms per acknowledged message" in result.stdout
        assert "not running" in synfleet("status", "--dir", str(directory / "bench" / "fleet")).stdout
