"""What this machine has: the server binaries synfleet drives, and free loopback ports."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError

#: Besides PATH: this Python's scripts (supervisord in a virtualenv) and where Debian puts binaries
#: that are not on a normal user's PATH (the newest PostgreSQL first).
EXTRA_DIRS = (
    os.path.dirname(sys.executable),
    "/usr/sbin",
    "/usr/local/sbin",
    *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True),
)

#: The Debian package that provides each binary.
PACKAGES = {
    "nginx": "nginx-light",
    "redis-server": "redis-server",
    "postgres": "postgresql",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "turnserver": "coturn",
    "ip": "iproute2",
    "dnsmasq": "dnsmasq-base",
}


def find_binary(name: str) -> str | None:
    """The path of ``name`` on PATH or in the system directories, None if it is not installed."""
    found = shutil.which(name)
    if found:
        return found
    for directory in EXTRA_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str) -> str:
    """Like :func:`find_binary`, but a missing binary is an error that says how to install it."""
    found = find_binary(name)
    if found is None:
        package = PACKAGES.get(name, name)
        raise SynfleetError(
            f"{name} is not installed: install it with `apt-get install {package}` (or run scripts/setup.sh)"
        )
    return found


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_ports(count: int, start: int = 19300) -> int:
    """The first of ``count`` consecutive free loopback ports at or above ``start``."""
    base = start
    while base < 65000:
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            base = port + 1
    raise UsageError(f"no {count} consecutive free loopback ports at or above {start}")


@dataclass(frozen=True)
class Memory:
    """A process's memory, KiB: resident (RSS: shared pages counted in full), proportional (PSS:
    each shared page divided among the processes sharing it, so PSS adds up across processes) and
    unique (USS: pages no other process has)."""

    rss: int = 0
    pss: int = 0
    uss: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss, self.uss + other.uss)


def memory(pid: int) -> Memory:
    """``pid``'s memory from ``/proc/<pid>/smaps_rollup``; zeros if it is gone or not readable."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return Memory()
    return Memory(
        fields.get("Rss", 0), fields.get("Pss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    )


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


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while this machine wanted it (all CPUs, since boot):
    a run that saw much of it was measured on a busy host."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


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


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of ``/proc/<pid>/status`` (VmRSS now, VmHWM the peak), 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def fleet_python() -> str:
    """This Python, by a path without linked directories: a ``.venv`` link that leads out of a clone
    other users cannot reach (see scripts/setup.sh) must not lead the fleet's account through it."""
    return os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))
