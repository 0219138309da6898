"""The Python evaluator and real nginx agree on every request: rule, upstream and worker."""

from __future__ import annotations

import random
import zlib
from collections import Counter

import pytest

from helpers import fleet_case, live_nginx
from synfleet.nginx.binary.harness import Probe, send_all
from synfleet.routing.corpus import Corpus, legacy_room_id, v12_room_id
from synfleet.routing.evaluate import evaluate
from synfleet.routing.table import ROUTES

FLEETS = (
    "seed",
    "one_room_worker",
    "seven_rooms_two_of_each",
    "dedicated_writers",
    "monolith_locked_admin",
    "initial_sync_pool",
    "all_dedicated_writers",
)
#: Fleets whose corpus must exercise every rule they have in force.
EVERY_RULE = ("seed", "initial_sync_pool")


@pytest.mark.integration
@pytest.mark.parametrize("fleet_name", FLEETS)
def test_python_and_nginx_pick_the_same_worker(fleet_name: str) -> None:
    corpus = list(Corpus(seed=zlib.crc32(fleet_name.encode()), size=2400))
    with live_nginx(fleet_case(fleet_name)) as live:
        answers = send_all(live.port, corpus)
        live.nginx.stop()
        log = live.access_log()
    assert len(answers) == len(corpus) == len(log)

    mismatches = []
    routes: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    for probe, (status, worker) in zip(corpus, answers, strict=True):
        decision = evaluate(live.plan, probe.method, probe.url, dict(probe.headers))
        if (status, worker) != (decision.status or 200, decision.worker):
            mismatches.append(
                f"{probe.method} {probe.url} {dict(probe.headers)}: nginx {(status, worker)}, python {decision}"
            )
        routes[decision.rule or f"answered {decision.status}"] += 1
        workers[worker or "-"] += 1
    # Log lines come per nginx worker process, not in request order; route and upstream depend on
    # the request line alone, so each line is checked against the evaluator on its own.
    for line in log:
        method, url = line["method"], line["url"]
        decision = evaluate(live.plan, method, url)
        if decision.rule and (line["route"], line["upstream"]) != (decision.rule, decision.upstream):
            mismatches.append(
                f"{method} {url}: nginx logged {line['route']} {line['upstream']}, "
                f"python {decision.rule} {decision.upstream}"
            )
    print(f"\n{fleet_name}: {len(corpus)} requests, {len(mismatches)} mismatches")
    print("  by rule:", dict(sorted(routes.items())))
    print("  by worker:", dict(sorted(workers.items())))
    assert not mismatches, "\n".join(mismatches[:20])
    if fleet_name in EVERY_RULE:
        unused = {rule.name for rule in live.plan.active} - set(routes)
        assert not unused, f"the corpus never exercised {sorted(unused)}"
    if fleet_name == "initial_sync_pool":
        assert len(live.plan.active) == len(ROUTES)
        assert {"initial_sync1", "initial_sync2", "client_sync1", "client_sync2"} <= set(workers)
    if fleet_name == "seven_rooms_two_of_each":
        assert {f"rooms{i}" for i in range(1, 8)} <= set(workers), "room requests did not spread"


@pytest.mark.integration
def test_random_rooms_hash_like_nginx() -> None:
    """A sample of random room IDs, both forms, goes to the worker nginx's ketama picks."""
    rng = random.Random(7)
    rooms = [v12_room_id(rng) if i % 2 else legacy_room_id(rng) for i in range(1500)]
    probes = [Probe("GET", f"/_matrix/client/v3/rooms/{room}/messages") for room in rooms]
    with live_nginx(fleet_case("seed")) as live:
        answers = send_all(live.port, probes)
    upstream = live.plan.upstreams["synapse_inbound_room_workers"]
    predicted = [upstream.worker_for(room[1:].split(":")[0]) for room in rooms]
    assert [worker for _, worker in answers] == predicted
    print(f"\n{len(rooms)} random rooms: nginx and Python agree on all; spread {Counter(predicted)}")
