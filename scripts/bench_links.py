"""What sealing the links between hosts costs: CPU per message of a fleet on three lab hosts (as in
tests/test_hosts.py: a runs nginx, main, PostgreSQL and Redis; b rooms1 and client_sync1; c rooms2
and tasks1), under the same fixed message rate, with this checkout's sealed links and with another
revision's (e.g. the last one whose links were plain), alternating round by round:

    .venv/bin/python scripts/bench_links.py --against 1d47fdb [--rounds 3] [--rate 12] [--seconds 40]

Run as root (the lab's network namespaces). Each round starts the fleet (`synfleet up --host`),
creates 8 rooms for 8 users who all sync, offers ``rate`` messages per second for ``seconds``
(open loop, from host a through nginx), and reads the CPU seconds of every process of the fleet
on every host (each supervisord's tree: nginx, Synapse, PostgreSQL, Redis) before and after.
Prints a line per round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from synfleet.lab import Lab
from synfleet.lab.federation import in_host
from synfleet.run.paths import RunPaths
from synfleet.run.supervisor import Supervisor
from synfleet.system import free_port, process_tree_cpu

HOSTS = ("a", "b", "c")
WORKERS = {
    "client_sync": 1,
    "rooms": 2,
    "tasks": 1,
    "client_reader": 0,
    "federation_reader": 0,
    "media": 0,
    "sender": 0,
}
USERS = 8
PASSWORD = "bench links password"
KINDS = ("nginx", "postgres", "redis")


def write_fleet(lab: Lab, directory: Path, port: int) -> None:
    """The fleet file, with only keys every revision compared reads (the small profile's, written out)."""
    lines = ['server_name = "localhost"', "[listen]", f"http_port = {port}", "[synapse]", "relaxed_rate_limits = true"]
    lines += ['log_level = "WARNING"', "gc_thresholds = [10000, 50, 50]", "[workers]"]
    lines += [f"{role} = {count}" for role, count in WORKERS.items()]
    for name in HOSTS:
        lines += [f"[hosts.{name}]", f'address = "{lab[name].address}"']
    lines += ["[placement]", 'default = "a"', 'rooms = ["b", "c"]', 'client_sync = "b"', 'tasks = "c"']
    (directory / "fleet.toml").write_text("\n".join(lines) + "\n")


def synfleet(lab: Lab, host: str, source: Path, directory: Path, *args: str) -> None:
    environment = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, "-m", "synfleet", *args, "--dir", str(directory)]
    done = lab[host].run(command, env=environment, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"synfleet {' '.join(args)} on {host} failed:\n{done.stdout}{done.stderr}")


def fleet_cpu(directory: Path) -> dict[str, float]:
    """CPU seconds of each kind of process (nginx, Synapse, PostgreSQL, Redis) over every host."""
    roots = {}
    for host in HOSTS:
        for name, info in Supervisor(RunPaths(directory, host)).info().items():
            if info.pid:
                roots[f"{host} {name}"] = info.pid
    totals: dict[str, float] = {}
    for name, seconds in process_tree_cpu(roots).items():
        process = name.split()[1]
        kind = process if process in KINDS else "synapse"
        totals[kind] = totals.get(kind, 0.0) + seconds
    return totals


async def load(url: str, rate: float, seconds: float) -> int:
    """Log the users in, make their rooms, keep each syncing, offer ``rate`` messages a second for
    ``seconds``; the messages acknowledged."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, timeout=timeout) as session:

        async def call(method: str, path: str, token: str = "", body: Any = None) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.request(method, path, json=body, headers=headers) as response:
                answer: dict[str, Any] = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"{method} {path}: {response.status} {answer}")
                return answer

        tokens = []
        for i in range(USERS):
            body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": f"u{i}"}}
            tokens.append(
                (await call("POST", "/_matrix/client/v3/login", body={**body, "password": PASSWORD}))["access_token"]
            )
        rooms = []
        for token in tokens:
            rooms.append(
                (await call("POST", "/_matrix/client/v3/createRoom", token, {"preset": "public_chat"}))["room_id"]
            )
        for token in tokens:
            for room in rooms:
                await call("POST", f"/_matrix/client/v3/join/{quote(room, safe='')}", token, {})
        stop = asyncio.Event()

        async def sync(token: str) -> None:
            since = (await call("GET", "/_matrix/client/v3/sync?timeout=0", token))["next_batch"]
            while not stop.is_set():
                since = (await call("GET", f"/_matrix/client/v3/sync?timeout=5000&since={since}", token))["next_batch"]

        syncing = [asyncio.create_task(sync(token)) for token in tokens]
        acknowledged = 0

        async def send(n: int) -> None:
            nonlocal acknowledged
            room = rooms[n % len(rooms)]
            path = f"/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/b{n}-{time.time_ns()}"
            await call("PUT", path, tokens[n % len(tokens)], {"msgtype": "m.text", "body": f"message {n}"})
            acknowledged += 1

        began, sends = time.monotonic(), []
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
            sends.append(asyncio.create_task(send(n)))
        await asyncio.gather(*sends, return_exceptions=True)
        stop.set()
        await asyncio.gather(*syncing, return_exceptions=True)
        return acknowledged


def round_of(source: Path, rate: float, seconds: float) -> dict[str, float]:
    """One round with the synfleet of ``source``: CPU milliseconds per acknowledged message, by kind."""
    with tempfile.TemporaryDirectory(prefix="synfleet-bench-links-") as scratch, Lab([*HOSTS]) as lab:
        directory = Path(scratch)
        directory.chmod(0o755)
        port = free_port()
        write_fleet(lab, directory, port)
        started = []
        try:
            for host in HOSTS:
                synfleet(lab, host, source, directory, "up", "--host", host)
                started.append(host)
            for i in range(USERS):
                synfleet(lab, "a", source, directory, "user", "add", f"u{i}", "--password", PASSWORD)
            in_host(lab["a"], lambda: load(f"http://127.0.0.1:{port}", rate, 5))  # warm up
            before = fleet_cpu(directory)
            acknowledged = in_host(lab["a"], lambda: load(f"http://127.0.0.1:{port}", rate, seconds))
            after = fleet_cpu(directory)
        finally:
            for host in reversed(started):
                subprocess.run(
                    lab[host].command(
                        [sys.executable, "-m", "synfleet", "down", "--host", host, "--dir", str(directory)]
                    ),
                    env={**os.environ, "PYTHONPATH": str(source)},
                    capture_output=True,
                    timeout=300,
                )
    per = {kind: 1000 * (after.get(kind, 0.0) - before.get(kind, 0.0)) / max(acknowledged, 1) for kind in after}
    per["total"] = sum(per.values())
    per["acknowledged"] = acknowledged
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the revision to compare with (its links plain)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=12.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    options = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    results: dict[str, list[dict[str, float]]] = {"sealed": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="synfleet-against-") as other:
        os.chmod(other, 0o755)
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", other, options.against], check=True)
        try:
            for number in range(options.rounds):
                for name, source in (("sealed", here / "src"), ("plain", Path(other) / "src")):
                    figures = round_of(source, options.rate, options.seconds)
                    results[name].append(figures)
                    shown = ", ".join(f"{k} {v:.1f}" for k, v in figures.items() if k not in ("acknowledged",))
                    done = figures["acknowledged"]
                    print(f"round {number + 1} {name}: {done:.0f} acknowledged; ms CPU/message: {shown}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", other], check=False)
    print("median ms CPU per message:")
    for name, rounds in results.items():
        kinds = [k for k in rounds[0] if k != "acknowledged"]
        print(f"  {name}: " + ", ".join(f"{k} {statistics.median(r[k] for r in rounds):.1f}" for k in kinds))


if __name__ == "__main__":
    main()
