"""A fleet on three hosts (network namespaces on one private network), each started with
`ip netns exec <host> synfleet up --host <name>`: a runs nginx, main, PostgreSQL and Redis; b runs
rooms1 and client_sync1; c runs rooms2 and tasks1 (the event persister). matrix-nio talks to nginx
on a. Every request reaches the worker `synfleet route` predicts; a message persisted on c reaches
its reader through the sync worker on b; host c is lost (every process killed) and comes back with
no acknowledged message lost; a fourth host of the network, not in the fleet, is refused by every
link between the fleet's hosts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from nio import AsyncClient

from flows import PASSWORD, login
from synfleet.lab import Lab, unavailable_reason
from synfleet.lab.netns import pids
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.system import free_port
from three_hosts import HOSTS, SHARES, Hosts, conversation_across_hosts, outsider_refused, write_fleet

pytestmark = [pytest.mark.integration, pytest.mark.prerequisite(unavailable_reason())]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    with world_readable_tempdir("synfleet-hosts-") as directory, Lab([*HOSTS, "x"]) as lab:
        port = free_port()
        write_fleet(lab, directory, port)
        fleet = Hosts(lab, directory, port)
        started: list[str] = []
        try:
            for host in HOSTS:
                up = fleet.synfleet(host, "up", "--host", host)
                assert up.returncode == 0, f"up --host {host}:\n{up.stdout}{up.stderr}"
                started.append(host)
                print(up.stdout)
            for user in ("alice", "bob"):
                added = fleet.synfleet("a", "user", "add", user, "--password", PASSWORD)
                assert added.returncode == 0, added.stderr
            yield fleet
        finally:
            for host in reversed(started):
                fleet.synfleet(host, "down", "--host", host)


def test_each_host_runs_its_share(hosts: Hosts) -> None:
    for host, expected in SHARES.items():
        status = hosts.synfleet(host, "status", "--host", host, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert {p["name"] for p in json.loads(status.stdout)["processes"]} == expected
    # without --host: which host runs what (the lab's hosts share this file system: all run "here")
    placement = hosts.synfleet("a", "status", "--json")
    assert placement.returncode == 0, placement.stdout + placement.stderr
    found = {h["name"]: (set(h["processes"]), h["running_here"]) for h in json.loads(placement.stdout)["hosts"]}
    assert found == {host: (expected, True) for host, expected in SHARES.items()}
    logs = hosts.synfleet("c", "logs", "--host", "c", "-n", "2")
    assert logs.returncode == 0, logs.stderr
    named = {line.split(":")[0] for line in logs.stdout.splitlines()}
    assert SHARES["c"] - {"nginx"} <= named <= SHARES["c"]  # nginx's links have logged nothing yet


def test_conversation_routing_and_replication_across_hosts(hosts: Hosts) -> None:
    conversation_across_hosts(hosts)


def test_outsider_is_refused_by_every_link(hosts: Hosts) -> None:
    outsider_refused(hosts)


def test_losing_host_c_loses_no_acknowledged_message(hosts: Hosts) -> None:
    room = hosts.room_on("rooms2")
    acknowledged: dict[str, float] = {}
    failed: list[float] = []
    stop = threading.Event()

    async def stream() -> None:
        alice = await login(hosts, "alice")
        try:
            i = 0
            while not stop.is_set():
                answer = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"loss {i}"})
                if hasattr(answer, "event_id"):
                    acknowledged[answer.event_id] = time.monotonic()
                else:
                    failed.append(time.monotonic())
                i += 1
                await asyncio.sleep(0.1)
        finally:
            await alice.close()

    sender = threading.Thread(target=lambda: hosts.client(stream))
    sender.start()
    try:
        time.sleep(3)
        lost_at = time.monotonic()
        victims = pids(hosts.lab["c"].netns)
        assert victims, "nothing runs on host c"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        time.sleep(5)
        up = hosts.synfleet("c", "up", "--host", "c")
        assert up.returncode == 0, up.stdout + up.stderr
        back_at = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        sender.join(120)
    after = [t for t in acknowledged.values() if t > back_at]
    outage = min(after) - lost_at if after else float("inf")
    print(
        f"\n[three hosts] host c killed ({len(victims)} processes): {len(acknowledged)} sends acknowledged, "
        f"{len(failed)} failed; sends acknowledged again {outage:.1f}s after the loss"
    )
    assert after, "no send succeeded after host c came back"

    async def present() -> set[str]:
        alice: AsyncClient = await login(hosts, "alice")
        try:
            page = await alice.room_messages(room, limit=len(acknowledged) + 50)
            return {e.event_id for e in page.chunk}
        finally:
            await alice.close()

    missing = set(acknowledged) - hosts.client(present)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    status = hosts.synfleet("c", "status", "--host", "c")
    assert status.returncode == 0, status.stdout
    sends = [line for line in hosts.access_log() if room[1:] in line["url"] and "/send/" in line["url"]]
    spec = hosts.spec
    assert sends[-1]["addr"] == spec.fleet.worker("rooms2").inbound_link, sends[-1]
