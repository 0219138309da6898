"""End to end: a real fleet (PostgreSQL, Redis, Synapse main + workers, nginx) driven by matrix-nio.

For the `small` and the default `seed` profile: two users talk in a room created with Synapse's
default room version (12), and every request nginx served went to the worker `synfleet route`
predicts. Then a room worker is killed mid-stream, and the fleet is stopped and started again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import helpers
from conftest import RunningFleet, fleet_under_test
from flows import (
    PASSWORD,
    check_rooms_still_there,
    check_routing,
    check_serves_again,
    conversation,
    new_room,
    send_stream,
    socket_healthy,
)
from synfleet.metrics.dashboard import validate
from synfleet.metrics.promql import panel_queries, query_metric_names
from synfleet.metrics.scrape import scrape
from synfleet.model.load import load_spec
from synfleet.render.nginx import access_lines
from synfleet.routing.plan import RoutingPlan
from synfleet.run.fleet import ProcessStatus, status
from synfleet.run.paths import RunPaths, deployed_plan
from synfleet.run.supervisor import Supervisor

pytestmark = pytest.mark.integration


@dataclass
class Fleet(RunningFleet):
    rooms: list[str] = field(default_factory=list)

    def after_up(self) -> None:
        print(f"\n[{self.profile}] up to all healthy: {self.up_seconds:.1f}s\n{self.status()}")
        for user in ("alice", "bob"):
            added = self.synfleet("user", "add", user, "--password", PASSWORD)
            assert added.returncode == 0, added.stderr

    @property
    def plan(self) -> RoutingPlan:
        """The plan `synfleet route --dir` uses for this directory."""
        plan = deployed_plan(RunPaths(self.directory), load_spec(self.directory).fleet)
        assert plan.socket_dir == str(self.directory / "run" / "sockets")
        return plan

    def access_log(self) -> list[dict[str, str]]:
        return access_lines(RunPaths(self.directory).access_log)

    def status(self) -> str:
        return self.synfleet("status").stdout


fleet = fleet_under_test(
    Fleet, ["small", "seed"], synapse={"relaxed_rate_limits": True}, metrics=helpers.metrics_on_free_ports
)


def test_conversation_and_routing(fleet: Fleet) -> None:
    asyncio.run(conversation(fleet))
    check_routing(fleet)


def scraped_metric_names(fleet: Fleet) -> tuple[dict[str, Any], set[str]]:
    """The rendered scrape config, and the names of every sample one scrape of each target gave."""
    config = yaml.safe_load((fleet.directory / "run" / "metrics" / "prometheus.yml").read_text())
    names: set[str] = set()
    for entry in config["scrape_configs"][0]["static_configs"]:
        host, port = entry["targets"][0].rsplit(":", 1)
        scraped = scrape(host, int(port))
        assert scraped is not None, f"{entry['labels']['instance']} does not answer on {host}:{port}"
        assert scraped.total("synapse_build_info") == 1, entry
        assert scraped.total("process_resident_memory_bytes") > 0, entry
        names |= scraped.names
    return config, names


def test_every_process_is_scraped_with_the_dashboards_labels(fleet: Fleet) -> None:
    asyncio.run(new_room(fleet, "metrics"))  # events persisted, so their counters exist
    fleet_model = fleet.plan.fleet
    config, names = scraped_metric_names(fleet)
    labels = {e["labels"]["instance"]: e["labels"] for e in config["scrape_configs"][0]["static_configs"]}
    assert set(labels) == {w.name for w in fleet_model.workers}
    for worker in fleet_model.workers:
        assert labels[worker.name]["job"] == fleet_model.group(worker.name)
        assert labels[worker.name]["server"] == "localhost"
    for job in {label["job"] for label in labels.values()}:
        indexes = sorted(int(label["index"]) for label in labels.values() if label["job"] == job)
        assert indexes == list(range(1, len(indexes) + 1)), job
    # Every query of the generated dashboard names metrics the processes really export.
    board = json.loads((fleet.directory / "run" / "metrics" / "grafana" / "dashboards" / "synfleet.json").read_text())
    validate(board)
    for expr in panel_queries(board):
        assert query_metric_names(expr) <= names, (expr, query_metric_names(expr) - names)

    # A real Prometheus with this config (scraping every second) sees every process up, labelled.
    config["global"]["scrape_interval"] = "1s"
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "prometheus.yml").write_text(yaml.safe_dump(config))
        with helpers.prometheus(Path(scratch) / "prometheus.yml", Path(scratch) / "data") as port:
            deadline, seen = time.monotonic() + 60, {}
            while time.monotonic() < deadline and len(seen) < len(labels):
                time.sleep(1)
                try:
                    answer = httpx.get(
                        f"http://127.0.0.1:{port}/api/v1/query", params={"query": 'up{job!="nginx"} == 1'}
                    ).json()
                except httpx.HTTPError:
                    continue
                seen = {r["metric"]["instance"]: r["metric"] for r in answer.get("data", {}).get("result", [])}
    assert set(seen) == set(labels)
    for instance, metric in seen.items():
        assert {k: metric[k] for k in ("job", "index", "instance", "server")} == labels[instance]


def test_top_shows_every_process_from_its_metrics(fleet: Fleet) -> None:
    result = fleet.synfleet("top", "--count", "1", "--interval", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    for worker in fleet.plan.fleet.workers:
        row = rf"│ {worker.name}\s+│ {fleet.plan.fleet.group(worker.name)}\s+│\s+\d+%"
        assert re.search(row, result.stdout), (worker.name, result.stdout)
    assert "no answer" not in result.stdout
    assert re.search(r"nginx: \d+ connections, [0-9.]+ requests/s", result.stdout), result.stdout


def worker_pid(fleet: Fleet, worker: str) -> int:
    for line in fleet.status().splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 3 and cells[1] == worker:
            return int(cells[3])
    raise AssertionError(f"{worker} not in status:\n{fleet.status()}")


def test_killed_room_worker_is_restarted_and_nothing_acknowledged_is_lost(fleet: Fleet) -> None:
    room = asyncio.run(new_room(fleet, "kill -9"))
    victim = fleet.plan.upstreams["synapse_inbound_room_workers"].worker_for(room[1:])
    assert victim is not None
    old_pid = worker_pid(fleet, victim)
    socket_path = fleet.directory / "run" / "sockets" / f"synapse_inbound_{victim}.sock"
    killed_at: list[float] = []

    def kill() -> None:
        os.kill(old_pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    acknowledged, failures = asyncio.run(send_stream(fleet, room, kill))
    while not socket_healthy(socket_path) and time.monotonic() - killed_at[0] < 120:
        time.sleep(0.2)
    recovery = time.monotonic() - killed_at[0]
    assert socket_healthy(socket_path), f"{victim} did not come back"
    assert worker_pid(fleet, victim) != old_pid
    print(
        f"\n[{fleet.profile}] kill -9 {victim}: {len(acknowledged)} sends acknowledged, {failures} failed, "
        f"healthy again after {recovery:.1f}s; every acknowledged message is in /messages once"
    )
    # Sends are PUTs with a transaction ID: nginx retries them on another room worker while the
    # victim is down, so none may fail.
    assert failures == 0 and len(acknowledged) == 120
    check_serves_again(fleet, room, victim)


def test_synapse_processes_are_forks_of_the_supervisor_with_their_own_reactor(fleet: Fleet) -> None:
    """synapse.start = "fork", the default: every Synapse process (the restarted one too) is a
    child of the supervisor that imported Synapse, shares that import's pages, looks like an exec
    start in `ps`, and has an epoll of its own (the supervisor keeps none)."""
    data = json.loads(fleet.synfleet("status", "--json").stdout)
    supervisor = data["supervisor"]["pid"]
    processes = {p["name"]: p for p in data["processes"]}
    epolls = []
    for name in [w.name for w in fleet.plan.fleet.workers]:
        pid = processes[name]["pid"]
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == supervisor, name
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        module = "homeserver" if name == "main" else "generic_worker"
        assert f"-m synapse.app.{module} --config-path" in command, command
        assert name == "main" or command.endswith(f"/workers/{name}.yaml"), command
        [epoll] = helpers.descriptors(pid, "anon_inode:[eventpoll]")
        epolls.append((pid, epoll))
        assert processes[name]["uss_bytes"] < 0.75 * processes[name]["rss_bytes"], f"{name} shares little: {data}"
    assert helpers.descriptors(supervisor, "anon_inode:[eventpoll]") == []
    for i, (pid, fd) in enumerate(epolls):
        assert not any(helpers.same_open_file(pid, fd, other, other_fd) for other, other_fd in epolls[i + 1 :])


def test_status_json_has_the_tables_figures(fleet: Fleet) -> None:
    result = fleet.synfleet("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["running"] is True and data["server_name"] == "localhost" and data["unhealthy"] == []
    processes = {p["name"]: p for p in data["processes"]}
    assert {w.name for w in fleet.plan.fleet.workers} <= set(processes)
    assert {"nginx", "postgres", "redis"} <= set(processes)
    assert processes["main"]["pid"] == worker_pid(fleet, "main")
    assert all(p["healthy"] and p["state"] == "running" and p["rss_bytes"] > 0 for p in processes.values())
    assert all(0 < p["uss_bytes"] <= p["pss_bytes"] <= p["rss_bytes"] for p in processes.values())
    assert data["total_rss_bytes"] == sum(p["rss_bytes"] for p in processes.values())
    assert data["total_pss_bytes"] == sum(p["pss_bytes"] for p in processes.values())
    assert data["supervisor"]["pid"] and data["supervisor"]["pss_bytes"] > 0


def test_status_and_top_into_a_pipe_print_every_name_and_socket_whole(fleet: Fleet) -> None:
    """Redirected, as from cron or ssh: at any COLUMNS no cell is cut."""
    narrow = helpers.columns_env(40)
    table = fleet.synfleet("status", env=narrow)
    assert table.returncode == 0, table.stdout + table.stderr
    rows = {
        cells[1]: cells
        for line in table.stdout.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) == 10
    }
    for process in json.loads(fleet.synfleet("status", "--json").stdout)["processes"]:
        assert process["name"] in rows, (process["name"], table.stdout)
        assert rows[process["name"]][8] == (process["socket"] or ""), (process, table.stdout)
    top = fleet.synfleet("top", "--count", "1", "--interval", "1", env=narrow)
    assert top.returncode == 0, top.stdout + top.stderr
    for worker in fleet.plan.fleet.workers:
        assert re.search(rf"│ {worker.name}\s+│ {fleet.plan.fleet.group(worker.name)}\s+│\s+\d+%", top.stdout), (
            top.stdout
        )


@pytest.mark.parametrize("columns", [40, 200])
def test_up_names_the_next_commands_on_one_line(fleet: Fleet, columns: int) -> None:
    """On a terminal of any width and into a pipe (`up` on the running fleet checks it and says the same)."""
    directory = fleet.directory
    hint = f"next: synfleet user add NAME --password ... --dir {directory}; stop with: synfleet down --dir {directory}"
    terminal = helpers.synfleet_in_terminal("up", "--dir", str(fleet.directory), columns=columns, timeout=300)
    piped = fleet.synfleet("up", env=helpers.columns_env(columns)).stdout
    for output in (terminal, piped):
        assert hint in [line.strip() for line in output.splitlines()], output


def test_a_started_process_that_answers_its_health_check_is_running(fleet: Fleet) -> None:
    """supervisord says STARTING for a few seconds after a start (startsecs) even when the process
    already answers its health check: status shows it running then, not starting and healthy."""
    paths, spec = RunPaths(fleet.directory), load_spec(fleet.directory)
    supervisor = Supervisor(paths)
    supervisor.stop("nginx")
    supervisor.start("nginx")

    def nginx() -> ProcessStatus:
        return next(row for row in status(paths, spec).processes if row.name == "nginx")

    deadline = time.monotonic() + 60
    while not (row := nginx()).healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (row.state, row.healthy) == ("RUNNING", True), row
    while supervisor.info()["nginx"].state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)  # as the other tests found it


def test_down_then_up_keeps_users_and_rooms(fleet: Fleet) -> None:
    pids = [int(p) for p in re.findall(r"│\s*(?:running|starting)\s*│\s*(\d+)", fleet.status())]
    assert pids
    down = fleet.synfleet("down")
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    sockets = list((fleet.directory / "run" / "sockets").iterdir())
    assert not [s for s in sockets if s.is_socket()], sockets
    assert fleet.synfleet("status").returncode == 3

    up = fleet.synfleet("up")
    assert up.returncode == 0, up.stdout + up.stderr
    check_rooms_still_there(fleet)
