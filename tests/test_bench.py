"""synfleet bench, smoke-sized: every figure is there for every mode, and nothing failed."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from helpers import synfleet
from synfleet.nginx.command import world_readable_tempdir

pytestmark = pytest.mark.integration


def test_bench_smoke_reports_every_figure() -> None:
    with world_readable_tempdir("synfleet-bench-") as directory:
        init = synfleet("init", "--dir", str(directory), "--server-name", "localhost", "--profile", "small")
        assert init.returncode == 0
        out, png = directory / "results.json", directory / "results.png"
        command = [
            "bench",
            "--dir",
            str(directory),
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
        ]
        try:
            result = subprocess.run(
                [sys.executable, "-m", "synfleet", *command],
                capture_output=True,
                text=True,
                timeout=900,
                stdin=subprocess.DEVNULL,
            )
        finally:  # whatever happened, nothing the bench started keeps running
            for mode in ("monolith", "fleet", "fleet-roundrobin"):
                if (directory / "bench" / mode).exists():
                    synfleet("down", "--dir", str(directory / "bench" / mode))
        print(result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr
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
