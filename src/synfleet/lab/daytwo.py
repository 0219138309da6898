"""Day-two figures for one profile, measured on this machine: how long `synfleet apply` takes to grow
and shrink the room workers and to add an event persister under traffic, and the longest gap
between acknowledged sends meanwhile; then backup and restore of the fleet with ``--messages``
messages and ``--media-mb`` MB of media: time and size.

``python -m synfleet.lab.daytwo [--profile seed] [--messages 10000] [--media-mb 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from nio import AsyncClient

from synfleet.model.load import load_spec
from synfleet.model.profiles import profile_spec
from synfleet.model.schema import FleetSpec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.system import free_port

PASSWORD = "day two"


def synfleet(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "synfleet", *args, "--dir", str(directory)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"synfleet {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def apply(directory: Path) -> None:
    synfleet(directory, "apply")


def write_fleet(directory: Path, profile: str, port: int, **workers: int) -> None:
    data = profile_spec("localhost", profile).model_dump(mode="json")
    data["listen"]["http_port"] = port
    data["synapse"]["relaxed_rate_limits"] = True
    data["workers"].update(workers)
    (directory / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(data)))


@dataclass
class Traffic:
    """One client sends to every room in turn, resending a failed message with the same
    transaction ID; acknowledged sends are timed."""

    url: str
    rooms: list[str]
    times: list[float] = field(default_factory=list)
    retries: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    async def run(self) -> None:
        client = AsyncClient(self.url, "@alice:localhost")
        await client.login(PASSWORD)
        i = 0
        while not self.stop.is_set():
            room, transaction = self.rooms[i % len(self.rooms)], uuid.uuid4().hex
            content = {"msgtype": "m.text", "body": f"traffic {i}"}
            while not hasattr(await client.room_send(room, "m.room.message", content, tx_id=transaction), "event_id"):
                self.retries += 1
                await asyncio.sleep(0.25)
            self.times.append(time.monotonic())
            i += 1
            await asyncio.sleep(0.02)
        await client.close()

    def longest_gap(self) -> float:
        return max((b - a for a, b in pairwise(self.times)), default=0.0)


def under_traffic(url: str, rooms: list[str], change: Callable[[], None]) -> tuple[float, Traffic]:
    traffic = Traffic(url, rooms)
    thread = threading.Thread(target=lambda: asyncio.run(traffic.run()))
    thread.start()
    time.sleep(3)
    began = time.monotonic()
    change()
    seconds = time.monotonic() - began
    time.sleep(3)
    traffic.stop.set()
    thread.join(120)
    return seconds, traffic


async def prepare(url: str, room_count: int) -> list[str]:
    client = AsyncClient(url, "@alice:localhost")
    await client.login(PASSWORD)
    rooms = [(await client.room_create(name=f"day two {i}")).room_id for i in range(room_count)]
    await client.close()
    return rooms


async def fill(url: str, rooms: list[str], messages: int, media_mb: int) -> None:
    client = AsyncClient(url, "@alice:localhost")
    await client.login(PASSWORD)

    async def send(i: int) -> None:
        await client.room_send(rooms[i % len(rooms)], "m.room.message", {"msgtype": "m.text", "body": f"fill {i}"})

    for start in range(0, messages, 50):
        await asyncio.gather(*(send(i) for i in range(start, min(start + 50, messages))))
    for _ in range(media_mb // 5):
        payload = secrets.token_bytes(5 << 20)
        await client.upload(lambda *_, p=payload: p, content_type="application/octet-stream", filesize=len(payload))
    await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synfleet.lab.daytwo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="seed", choices=["seed", "small"])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--media-mb", type=int, default=100)
    args = parser.parse_args(argv)
    with world_readable_tempdir("synfleet-daytwo-") as top:
        directory = top / "fleet"
        directory.mkdir()
        port = free_port()
        rooms_now = profile_spec("localhost", args.profile).workers.rooms
        write_fleet(directory, args.profile, port)
        url = f"http://127.0.0.1:{port}"
        try:
            synfleet(directory, "up")
            synfleet(directory, "user", "add", "alice", "--password", PASSWORD)
            rooms = asyncio.run(prepare(url, 20))
            print(f"{args.profile}: {rooms_now} room workers, 20 rooms, one client sending")
            for label, workers in (
                (f"grow rooms {rooms_now} -> {rooms_now + 1}", {"rooms": rooms_now + 1}),
                (f"shrink rooms {rooms_now + 1} -> {rooms_now}", {"rooms": rooms_now}),
                ("add an event persister (restarts every process)", {"tasks": load_spec(directory).workers.tasks + 1}),
            ):
                write_fleet(directory, args.profile, port, **{"rooms": rooms_now, **workers})
                seconds, traffic = under_traffic(url, rooms, lambda: apply(directory))
                print(
                    f"  {label}: apply {seconds:.1f}s, longest gap between acknowledged sends "
                    f"{traffic.longest_gap():.2f}s, {traffic.retries} resends, {len(traffic.times)} sends"
                )
            began = time.monotonic()
            asyncio.run(fill(url, rooms, args.messages, args.media_mb))
            print(f"filled {args.messages} messages and {args.media_mb} MB of media in {time.monotonic() - began:.0f}s")
            archive = top / "fleet.backup"
            began = time.monotonic()
            synfleet(directory, "backup", "--out", str(archive))
            print(f"  backup: {time.monotonic() - began:.1f}s, {archive.stat().st_size / 1e6:.1f} MB")
        finally:
            subprocess.run([sys.executable, "-m", "synfleet", "down", "--dir", str(directory)], capture_output=True)
        restored = top / "restored"
        began = time.monotonic()
        synfleet(restored, "restore", str(archive))
        print(f"  restore (checked and written): {time.monotonic() - began:.1f}s")
        began = time.monotonic()
        try:
            synfleet(restored, "up")
            print(f"  up after restore (the dump loaded, every process healthy): {time.monotonic() - began:.1f}s")
        finally:
            subprocess.run([sys.executable, "-m", "synfleet", "down", "--dir", str(restored)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
