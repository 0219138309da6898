"""`synfleet bench`: the same load on a monolith, the fleet, and the fleet with room-blind balancing.

Each mode runs in its own directory under ``D/bench/<mode>`` on a fresh database, with Synapse's
rate limits raised and metrics enabled. Modes alternate over the repetitions, since one machine's
absolute numbers drift; ratios are taken within a repetition.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from synfleet.bench.load import BenchUser, Load, populate
from synfleet.bench.measure import cache_counters, postgres_transactions
from synfleet.bench.percentiles import percentile
from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.files import write_file
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.secrets import Secret
from synfleet.run.fleet import down, up
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_user
from synfleet.run.served import forget_served
from synfleet.run.supervisor import Supervisor
from synfleet.system import free_port, free_ports, memory_kib, process_tree_cpu

MODES = ("monolith", "fleet", "fleet-roundrobin")
Report = Callable[[str], None]


def mode_spec(spec: FleetSpec, mode: str, port: int, metrics_port: int) -> FleetSpec:
    data = spec.model_dump(mode="json")
    data["listen"]["http_port"] = port
    data["synapse"]["relaxed_rate_limits"] = True
    count = len(spec.fleet.workers)
    data["metrics"] = {"enabled": True, "base_port": metrics_port, "nginx_status_port": metrics_port + count}
    if mode == "monolith":
        data["workers"] = {key: 0 for key in data["workers"]}
        data["stream_writers"] = {}
    if mode == "fleet-roundrobin":
        data["routing"]["room_balancing"] = "round_robin"
    return FleetSpec.model_validate(data)


def run_mode(
    directory: Path, spec: FleetSpec, users: int, rooms: int, warmup: float, duration: float, seed: int, report: Report
) -> dict[str, Any]:
    """Bring one mode up on a fresh database, load it, measure, bring it down. Its fleet file is
    written too, so that `synfleet status`, `logs` and `route` work on its directory."""
    paths = RunPaths(directory)
    up_seconds = start_fresh(directory, paths, spec)
    try:
        base_url = f"http://{spec.listen.bind}:{spec.listen.http_port}"
        bench_users = _bench_users(paths, base_url, users, rooms, seed)
        measure = _measurer(paths, spec)
        marks: dict[str, dict[str, Any]] = {}

        def snapshot(mark: str) -> None:
            marks[mark] = measure()

        load = Load(base_url, bench_users, seed)
        result = asyncio.run(load.run(warmup, duration, lambda: snapshot("before"), lambda: snapshot("after")))
        before, after = marks["before"], marks["after"]
    finally:
        rss = _peak_rss_mib(paths)
        down(paths, lambda _: None)

    figures = {
        "up_seconds": round(up_seconds, 1),
        "duration_s": round(result.duration, 1),
        "acknowledged_msgs_per_s": round(result.sent / result.duration, 2),
        "send_latency_ms": {
            q: round(percentile(result.send_ms, v), 1) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "delivery_latency_ms": {
            q: round(percentile(result.delivery_ms, v), 1) for q, v in (("p50", 0.5), ("p99", 0.99))
        },
        "errors": dict(result.errors),
        "requests": result.requests,
        "cpu_seconds": _cpu_seconds(spec, before, after),
        "pg_transactions_per_request": round((after["xacts"] - before["xacts"]) / max(result.requests, 1), 3),
        "cache_hit_ratio": _cache_hit_ratios(before, after),
        "peak_rss_mib": rss,
    }
    report(
        f"  {figures['acknowledged_msgs_per_s']} msgs/s, send p50 {figures['send_latency_ms']['p50']} ms, "
        f"delivery p50 {figures['delivery_latency_ms']['p50']} ms, errors {sum(result.errors.values())}"
    )
    return figures


def start_fresh(directory: Path, paths: RunPaths, spec: FleetSpec) -> float:
    """Bring the mode up on a fresh database (its secrets stay), with its fleet file written;
    the seconds ``up`` took."""
    down(paths, lambda _: None)
    shutil.rmtree(paths.run, ignore_errors=True)
    forget_served(directory)  # a throwaway fleet: its key may start over on a new database
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / FLEET_FILE, fleet_toml(spec))
    return up(paths, spec, lambda _: None)


def _bench_users(paths: RunPaths, base_url: str, users: int, rooms: int, seed: int) -> list[BenchUser]:
    """Register ``users`` users and put them into ``rooms`` rooms."""
    bench_users = []
    for n in range(users):
        answer = register_user(paths, f"bench{n}", f"pw-{n}-{seed}", admin=False)
        bench_users.append(BenchUser(answer["user_id"], answer["access_token"]))
    try:
        asyncio.run(populate(base_url, bench_users, rooms, seed))
    except httpx.HTTPError as exc:
        raise SynfleetError(f"setting up {users} users and {rooms} rooms failed: {exc}") from None
    return bench_users


def _measurer(paths: RunPaths, spec: FleetSpec) -> Callable[[], dict[str, Any]]:
    """Reads the running fleet's counters: CPU seconds per process and of the load generator,
    PostgreSQL transactions, and each process's cache lookups and hits."""
    pids = {name: info.pid for name, info in Supervisor(paths).info().items() if info.pid}
    metrics = {w.name: port for w in spec.fleet.workers if (port := w.metrics_port) is not None}
    db = spec.database
    password = (paths.directory / SECRETS_DIR / Secret.POSTGRES_PASSWORD).read_text().strip()

    def measure() -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu": process_tree_cpu(pids),
            "generator": usage.ru_utime + usage.ru_stime,
            "xacts": postgres_transactions(str(paths.sockets), db.user, password, db.name),
            "caches": {process: cache_counters(port) for process, port in metrics.items()},
        }

    return measure


def _peak_rss_mib(paths: RunPaths) -> dict[str, float]:
    """Each running process's peak resident memory, in MiB; as far as it can be read."""
    rss = {}
    try:
        for name, info in Supervisor(paths).info().items():
            rss[name] = round(memory_kib(info.pid, "VmHWM") / 1024, 1)
    except OSError:
        pass
    return rss


def _cpu_seconds(spec: FleetSpec, before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds between the two marks per worker group, and of the load generator."""
    cpu: dict[str, float] = {}
    for name, seconds in after["cpu"].items():
        group = spec.fleet.group(name)
        cpu[group] = cpu.get(group, 0.0) + seconds - before["cpu"].get(name, 0.0)
    cpu["generator"] = after["generator"] - before["generator"]
    return {k: round(v, 2) for k, v in sorted(cpu.items())}


def _cache_hit_ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """Per process, the share of cache lookups between the two marks that hit."""
    caches = {}
    for name, counters in after["caches"].items():
        lookups = counters.lookups - before["caches"][name].lookups
        hits = counters.hits - before["caches"][name].hits
        caches[name] = round(hits / lookups, 4) if lookups else None
    return caches


def bench(
    directory: Path,
    modes: list[str],
    users: int,
    rooms: int,
    duration: float,
    warmup: float,
    repeat: int,
    report: Report,
) -> dict[str, Any]:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"--compare: unknown mode {unknown[0]!r}; allowed: {', '.join(MODES)}")
    if users < 2 or rooms < 1:
        raise UsageError("--users must be at least 2 and --rooms at least 1")
    spec = load_spec(directory)
    runs: list[dict[str, Any]] = []
    for repetition in range(repeat):
        order = modes if repetition % 2 == 0 else list(reversed(modes))
        for mode in order:
            report(f"repetition {repetition + 1}/{repeat}: {mode}")
            started = time.monotonic()
            metrics_base = free_ports(len(spec.fleet.workers) + 1)
            figures = run_mode(
                directory / "bench" / mode,
                mode_spec(spec, mode, free_port(), metrics_base),
                users,
                rooms,
                warmup,
                duration,
                repetition + 1,
                report,
            )
            figures["wall_seconds"] = round(time.monotonic() - started, 1)
            runs.append({"mode": mode, "repetition": repetition + 1, **figures})
    return {
        "settings": {
            "users": users,
            "rooms": rooms,
            "duration_s": duration,
            "warmup_s": warmup,
            "repeat": repeat,
            "modes": modes,
        },
        "runs": runs,
        "summary": summarise(runs, modes, repeat),
    }


def summarise(runs: list[dict[str, Any]], modes: list[str], repeat: int) -> dict[str, Any]:
    """Per mode: min/median/max of throughput and latency; ratios within each repetition."""
    summary: dict[str, Any] = {"modes": {}, "ratios": {}}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        summary["modes"][mode] = {
            "acknowledged_msgs_per_s": spread([r["acknowledged_msgs_per_s"] for r in mine]),
            "send_p50_ms": spread([r["send_latency_ms"]["p50"] for r in mine]),
            "send_p99_ms": spread([r["send_latency_ms"]["p99"] for r in mine]),
            "delivery_p50_ms": spread([r["delivery_latency_ms"]["p50"] for r in mine]),
            "cpu_seconds_total": spread(
                [sum(v for k, v in r["cpu_seconds"].items() if k != "generator") for r in mine]
            ),
        }
    for numerator, denominator in (("fleet", "monolith"), ("fleet", "fleet-roundrobin")):
        if numerator in modes and denominator in modes:
            ratios = []
            for repetition in range(1, repeat + 1):
                a = next(r for r in runs if r["mode"] == numerator and r["repetition"] == repetition)
                b = next(r for r in runs if r["mode"] == denominator and r["repetition"] == repetition)
                if b["acknowledged_msgs_per_s"]:
                    ratios.append(a["acknowledged_msgs_per_s"] / b["acknowledged_msgs_per_s"])
            summary["ratios"][f"{numerator}/{denominator} msgs/s"] = spread(ratios)
    return summary


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}
