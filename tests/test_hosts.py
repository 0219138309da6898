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
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from nio import AsyncClient

import helpers
from flows import PASSWORD, check_routing, conversation, login
from synfleet.lab import Lab, unavailable_reason
from synfleet.lab.federation import in_host
from synfleet.lab.netns import pids
from synfleet.model.file import FleetSpec
from synfleet.model.load import load_spec
from synfleet.nginx.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.nginx import access_lines
from synfleet.routing.plan import RoutingPlan
from synfleet.run.paths import RunPaths, deployed_plan
from synfleet.run.postgres import query
from synfleet.system import free_port

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(unavailable_reason()), reason=str(unavailable_reason()))]

HOSTS = ("a", "b", "c")
WORKERS = {"client_sync": 1, "rooms": 2, "tasks": 1, "client_reader": 0, "federation_reader": 0, "media": 0}
WORKERS["senders"] = 0
PLACEMENT = {"default": "a", "rooms": ["b", "c"], "client_sync": "b", "tasks": "c"}
ROOMS = "synapse_inbound_room_workers"


@dataclass
class Hosts:
    """The fleet as the flows see it (clients on host a, where nginx listens on 127.0.0.1)."""

    lab: Lab
    directory: Path
    port: int
    profile: str = "three hosts"
    rooms: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spec(self) -> FleetSpec:
        return load_spec(self.directory)

    @property
    def plan(self) -> RoutingPlan:
        return deployed_plan(RunPaths(self.directory), self.spec)

    def access_log(self) -> list[dict[str, str]]:
        return access_lines(RunPaths(self.directory, "a").access_log)

    def synfleet(self, host: str, *args: str) -> Any:
        return self.lab[host].run(
            [sys.executable, "-m", "synfleet", *args, "--dir", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=600,
        )

    def client(self, work: Any) -> Any:
        """``work()`` (a coroutine function) run by a client on host a."""
        return in_host(self.lab["a"], work)

    def room_on(self, worker: str) -> str:
        """A new room that nginx hashes to room worker ``worker``."""

        async def make() -> str:
            alice, bob = await login(self, "alice"), await login(self, "bob")
            try:
                for _ in range(50):
                    room = str((await alice.room_create(name=f"on {worker}", invite=[bob.user_id])).room_id)
                    if self.plan.upstreams[ROOMS].worker_for(room[1:]) == worker:
                        await bob.join(room)
                        self.rooms.append(room)
                        return room
            finally:
                await alice.close()
                await bob.close()
            raise AssertionError(f"no room hashed to {worker} in 50 tries")

        return str(self.client(make))


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    with world_readable_tempdir("synfleet-hosts-") as directory, Lab([*HOSTS, "x"]) as lab:
        port = free_port()
        data = helpers.profile_with(
            "small", listen={"http_port": port}, synapse={"relaxed_rate_limits": True}, workers=WORKERS
        ).model_dump(mode="json")
        data["hosts"] = {name: {"address": lab[name].address} for name in HOSTS}
        data["placement"] = PLACEMENT
        (directory / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(data)))
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
    for host, expected in (
        ("a", {"postgres", "redis", "main", "nginx"}),
        ("b", {"client_sync1", "rooms1", "nginx"}),
        ("c", {"rooms2", "tasks1", "nginx"}),
    ):
        status = hosts.synfleet(host, "status", "--host", host, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert {p["name"] for p in json.loads(status.stdout)["processes"]} == expected


def test_conversation_routing_and_replication_across_hosts(hosts: Hosts) -> None:
    hosts.client(lambda: conversation(hosts))
    shared = [hosts.room_on(worker) for worker in ("rooms1", "rooms2")]  # alice and bob in each

    async def hundred() -> list[tuple[str, str]]:
        alice = await login(hosts, "alice")
        sent = []
        try:
            for i in range(100):
                room = shared[i % 2]
                answer = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"across {i}"})
                sent.append((room, answer.event_id))
        finally:
            await alice.close()
        return sent

    sent = hosts.client(hundred)
    assert len(sent) == 100
    check_routing(hosts)
    # every event was persisted by tasks1 on host c ...
    spec = hosts.spec
    writers = query(
        RunPaths(hosts.directory, "a"),
        spec.database,
        "SELECT DISTINCT instance_name FROM events WHERE event_id IN ("
        + ",".join(f"'{event}'" for _, event in sent)
        + ")",
        "cannot read the events",
    )
    assert writers == ["tasks1"], writers

    # ... and reached bob, in the rooms he is in, through the sync worker on host b.
    async def bob_reads() -> tuple[set[str], set[str]]:
        bob = await login(hosts, "bob")
        try:
            joined = set((await bob.joined_rooms()).rooms)
            seen: set[str] = set()
            for room in joined & set(hosts.rooms):
                page = await bob.room_messages(room, limit=200)
                seen |= {e.event_id for e in page.chunk}
            return joined, seen
        finally:
            await bob.close()

    joined, seen = hosts.client(bob_reads)
    theirs = {event for room, event in sent if room in joined}
    assert len(theirs) == 100 and theirs <= seen
    b_sync = spec.address_of("b", spec.inbound_port("client_sync1"))
    syncs = [line for line in hosts.access_log() if "/sync" in line["url"]]
    assert syncs and all(line["addr"] == b_sync for line in syncs), {line["addr"] for line in syncs}


def test_outsider_is_refused_by_every_link(hosts: Hosts) -> None:
    spec = hosts.spec
    links = []
    for name in ("main", "client_sync1", "tasks1"):
        links.append((spec.host_of(name), spec.replication_port(name)))
    for name in ("client_sync1", "rooms1", "rooms2"):
        links.append((spec.host_of(name), spec.inbound_port(name)))
    password = (hosts.directory / "secrets" / "postgres_password").read_text().strip()
    found: dict[str, Any] = {}

    async def probe() -> None:
        for host, port in links:
            with socket.create_connection((hosts.lab[host].address, port), timeout=5) as conn:
                conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                found[f"{host}:{port}"] = conn.recv(64)
        with socket.create_connection((hosts.lab["a"].address, spec.redis.port), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            found["redis"] = conn.recv(64)
        try:
            psycopg2.connect(
                host=hosts.lab["a"].address,
                port=spec.database.port,
                user=spec.database.user,
                password=password,
                dbname=spec.database.name,
                connect_timeout=5,
            ).close()
            found["postgres"] = "connected"
        except psycopg2.OperationalError as error:
            found["postgres"] = str(error)

    in_host(hosts.lab["x"], probe)
    for link, answer in found.items():
        if link == "redis":
            assert answer.startswith(b"-NOAUTH"), answer
        elif link == "postgres":
            assert "no pg_hba.conf entry" in answer, answer
        else:
            assert answer.startswith(b"HTTP/1.1 403"), (link, answer)
    assert len(found) == len(links) + 2


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
    assert sends[-1]["addr"] == spec.address_of("c", spec.inbound_port("rooms2")), sends[-1]
