"""Figures of a running fleet: CPU seconds and peak RSS per process from /proc, PostgreSQL
transactions, and Synapse's cache hit counters from each process's Prometheus listener."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx

from synfleet.system import Memory, memory

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process: its own, and that of its children that exited and
    were waited for (PostgreSQL's backends and autovacuum workers that came and went)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def _tree(roots: dict[str, int]) -> tuple[dict[int, str], dict[int, float]]:
    """Which named root each live process descends from (or is), and every process's CPU seconds."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))):
            parents[int(entry)], cpu[int(entry)] = found
    roots_by_pid: dict[int, str] = {pid: name for name, pid in roots.items()}
    owners: dict[int, str] = {}
    for pid in cpu:
        walk, seen = pid, 0
        while walk not in roots_by_pid and walk in parents and seen < 64:
            walk, seen = parents[walk], seen + 1
        if walk in roots_by_pid:
            owners[pid] = roots_by_pid[walk]
    return owners, cpu


def process_tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process and all its descendants (PostgreSQL backends, nginx
    workers), those that exited included."""
    owners, cpu = _tree(roots)
    totals: dict[str, float] = defaultdict(float)
    for pid, name in owners.items():
        totals[name] += cpu[pid]
    return dict(totals)


def process_tree_memory(roots: dict[str, int]) -> dict[str, Memory]:
    """Memory of each named process and all its descendants."""
    totals: dict[str, Memory] = defaultdict(Memory)
    for pid, name in _tree(roots)[0].items():
        totals[name] += memory(pid)
    return dict(totals)


def postgres_transactions(socket_dir: str, user: str, password: str, database: str) -> int:
    import psycopg2

    connection = psycopg2.connect(host=socket_dir, dbname=database, user=user, password=password)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,))
            row = cursor.fetchone()
            return int(row[0]) if row else 0
    finally:
        connection.close()


_SAMPLE = re.compile(r"^(synapse_util_caches_cache_hits|synapse_util_caches_cache)\{[^}]*\} ([0-9.e+]+)$", re.M)


@dataclass(frozen=True)
class CacheCounters:
    hits: float
    lookups: float


def cache_counters(port: int) -> CacheCounters:
    """Sum of Synapse's cache hits and lookups over all caches of one process."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/_synapse/metrics", timeout=10).text
    except httpx.HTTPError:
        return CacheCounters(0, 0)
    hits = lookups = 0.0
    for name, value in _SAMPLE.findall(text):
        if name.endswith("_hits"):
            hits += float(value)
        else:
            lookups += float(value)
    return CacheCounters(hits, lookups)
