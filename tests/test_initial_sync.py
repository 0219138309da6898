"""An initial-sync pool: a burst of initial syncs of a large account, while live clients sync
incrementally and receive messages, on one running fleet (the small profile with one initial-sync
worker).

The comparison runs in the same fleet, phase by phase: in a "shared" phase the burst goes straight
to client_sync1's socket, so live and initial syncs share that process as in a fleet without the
pool; in a "pool" phase it goes through nginx, which sends it to initial_sync1. Phases alternate
(shared, pool, pool, shared), so drift on a shared machine falls on both. The figures are printed;
what is asserted is correctness: every message reached every live client in every phase, and every
request nginx served went to the worker `synfleet route` predicts (initial syncs to the pool, live
syncs to client_sync1).
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from conftest import RunningFleet, fleet_under_test
from flows import check_routing, worker_of
from synfleet.bench.initial_sync import BurstLoad, PhaseFigures, Population, measured_phase, populate, register_accounts
from synfleet.model.load import load_spec
from synfleet.render.nginx import access_lines
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.run.paths import RunPaths, deployed_plan
from synfleet.run.supervisor import Supervisor
from synfleet.system import process_tree_cpu

pytestmark = pytest.mark.integration

ROOMS = 50  # the large account's rooms
MESSAGES = 4  # messages per room besides its creation events
LIVE_CLIENTS = 20
INITIAL_CLIENTS = 30
PHASE_SECONDS = 15.0
ORDER = ("shared", "pool", "pool", "shared")


@dataclass
class Fleet(RunningFleet):
    rooms: list[str] = field(default_factory=list)
    population: Population | None = None

    def after_up(self) -> None:
        accounts = register_accounts(RunPaths(self.directory), "burst", LIVE_CLIENTS + 2)
        large, sender, live = accounts[0], accounts[1], accounts[2:]
        self.population = asyncio.run(populate(self.url, large, live, sender, ROOMS, MESSAGES))
        self.rooms = list(self.population.rooms)

    @property
    def plan(self) -> RoutingPlan:
        return deployed_plan(RunPaths(self.directory), load_spec(self.directory).fleet)

    def access_log(self) -> list[dict[str, str]]:
        return access_lines(RunPaths(self.directory).access_log)

    def cpu(self) -> dict[str, float]:
        pids = {name: info.pid for name, info in Supervisor(RunPaths(self.directory)).info().items() if info.pid}
        return process_tree_cpu(pids)


fleet = fleet_under_test(Fleet, "small", workers={"initial_sync": 1}, synapse={"relaxed_rate_limits": True})


def _report(phases: list[PhaseFigures]) -> dict[str, object]:
    print(
        f"\n{'phase':8} {'initial syncs':>13} {'p50 ms':>7} {'live syncs':>10} {'sent':>5} "
        f"{'delivery p50':>12} {'p99 ms':>7} {'load':>5}  CPU s (client_sync1, initial_sync1, main)"
    )
    for p in phases:
        figures = p.as_json()
        cpu = p.cpu_seconds
        print(
            f"{p.name:8} {p.initial_syncs:13} {figures['initial_sync_p50_ms']:7} {p.incremental_syncs:10} "
            f"{p.sent:5} {figures['delivery_p50_ms']:12} {figures['delivery_p99_ms']:7} {p.load_average:5.1f}  "
            f"{cpu.get('client_sync1', 0):.1f}, {cpu.get('initial_sync1', 0):.1f}, {cpu.get('main', 0):.1f}"
        )
    pool = [p for p in phases if p.name == "pool"]
    shared = [p for p in phases if p.name == "shared"]
    initial_cpu = sum(p.cpu_seconds.get("initial_sync1", 0.0) for p in pool) / sum(p.initial_syncs for p in pool)
    incremental_cpu = sum(p.cpu_seconds.get("client_sync1", 0.0) for p in pool) / sum(p.incremental_syncs for p in pool)
    summary = {
        "rooms": ROOMS,
        "initial_clients": INITIAL_CLIENTS,
        "live_clients": LIVE_CLIENTS,
        "delivery_p99_ms": {
            "shared": [p.as_json()["delivery_p99_ms"] for p in shared],
            "pool": [p.as_json()["delivery_p99_ms"] for p in pool],
        },
        "delivery_p99_ms_median": {
            "shared": statistics.median(p.as_json()["delivery_p99_ms"] for p in shared),
            "pool": statistics.median(p.as_json()["delivery_p99_ms"] for p in pool),
        },
        "initial_syncs_per_s": {
            name: round(sum(p.initial_syncs for p in group) / sum(p.seconds for p in group), 2)
            for name, group in (("shared", shared), ("pool", pool))
        },
        "initial_sync_cpu_s": round(initial_cpu, 4),
        "incremental_sync_cpu_s": round(incremental_cpu, 5),
    }
    print("initial-sync pool figures:", json.dumps(summary))
    return summary


def test_initial_syncs_apart_from_live_sync(fleet: Fleet) -> None:
    assert fleet.population is not None
    load = BurstLoad(fleet.url, fleet.population)
    sync_socket = RunPaths(fleet.directory).layout.inbound_socket("client_sync1")
    lines_before = len(fleet.access_log())
    phases = []
    for name in ORDER:
        transport = httpx.AsyncHTTPTransport(uds=sync_socket) if name == "shared" else None
        phases.append(
            measured_phase(
                load,
                fleet.cpu,
                name,
                seconds=PHASE_SECONDS,
                initial_clients=INITIAL_CLIENTS,
                initial_transport=transport,
            )
        )
    _report(phases)

    for phase in phases:
        assert phase.sent > 0 and phase.initial_syncs > 0, phase.as_json()
        assert phase.undelivered == 0, f"{phase.name}: {phase.undelivered} deliveries missing"
        assert not phase.errors, phase.as_json()

    # Every request nginx served went where `synfleet route` says; the bursts through nginx went to
    # the pool, the live syncs to client_sync1.
    check_routing(fleet)
    plan = fleet.plan
    served: Counter[tuple[str, str]] = Counter()
    for line in fleet.access_log()[lines_before:]:
        if line["addr"] == "-":
            continue
        rule = evaluate(plan, line["method"], line["url"]).rule or ""
        served[rule, worker_of(line["addr"], plan)] += 1
    pool_bursts = sum(p.initial_syncs for p in phases if p.name == "pool")
    assert served["initial_sync", "initial_sync1"] >= pool_bursts
    assert served["sync", "client_sync1"] >= sum(p.incremental_syncs for p in phases)
    sync_routes = {key for key in served if key[0] in ("initial_sync", "sync")}
    assert sync_routes == {("initial_sync", "initial_sync1"), ("sync", "client_sync1")}, served
