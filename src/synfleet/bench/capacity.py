"""`synfleet bench --capacity`: the highest message rate each mode sustains within the service
level, found by stepping up an open-loop offered rate.

A step passes when at least 99% of the offered messages are acknowledged, every acknowledged message
reaches every member of its room, the delivery p99 is at most 2 s and nothing failed. The rate grows
by ``factor`` per step until a step fails; then ``refine`` steps, each halfway (geometrically)
between the highest pass and the lowest failure so far, narrow the answer. Rooms get the same
share per room worker in every run (the largest room on the first worker, the next on the second,
...), so runs compare.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from synfleet.bench.compare import MODES, Report, mode_spec, spread
from synfleet.bench.model import Costs, fit_costs, predict_for, process_counts
from synfleet.bench.openload import Member, OpenLoad, Room, StepFigures
from synfleet.errors import SynfleetError, UsageError
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.files import write_file
from synfleet.render.fleet_file import fleet_toml
from synfleet.routing.evaluate import evaluate
from synfleet.run.fleet import down, up
from synfleet.run.paths import RunPaths, deployed_plan
from synfleet.run.register import register_users
from synfleet.run.served import forget_served
from synfleet.run.supervisor import Supervisor
from synfleet.system import free_port, free_ports, process_tree_cpu

#: The service level a step must keep.
ACKNOWLEDGED_SHARE = 0.99
DELIVERY_P99_MS = 2000.0
#: The load generator shares the machine; past this share of a core it may be what limits.
GENERATOR_CORE_LIMIT = 0.5
#: Falling this far behind its schedule means the generator did not offer the rate it claims.
GENERATOR_LATE_MS = 250.0


@dataclass(frozen=True)
class Settings:
    users: int = 40
    rooms: int = 40
    start_rate: float = 10.0
    factor: float = 1.5
    max_steps: int = 12
    step_seconds: float = 20.0
    drain_seconds: float = 10.0
    warmup_seconds: float = 5.0
    refine: int = 2  # steps between the last pass and the first failure, each halving the gap


def room_sizes(users: int, rooms: int) -> list[int]:
    """Skewed room sizes, largest first: room k has about users/(k+1) members, at least 2, so the
    first room holds everyone (every user is in a room) and most rooms are small."""
    return [max(2, min(users, round(users / (k + 1)))) for k in range(rooms)]


def verdict(step: StepFigures) -> list[str]:
    """Why a step misses the service level (empty: it keeps it)."""
    reasons = []
    if step.acknowledged < ACKNOWLEDGED_SHARE * step.offered:
        reasons.append(f"acknowledged {step.acknowledged} of {step.offered} offered")
    if step.delivered < step.acknowledged:
        reasons.append(f"{step.acknowledged - step.delivered} acknowledged messages not delivered to every member")
    if step.delivery_ms["p99"] > DELIVERY_P99_MS:
        reasons.append(f"delivery p99 {step.delivery_ms['p99']:.0f} ms")
    if step.errors:
        reasons.append(f"{sum(step.errors.values())} errors")
    return reasons


def generator_warning(step: StepFigures) -> str | None:
    """Says so when the load generator, not the fleet, may have been the limit."""
    share = step.generator_cpu_s / max(step.duration_s, 1e-6)
    if share > GENERATOR_CORE_LIMIT:
        return f"the load generator used {share:.0%} of a core: it may be the limit"
    if step.generator_late_ms > GENERATOR_LATE_MS:
        return f"the load generator fell {step.generator_late_ms:.0f} ms behind its schedule"
    return None


def _register(paths: RunPaths, count: int, prefix: str) -> list[Member]:
    return [Member(user, token) for user, token in register_users(paths, prefix, count)]


def _send_path(room_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/x"


async def _populate(
    base_url: str, host: Member, users: list[Member], sizes: list[int], placement: Placement, seed: int
) -> list[Room]:
    """Create the rooms so that each room worker gets the same share: slot k (k-th largest) goes to
    room worker k mod K. ``host`` creates rooms until each slot has one nginx sends to its worker,
    the members join, and ``host`` leaves."""
    rng = random.Random(seed)
    members = [rng.sample(range(len(users)), size) for size in sizes]
    workers: list[str | None] = [*placement.workers] or [None]
    wanted = {w: [k for k in range(len(sizes)) if workers[k % len(workers)] == w] for w in workers}
    rooms: list[Room | None] = [None] * len(sizes)
    async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def call(user: Member, path: str, body: dict[str, Any]) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {user.token}"}
            async with session.post(path, json=body, headers=headers) as response:
                if response.status != 200:
                    raise SynfleetError(f"{path}: HTTP {response.status}: {(await response.text())[:200]}")
                answer: dict[str, Any] = await response.json()
                return answer

        attempts = 0
        while any(wanted.values()):
            attempts += 1
            if attempts > 20 * len(sizes):
                raise SynfleetError("could not place the bench's rooms evenly over the room workers")
            room_id = (await call(host, "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
            worker = placement.worker_of(room_id)
            if not wanted.get(worker):
                await call(host, f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/leave", {})
                continue
            slot = wanted[worker].pop(0)
            await asyncio.gather(
                *(call(users[m], f"/_matrix/client/v3/join/{quote(room_id, safe='')}", {}) for m in members[slot])
            )
            await call(host, f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/leave", {})
            rooms[slot] = Room(room_id, members[slot], worker)
    return [room for room in rooms if room is not None]


@dataclass(frozen=True)
class Placement:
    """The room workers rooms are hashed to (none in a monolith or with room-blind balancing), and
    the worker ``synfleet route`` says a room's messages go to."""

    workers: list[str]
    worker_of: Callable[[str], str | None]


def _placement(paths: RunPaths, spec: FleetSpec) -> Placement:
    plan = deployed_plan(paths, spec)

    def worker_of(room_id: str) -> str | None:
        return evaluate(plan, "PUT", _send_path(room_id)).worker

    upstream = evaluate(plan, "PUT", _send_path("!probe:x")).upstream
    keyed = upstream is not None and worker_of("!probe:x") is not None
    return Placement(list(plan.upstreams[upstream].workers) if keyed and upstream else [], worker_of)


def users_and_rooms(
    paths: RunPaths, spec: FleetSpec, user_count: int, room_count: int, seed: int
) -> tuple[str, list[Member], list[Room]]:
    """The running fleet's base URL, and the bench's users in its rooms, the same share per room
    worker (see :func:`_populate`)."""
    base_url = f"http://{spec.listen.bind}:{spec.listen.http_port}"
    users = _register(paths, user_count + 1, f"cap{seed}u")
    host, users = users[-1], users[:-1]
    try:
        rooms = asyncio.run(
            _populate(base_url, host, users, room_sizes(user_count, room_count), _placement(paths, spec), seed)
        )
    except aiohttp.ClientError as exc:
        raise SynfleetError(f"setting up {user_count} users and {room_count} rooms failed: {exc}") from None
    return base_url, users, rooms


def cpu_by_group(spec: FleetSpec, cpu: dict[str, float]) -> dict[str, float]:
    groups: dict[str, float] = {}
    for name, seconds in cpu.items():
        group = spec.fleet.group(name)
        groups[group] = groups.get(group, 0.0) + seconds
    return groups


def run_capacity_mode(
    directory: Path, spec: FleetSpec, settings: Settings, seed: int, report: Report
) -> dict[str, Any]:
    """One mode on a fresh database: users, rooms, then steps until the service level breaks."""
    paths = RunPaths(directory)
    down(paths, lambda _: None)
    shutil.rmtree(paths.run, ignore_errors=True)
    forget_served(directory)  # a throwaway fleet: its key may start over on a new database
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / FLEET_FILE, fleet_toml(spec))
    up_seconds = up(paths, spec, lambda _: None)
    try:
        base_url, users, rooms = users_and_rooms(paths, spec, settings.users, settings.rooms, seed)
        pids = {name: info.pid for name, info in Supervisor(paths).info().items() if info.pid}
        steps = asyncio.run(_steps(base_url, users, rooms, spec, pids, settings, seed, report))
    finally:
        down(paths, lambda _: None)
    passed = [s for s in steps if s["passed"]]
    best = max(passed, key=lambda s: s["offered_per_s"]) if passed else None
    share: dict[str, int] = {}
    for room in rooms:
        share[room.worker or "-"] = share.get(room.worker or "-", 0) + len(room.members)
    return {
        "up_seconds": round(up_seconds, 1),
        "processes": process_counts(spec.fleet),
        "room_members_per_worker": share,
        "steps": steps,
        "capacity_per_s": best["offered_per_s"] if best else 0.0,
        "delivery_p99_ms_at_capacity": best["delivery_ms"]["p99"] if best else None,
        "first_failure": next((s["failed_because"] for s in steps if not s["passed"]), None),
        "costs": fit_costs(steps).as_json(),
    }


async def _steps(
    base_url: str,
    users: list[Member],
    rooms: list[Room],
    spec: FleetSpec,
    pids: dict[str, int],
    settings: Settings,
    seed: int,
    report: Report,
) -> list[dict[str, Any]]:
    marks: list[dict[str, float]] = []

    async def mark() -> None:
        marks.append(await asyncio.to_thread(process_tree_cpu, pids))

    results: list[dict[str, Any]] = []
    async with OpenLoad(base_url, users, rooms, seed) as load:
        await load.step(settings.start_rate, settings.warmup_seconds, settings.drain_seconds)
        rate, last_pass, first_fail, refined = settings.start_rate, 0.0, 0.0, 0
        for _ in range(settings.max_steps):
            marks.clear()
            step = await load.step(rate, settings.step_seconds, settings.drain_seconds, mark)
            before, after = marks
            cpu = cpu_by_group(spec, {k: v - before.get(k, 0.0) for k, v in after.items()})
            cpu["generator"] = step.generator_cpu_s
            reasons = verdict(step)
            entry = {
                **step.as_json(),
                "cpu_seconds": {k: round(v, 2) for k, v in sorted(cpu.items())},
                "passed": not reasons,
                "failed_because": "; ".join(reasons) or None,
                "generator_warning": generator_warning(step),
            }
            results.append(entry)
            report(_line(entry))
            if reasons:
                first_fail = min(first_fail, rate) if first_fail else rate
            else:
                last_pass = max(last_pass, rate)
            if not first_fail:
                rate *= settings.factor
                continue
            if not last_pass or refined >= settings.refine:
                break
            refined += 1
            rate = math.sqrt(last_pass * first_fail)
    return results


def _line(step: dict[str, Any]) -> str:
    verdict_text = "pass" if step["passed"] else f"FAIL ({step['failed_because']})"
    warning = f" [{step['generator_warning']}]" if step["generator_warning"] else ""
    return (
        f"    {step['offered_per_s']:7.1f}/s offered: {step['acknowledged']} acknowledged of {step['offered']}, "
        f"{step['delivered']} delivered; send p50/p99 {step['send_ms']['p50']:.0f}/{step['send_ms']['p99']:.0f} ms, "
        f"delivery p50/p99 {step['delivery_ms']['p50']:.0f}/{step['delivery_ms']['p99']:.0f} ms; "
        f"{verdict_text}{warning}"
    )


def capacity(directory: Path, modes: list[str], settings: Settings, repeat: int, report: Report) -> dict[str, Any]:
    """Every mode's capacity, modes alternating over the repetitions; the model from each run."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"--compare: unknown mode {unknown[0]!r}; allowed: {', '.join(MODES)}")
    if settings.users < 2 or settings.rooms < 1:
        raise UsageError("--users must be at least 2 and --rooms at least 1")
    spec = load_spec(directory)
    runs: list[dict[str, Any]] = []
    for repetition in range(1, repeat + 1):
        order = modes if repetition % 2 else list(reversed(modes))
        for mode in order:
            report(f"repetition {repetition}/{repeat}: {mode}")
            started = time.monotonic()
            ports = free_ports(len(spec.fleet.workers) + 1)
            figures = run_capacity_mode(
                directory / "bench" / mode, mode_spec(spec, mode, free_port(), ports), settings, repetition, report
            )
            figures["wall_seconds"] = round(time.monotonic() - started, 1)
            report(f"  capacity {figures['capacity_per_s']:.1f} msgs/s")
            runs.append({"mode": mode, "repetition": repetition, **figures})
    summary = {m: spread([r["capacity_per_s"] for r in runs if r["mode"] == m]) for m in modes}
    ratios = []
    if "fleet" in modes and "monolith" in modes:
        for repetition in range(1, repeat + 1):
            fleet = next(r for r in runs if r["mode"] == "fleet" and r["repetition"] == repetition)
            mono = next(r for r in runs if r["mode"] == "monolith" and r["repetition"] == repetition)
            if mono["capacity_per_s"]:
                ratios.append(fleet["capacity_per_s"] / mono["capacity_per_s"])
    model = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        costs = Costs.median([Costs.from_json(r["costs"]) for r in mine])
        measured = [r["capacity_per_s"] for r in mine]
        model[mode] = predict_for(costs, mine[0]["processes"], measured, float(os.cpu_count() or 1))
    return {
        "settings": {**settings.__dict__, "repeat": repeat, "modes": modes},
        "runs": runs,
        "summary": {"capacity_per_s": summary, "fleet/monolith": spread(ratios)},
        "model": model,
    }
