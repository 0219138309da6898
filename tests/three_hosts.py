"""A fleet on three hosts of a lab (network namespaces on one private network): a runs nginx,
main, PostgreSQL and Redis; b runs rooms1 and client_sync1; c runs rooms2 and tasks1 (the event
persister); x is on the network but not in the fleet. What the native run and the compose projects
per host must both show."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

import helpers
from conftest import FLEET_TIMEOUT, synfleet
from flows import check_routing, conversation, login
from synfleet.lab import Lab
from synfleet.lab.federation import in_host
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.nginx import access_lines
from synfleet.routing.plan import RoutingPlan
from synfleet.run.paths import RunPaths, deployed_plan
from synfleet.run.postgres import query

HOSTS = ("a", "b", "c")
WORKERS = {"client_sync": 1, "rooms": 2, "tasks": 1, "client_reader": 0, "federation_reader": 0, "media": 0}
WORKERS["sender"] = 0
PLACEMENT = {"default": "a", "rooms": ["b", "c"], "client_sync": "b", "tasks": "c"}
ROOMS = "synapse_inbound_room_workers"
#: What each host runs.
SHARES = {
    "a": {"postgres", "redis", "main", "nginx"},
    "b": {"client_sync1", "rooms1", "nginx"},
    "c": {"rooms2", "tasks1", "nginx"},
}


def write_fleet(lab: Lab, directory: Path, port: int, **sections: dict[str, Any]) -> None:
    """The small profile with the workers above, placed on the lab's hosts a, b and c."""
    spec = helpers.profile_with(
        "small", listen={"http_port": port}, synapse={"relaxed_rate_limits": True}, workers=WORKERS, **sections
    )
    data = spec.model_dump(mode="json")
    data["hosts"] = {name: {"address": lab[name].address} for name in HOSTS}
    data["placement"] = PLACEMENT
    (directory / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(data)))


@dataclass
class Hosts:
    """The fleet as the flows see it (clients on host a, where nginx listens on 127.0.0.1), run
    natively (`synfleet up --host`) on each host."""

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

    def query(self, sql: str) -> list[str]:
        """Rows of ``sql`` on the fleet's database (on host a), as psql prints them."""
        return query(RunPaths(self.directory, "a"), self.spec.database, sql, "cannot query the database")

    def synfleet(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """:func:`synfleet` on this directory, run in lab host ``host``."""
        return synfleet(*args, directory=self.directory, timeout=FLEET_TIMEOUT, runner=self.lab[host].run)

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


def conversation_across_hosts(hosts: Hosts) -> None:
    """The conversation flow and 100 messages through nginx on a; every request on the worker
    `synfleet route` predicts; every event persisted by tasks1 on c and read by bob through the
    sync worker on b."""
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
    writers = hosts.query(
        "SELECT DISTINCT instance_name FROM events WHERE event_id IN ("
        + ",".join(f"'{event}'" for _, event in sent)
        + ")"
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
    b_sync = spec.fleet.worker("client_sync1").inbound_link
    syncs = [line for line in hosts.access_log() if "/sync" in line["url"]]
    assert syncs and all(line["addr"] == b_sync for line in syncs), {line["addr"] for line in syncs}


def outsider_refused(hosts: Hosts) -> None:
    """From host x, not in the fleet: every link answers 403, Redis asks for its password, and
    PostgreSQL has no pg_hba.conf entry for it even with the right password."""
    spec = hosts.spec
    fleet = spec.fleet
    links = []
    for name in ("main", "client_sync1", "tasks1"):
        links.append((fleet.host_of(name), fleet.worker(name).replication_port))
    for name in ("client_sync1", "rooms1", "rooms2"):
        links.append((fleet.host_of(name), fleet.worker(name).inbound_port))
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
