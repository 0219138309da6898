"""`synfleet bench --start-up`: the two ways the native run starts Synapse (``synapse.start``),
compared on this machine.

For each profile and each way: the time `synfleet up` takes until every process is healthy (the
fleet already created, as after a reboot or a `down`), and the memory the whole fleet then holds,
as PSS: a page shared by n processes counts 1/n in each, so PSS adds up to what the fleet really
uses (RSS counts shared pages once per process). Then one run under an open-loop message load: the
memory after it, and the CPU seconds the fleet spent per delivered message.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synfleet.bench.capacity import cpu_by_group, users_and_rooms
from synfleet.bench.compare import Report, spread
from synfleet.bench.openload import OpenLoad
from synfleet.errors import SynfleetError, UsageError
from synfleet.model.load import FLEET_FILE
from synfleet.model.profiles import PROFILES, profile_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.files import write_file
from synfleet.render.fleet_file import fleet_toml
from synfleet.run.fleet import SUPERVISOR, down, up
from synfleet.run.paths import RunPaths
from synfleet.run.supervisor import Supervisor
from synfleet.system import Memory, free_port, process_tree_cpu, process_tree_memory, steal_seconds

#: synapse.start's values, the default first.
STARTS = ("fork", "exec")


@dataclass(frozen=True)
class StartupSettings:
    profiles: tuple[str, ...] = ("small", "seed")
    runs: int = 3
    load_seconds: float = 600.0
    rate: float = 8.0  # msgs/s: below every profile's capacity on 2 cores
    users: int = 40
    rooms: int = 40
    settle_seconds: float = 5.0  # after healthy, before memory is read


def start_spec(profile: str, start: str, port: int) -> FleetSpec:
    data = profile_spec("localhost", profile).model_dump(mode="json")
    data["listen"]["http_port"] = port
    data["synapse"]["relaxed_rate_limits"] = True
    data["synapse"]["start"] = start
    return FleetSpec.model_validate(data)


def _roots(paths: RunPaths) -> dict[str, int]:
    supervisor = Supervisor(paths)
    pid = supervisor.pid()
    if pid is None:
        raise SynfleetError(f"the fleet in {paths.directory} has no supervisor")
    return {SUPERVISOR: pid, **{name: info.pid for name, info in supervisor.info().items() if info.pid}}


def fleet_memory(paths: RunPaths, spec: FleetSpec) -> dict[str, Any]:
    """The fleet's memory, MiB: in total, Synapse's processes (with the supervisor that holds
    the shared import in the fork start), and by group."""
    by_group: dict[str, Memory] = {}
    for name, figures in process_tree_memory(_roots(paths)).items():
        group = name if name == SUPERVISOR else spec.fleet.group(name)
        by_group[group] = by_group.get(group, Memory()) + figures
    synapse = sum(
        (m for g, m in by_group.items() if g not in ("postgres", "redis", "nginx")),
        Memory(),
    )
    total = sum(by_group.values(), Memory())
    return {
        "total_pss_mib": _mib(total.pss),
        "total_rss_mib": _mib(total.rss),
        "synapse_pss_mib": _mib(synapse.pss),
        "synapse_uss_mib": _mib(synapse.uss),
        "groups": {
            g: {"pss": _mib(m.pss), "uss": _mib(m.uss), "rss": _mib(m.rss)} for g, m in sorted(by_group.items())
        },
    }


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def _use(directory: Path, spec: FleetSpec) -> RunPaths:
    """``directory`` with ``spec`` written and nothing running."""
    paths = RunPaths(directory)
    down(paths, lambda _: None)
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / FLEET_FILE, fleet_toml(spec))
    return paths


def measure_start(directory: Path, spec: FleetSpec, settings: StartupSettings) -> dict[str, Any]:
    """One start of an existing fleet: seconds until healthy, then its memory."""
    paths = _use(directory, spec)
    try:
        healthy = up(paths, spec, lambda _: None)
        time.sleep(settings.settle_seconds)
        return {"healthy_seconds": round(healthy, 2), **fleet_memory(paths, spec)}
    finally:
        down(paths, lambda _: None)


def measure_load(directory: Path, spec: FleetSpec, settings: StartupSettings, seed: int) -> dict[str, Any]:
    """The fleet under ``settings.rate`` msgs/s for ``settings.load_seconds``: CPU per delivered
    message, and its memory afterwards."""
    paths = _use(directory, spec)
    try:
        up(paths, spec, lambda _: None)
        base_url, users, rooms = users_and_rooms(paths, spec, settings.users, settings.rooms, seed)
        roots = _roots(paths)
        marks: list[dict[str, float]] = []

        steal: list[float] = []

        async def mark() -> None:
            marks.append(await asyncio.to_thread(process_tree_cpu, roots))
            steal.append(steal_seconds())

        async def run() -> Any:
            async with OpenLoad(base_url, users, rooms, seed) as load:
                return await load.step(settings.rate, settings.load_seconds, 10.0, mark)

        step = asyncio.run(run())
        before, after = marks
        cpu = cpu_by_group(spec, {k: v - before.get(k, 0.0) for k, v in after.items() if k != SUPERVISOR})
        memory = fleet_memory(paths, spec)
    finally:
        down(paths, lambda _: None)
    delivered = max(step.delivered, 1)
    return {
        "offered": step.offered,
        "acknowledged": step.acknowledged,
        "delivered": step.delivered,
        "errors": step.errors,
        "delivery_ms": step.delivery_ms,
        "cpu_seconds": {k: round(v, 2) for k, v in sorted(cpu.items())},
        "cpu_ms_per_message": round(1000 * sum(cpu.values()) / delivered, 1),
        "steal_seconds": round(steal[-1] - steal[0], 1),  # a busy host under this machine slows everything
        **memory,
    }


def startup_bench(directory: Path, settings: StartupSettings, report: Report) -> dict[str, Any]:
    """Every profile, both starts: ``runs`` starts each (alternating), then one loaded run each."""
    unknown = [p for p in settings.profiles if p not in PROFILES]
    if unknown:
        raise UsageError(f"--profiles: unknown profile {unknown[0]!r}; allowed: {', '.join(PROFILES)}")
    starts: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    for profile in settings.profiles:
        place = directory / "bench" / f"start-{profile}"
        port = free_port()
        report(f"{profile}: creating the fleet (its first start migrates the database; not counted)")
        measure_start(place, start_spec(profile, STARTS[0], port), settings)
        for run in range(1, settings.runs + 1):
            for start in STARTS if run % 2 else reversed(STARTS):
                figures = measure_start(place, start_spec(profile, start, port), settings)
                report(
                    f"  {profile}, {start} start, run {run}: healthy in {figures['healthy_seconds']:.1f}s, "
                    f"PSS {figures['total_pss_mib']:.0f} MiB (Synapse {figures['synapse_pss_mib']:.0f} MiB)"
                )
                starts.append({"profile": profile, "start": start, "run": run, **figures})
        if settings.load_seconds > 0:
            for seed, start in enumerate(STARTS, 1):
                report(f"  {profile}, {start} start: {settings.rate:g} msgs/s for {settings.load_seconds:.0f}s")
                figures = measure_load(place, start_spec(profile, start, port), settings, seed)
                report(
                    f"    {figures['delivered']} delivered, {figures['cpu_ms_per_message']} ms CPU per message, "
                    f"PSS after {figures['total_pss_mib']:.0f} MiB; CPU stolen by the host: "
                    f"{figures['steal_seconds']:.0f}s"
                )
                loads.append({"profile": profile, "start": start, **figures})
    return {"settings": vars(settings), "starts": starts, "loads": loads, "summary": summarise(starts, loads)}


def summarise(starts: list[dict[str, Any]], loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Per profile and start: min/median/max of the starts, and the loaded run's figures."""
    summary: dict[str, Any] = {}
    for profile in dict.fromkeys(s["profile"] for s in starts):
        for start in STARTS:
            mine = [s for s in starts if s["profile"] == profile and s["start"] == start]
            loaded = next((r for r in loads if r["profile"] == profile and r["start"] == start), None)
            summary[f"{profile}/{start}"] = {
                "healthy_seconds": spread([s["healthy_seconds"] for s in mine]),
                "total_pss_mib": spread([s["total_pss_mib"] for s in mine]),
                "synapse_pss_mib": spread([s["synapse_pss_mib"] for s in mine]),
                "total_pss_mib_after_load": loaded["total_pss_mib"] if loaded else None,
                "cpu_ms_per_message": loaded["cpu_ms_per_message"] if loaded else None,
            }
    return summary
