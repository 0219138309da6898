"""Day two on a running fleet. `synfleet apply` under traffic: room workers grow 2 -> 3 and shrink back with
no failed send, no lost message and no other process restarted; the rooms that move are those the
dry run names, and the new worker serves them. A change Synapse needs every process restarted for
(a second event persister) loses no acknowledged message either. `synfleet upgrade` refuses a
database too new for the installed Synapse and restarts main alone before the workers; for compose
it renders the new image tag and prints the order."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient
from nio.responses import SyncResponse
from synapse.storage.schema import SCHEMA_VERSION

import helpers
from conftest import FLEET_TIMEOUT, RunningFleet, fleet_under_test, synfleet
from flows import PASSWORD, worker_of
from synfleet.model.load import load_spec
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.nginx import access_lines
from synfleet.run.paths import RunPaths

pytestmark = pytest.mark.integration

ROOMS = 20


@dataclass
class Fleet(RunningFleet):
    rooms: list[str] = field(default_factory=list)

    def after_up(self) -> None:
        for user in ("alice", "bob"):
            assert self.synfleet("user", "add", user, "--password", PASSWORD).returncode == 0

        async def make_rooms() -> None:
            alice, bob = AsyncClient(self.url, "@alice:localhost"), AsyncClient(self.url, "@bob:localhost")
            await alice.login(PASSWORD)
            await bob.login(PASSWORD)
            for i in range(ROOMS):
                room = (await alice.room_create(name=f"apply {i}", invite=[bob.user_id])).room_id
                await bob.join(room)
                self.rooms.append(room)
            await alice.close()
            await bob.close()

        asyncio.run(make_rooms())

    def write(self, **workers: int) -> None:
        spec = helpers.profile_with(
            "small", listen={"http_port": self.port}, synapse={"relaxed_rate_limits": True}, workers=workers
        )
        (self.directory / "fleet.toml").write_text(fleet_toml(spec))

    def pids(self) -> dict[str, int]:
        data = json.loads(self.synfleet("status", "--json").stdout)
        return {p["name"]: p["pid"] for p in data["processes"]}


@dataclass
class Traffic:
    """alice sends to every room in turn; bob long-polls sync. Runs in a thread until stopped."""

    fleet: Fleet
    retry: bool = False  # resend a failed message with the same transaction ID, as clients do
    acknowledged: dict[str, tuple[str, float]] = field(default_factory=dict)  # event ID -> (room, time)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    synced: int = 0
    retried: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    async def run(self) -> None:
        alice, bob = AsyncClient(self.fleet.url, "@alice:localhost"), AsyncClient(self.fleet.url, "@bob:localhost")
        await alice.login(PASSWORD)
        await bob.login(PASSWORD)
        await bob.sync(timeout=0)

        async def sync() -> None:
            while not self.stop.is_set():
                response = await bob.sync(timeout=2000, since=bob.next_batch)
                if isinstance(response, SyncResponse):
                    self.synced += 1
                else:
                    await asyncio.sleep(0.5)

        syncing = asyncio.create_task(sync())
        i = 0
        try:
            while not self.stop.is_set():
                room = self.fleet.rooms[i % len(self.fleet.rooms)]
                content = {"msgtype": "m.text", "body": f"t{self.run_id}-{i}"}
                transaction = uuid.uuid4().hex
                response = await alice.room_send(room, "m.room.message", content, tx_id=transaction)
                while self.retry and not hasattr(response, "event_id"):
                    self.retried += 1
                    await asyncio.sleep(0.25)
                    response = await alice.room_send(room, "m.room.message", content, tx_id=transaction)
                if hasattr(response, "event_id"):
                    self.acknowledged[response.event_id] = (room, time.monotonic())
                else:
                    self.failures.append(f"{room}: {response}")
                i += 1
                await asyncio.sleep(0.02)
        finally:
            await syncing
            await alice.close()
            await bob.close()

    def longest_gap(self) -> float:
        times = sorted(t for _, t in self.acknowledged.values())
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


fleet = fleet_under_test(Fleet, "small", synapse={"relaxed_rate_limits": True}, workers={"rooms": 2})


def under_traffic(fleet: Fleet, change: Any, retry: bool = False) -> tuple[Traffic, Any]:
    traffic = Traffic(fleet, retry)
    thread = threading.Thread(target=lambda: asyncio.run(traffic.run()))
    thread.start()
    try:
        time.sleep(3)
        result = change()
        time.sleep(3)
    finally:
        traffic.stop.set()
        thread.join(60)
    return traffic, result


def check_nothing_lost(fleet: Fleet, traffic: Traffic) -> None:
    async def read() -> tuple[set[str], Counter[str]]:
        alice = AsyncClient(fleet.url, "@alice:localhost")
        await alice.login(PASSWORD)
        present: set[str] = set()
        bodies: Counter[str] = Counter()
        for room in fleet.rooms:
            page = await alice.room_messages(room, limit=1000)
            present |= {e.event_id for e in page.chunk}
            bodies.update(body for e in page.chunk if (body := getattr(e, "body", "")).startswith("t"))
        await alice.close()
        return present, bodies

    assert not traffic.failures, traffic.failures[:3]
    assert traffic.synced > 0
    present, bodies = asyncio.run(read())
    missing = set(traffic.acknowledged) - present
    assert not missing, f"{len(missing)} acknowledged messages are missing"
    assert not [body for body, seen in bodies.items() if seen > 1], "a retried send was stored twice"


def moved_rooms(dry_run: str) -> dict[str, tuple[str, str]]:
    return {m[1]: (m[2], m[3]) for m in re.finditer(r"^\s+(!\S+): (\w+) -> (\w+)$", dry_run, re.M)}


def apply(fleet: Fleet) -> tuple[str, str]:
    dry = fleet.synfleet("apply", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    done = fleet.synfleet("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    return dry.stdout, done.stdout


def test_grow_and_shrink_room_workers_under_traffic(fleet: Fleet) -> None:
    before = fleet.pids()
    log = RunPaths(fleet.directory).access_log

    fleet.write(rooms=3)
    began = time.monotonic()
    traffic, (dry, done) = under_traffic(fleet, lambda: apply(fleet))
    print(f"\ngrow 2 -> 3: {done.strip().splitlines()[-1]}; longest gap between sends {traffic.longest_gap():.2f}s")
    check_nothing_lost(fleet, traffic)
    assert "untouched:" in dry and "start: rooms3" in dry
    moved = moved_rooms(dry)
    assert moved and all(target == "rooms3" for _, target in moved.values()), dry
    after = fleet.pids()
    assert set(after) == set(before) | {"rooms3"}
    assert {name: pid for name, pid in after.items() if name != "rooms3"} == before, "another process restarted"
    # Each room's sends since the change went to the worker the dry run names (or kept theirs).
    since = [line for line in access_lines(log) if "/send/" in line["url"] and line["addr"] != "-"]
    last: dict[str, str] = {}
    for line in since:
        for room in fleet.rooms:
            if room[1:] in line["url"]:
                last[room] = worker_of(line["addr"])
    for room in fleet.rooms:
        if room in moved:
            assert last[room] == "rooms3", (room, last.get(room))
        else:
            assert last[room] != "rooms3", room
    print(f"{len(moved)} of {ROOMS} rooms moved to rooms3, as the dry run said ({time.monotonic() - began:.1f}s)")

    fleet.write(rooms=2)
    traffic, (dry, done) = under_traffic(fleet, lambda: apply(fleet))
    print(f"shrink 3 -> 2: {done.strip().splitlines()[-1]}; longest gap between sends {traffic.longest_gap():.2f}s")
    check_nothing_lost(fleet, traffic)
    assert "stop: rooms3" in dry
    assert set(moved_rooms(dry)) == set(moved), "shrinking must move back exactly the rooms that moved"
    assert fleet.pids() == before


def test_a_change_that_restarts_everything_loses_nothing(fleet: Fleet) -> None:
    fleet.write(rooms=2, tasks=2)  # a second event persister: instance_map and stream_writers change
    traffic, (dry, done) = under_traffic(fleet, lambda: apply(fleet), retry=True)
    assert "every process restarted" in dry and "start: tasks2" in dry
    check_nothing_lost(fleet, traffic)
    print(
        f"\nsecond event persister: {done.strip().splitlines()[-1]}; {len(traffic.acknowledged)} sends "
        f"({traffic.retried} retries), longest send outage {traffic.longest_gap():.2f}s"
    )
    status = fleet.synfleet("status", "--json")
    assert status.returncode == 0 and "tasks2" in {p["name"] for p in json.loads(status.stdout)["processes"]}


def test_a_change_of_each_process_own_files_restarts_them_one_by_one(fleet: Fleet) -> None:
    pids = fleet.pids()
    text = (fleet.directory / "fleet.toml").read_text()
    assert 'log_level = "WARNING"' in text
    (fleet.directory / "fleet.toml").write_text(text.replace('log_level = "WARNING"', 'log_level = "INFO"'))
    try:
        dry, _ = apply(fleet)
    finally:
        (fleet.directory / "fleet.toml").write_text(text)
    assert "every process restarted" not in dry and "restart: main" in dry, dry
    after = fleet.pids()
    synapse = {w.name for w in load_spec(fleet.directory).fleet.workers}
    assert all(after[name] != pids[name] for name in synapse)
    assert all(after[name] == pids[name] for name in pids if name not in synapse), "only Synapse restarts"
    assert fleet.synfleet("status").returncode == 0
    back = fleet.synfleet("apply")
    assert back.returncode == 0, back.stderr


def test_apply_refuses_a_rename_and_a_stopped_fleet(fleet: Fleet, tmp_path: Path) -> None:
    current = (fleet.directory / "fleet.toml").read_text()
    renamed = current.replace('server_name = "localhost"', 'server_name = "other.example"')
    assert renamed != current
    (fleet.directory / "fleet.toml").write_text(renamed)
    pids = fleet.pids()
    result = fleet.synfleet("apply")
    assert result.returncode == 2 and "cannot be renamed" in result.stderr, result.stderr
    assert fleet.pids() == pids
    (fleet.directory / "fleet.toml").write_text(current)

    other_start = fleet_toml(
        helpers.profile_with(
            "small", listen={"http_port": fleet.port}, synapse={"relaxed_rate_limits": True, "start": "exec"}
        )
    )
    (fleet.directory / "fleet.toml").write_text(other_start)
    result = fleet.synfleet("apply")
    assert result.returncode == 2 and "synapse.start" in result.stderr and "synfleet down" in result.stderr
    (fleet.directory / "fleet.toml").write_text(current)
    assert fleet.pids() == pids

    stopped = synfleet("apply", directory=tmp_path, timeout=FLEET_TIMEOUT)
    assert stopped.returncode == 2 and "not running" in stopped.stderr, stopped.stderr
    assert not (tmp_path / "run").exists()


def psql(fleet: Fleet, query: str) -> str:
    spec = load_spec(fleet.directory)
    password = (fleet.directory / "secrets" / "postgres_password").read_text().strip()
    command = [
        "psql",
        "-X",
        "-A",
        "-t",
        f"--host={RunPaths(fleet.directory).sockets}",
        f"--username={spec.database.user}",
    ]
    done = subprocess.run(
        [*command, f"--dbname={spec.database.name}", "-c", query],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_upgrade_refuses_a_database_too_new_and_restarts_main_first(fleet: Fleet) -> None:
    pids = fleet.pids()
    same = fleet.synfleet("upgrade")
    assert same.returncode == 0 and "already runs Synapse" in same.stdout, same.stdout + same.stderr
    assert fleet.pids() == pids

    # A database a newer Synapse migrated: the installed one cannot run it.
    compat = psql(fleet, "SELECT compat_version FROM schema_compat_version")
    psql(fleet, f"UPDATE schema_compat_version SET compat_version = {SCHEMA_VERSION + 1}")
    try:
        refused = fleet.synfleet("upgrade", "--force")
    finally:
        psql(fleet, f"UPDATE schema_compat_version SET compat_version = {compat}")
    assert refused.returncode == 2 and "downgrade across a schema change" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1
    assert fleet.pids() == pids

    forced = fleet.synfleet("upgrade", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    lines = forced.stdout.splitlines()
    first_worker_start = min(i for i, line in enumerate(lines) if re.search(r"starting (?!main)\w+", line))
    main_healthy = next(i for i, line in enumerate(lines) if re.search(r"healthy\s+main", line))
    assert main_healthy < first_worker_start, forced.stdout
    after = fleet.pids()
    assert after["nginx"] == pids["nginx"] and after["postgres"] == pids["postgres"]
    synapse = {w.name for w in load_spec(fleet.directory).fleet.workers}
    assert all(after[name] != pids[name] for name in synapse), "every Synapse process restarts"


def test_upgrade_of_a_compose_deployment_renders_the_tag_and_prints_the_order(tmp_path: Path) -> None:
    assert (
        synfleet("init", "--dir", str(tmp_path), "--server-name", "example.org", "--profile", "small").returncode == 0
    )
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    moved = synfleet("upgrade", "--synapse", "1.170.0", "--dir", str(tmp_path))
    assert moved.returncode == 0, moved.stderr
    text = (tmp_path / "fleet.toml").read_text()
    assert 'version = "1.170.0"' in text and "# Synapse release for docker compose images" in text
    compose = (tmp_path / "deploy" / "docker-compose.yml").read_text()
    assert "matrixdotorg/synapse:v1.170.0" in compose and "v1.163.2" not in compose
    commands = [line for line in moved.stdout.splitlines() if line.startswith("docker compose")]
    assert commands[1].startswith("docker compose stop ") and "rooms1" in commands[1].split()
    assert "--no-deps synapse" in commands[2] and commands[-1].startswith("docker compose up -d ")

    older = synfleet("upgrade", "--synapse", "1.160.0", "--dir", str(tmp_path))
    assert older.returncode == 2 and "older than the fleet's 1.170.0" in older.stderr, older.stderr
    assert 'version = "1.170.0"' in (tmp_path / "fleet.toml").read_text()
    bad = synfleet("upgrade", "--synapse", "latest", "--dir", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_up_right_after_down_and_a_port_another_program_holds(fleet: Fleet, tmp_path: Path) -> None:
    """Connections left in TIME_WAIT by the traffic above do not block a restart script; a port
    that another program listens on still does, with one clear message and nothing started."""
    assert fleet.synfleet("down").returncode == 0
    up = fleet.synfleet("up")
    assert up.returncode == 0, up.stdout + up.stderr

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = helpers.profile_with("small", listen={"http_port": port})
        (tmp_path / "fleet.toml").write_text(fleet_toml(spec))
        refused = synfleet("up", directory=tmp_path, timeout=FLEET_TIMEOUT)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"port {port} on 127.0.0.1 is in use by another program" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "supervisord.conf").exists()
