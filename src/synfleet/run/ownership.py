"""Which processes on this machine are a fleet's, with or without a live supervisor.

A process is the fleet's when it runs one of the fleet's programs (its executable is nginx,
PostgreSQL, Redis or the fleet's Python) and it names the run directory: on its command line, as
its working directory, or in a file it holds open. Every pid is read from ``/proc`` when it is
used, so a pid that was recycled by an unrelated program is never taken for the fleet's (that
program would have to run one of the fleet's binaries *and* hold the run directory's files).
Orphans are found the same way: nginx workers hold the fleet's logs open, PostgreSQL backends work
in its data directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Running:
    pid: int
    executable: str  # the real path of the program
    command: str
    started: int  # clock ticks after boot: with pid, one process and no other


def _started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None if it is gone."""
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        return None


def _names(pid: int, run: str, command_only: bool) -> bool:
    """``pid`` names ``run``: on its command line, or (unless ``command_only``) as its working
    directory or in an open file."""
    base = PROC / str(pid)
    try:
        if run in (base / "cmdline").read_bytes().decode(errors="replace"):
            return True
        if command_only:
            return False
        if os.readlink(base / "cwd").startswith(run):
            return True
    except OSError:
        return False
    return any(link.startswith(run) for link in _open_files(pid))


def _open_files(pid: int) -> list[str]:
    """Where ``pid``'s file descriptors point; those closed while they are read are left out."""
    directory = PROC / str(pid) / "fd"
    try:
        descriptors = os.listdir(directory)
    except OSError:
        return []
    links = []
    for fd in descriptors:
        with contextlib.suppress(OSError):
            links.append(os.readlink(directory / fd))
    return links


def fleet_processes(run: Path, executables: Iterable[str], interpreter: str = "") -> list[Running]:
    """Every live process of the fleet in ``run`` whose program is one of ``executables``. Processes
    of ``interpreter`` (the fleet's Python, which runs other things too) count only when their
    command line names ``run``."""
    wanted = {os.path.realpath(e) for e in executables}
    interpreter = os.path.realpath(interpreter) if interpreter else ""
    prefix = str(run.resolve())
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        process = identify(int(entry.name))
        if process is None or process.executable not in wanted:
            continue
        if _names(process.pid, prefix, command_only=process.executable == interpreter):
            found.append(process)
    return found


def identify(pid: int) -> Running | None:
    """Process ``pid`` as it is now (to signal it later without fear of a recycled pid)."""
    started = _started(pid)
    if started is None:
        return None
    try:
        executable = os.path.realpath(os.readlink(PROC / str(pid) / "exe"))
        command = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return Running(pid, executable, command, started)


def alive(process: Running) -> bool:
    """``process`` itself is still running (not a later process with its pid)."""
    return _started(process.pid) == process.started


def stop(processes: Iterable[Running], sig: int, grace: float) -> list[Running]:
    """Send ``sig`` to each, wait up to ``grace`` seconds; then kill what is left. Those that had to
    be killed."""
    targets = [p for p in processes if alive(p)]
    for process in targets:
        _signal(process, sig)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in targets) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = [p for p in targets if alive(p)]
    for process in killed:
        _signal(process, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def _signal(process: Running, sig: int) -> None:
    if alive(process):  # checked again at once: never a recycled pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def holds_listener(pid: int, port: int) -> bool:
    """``pid`` holds a socket listening on TCP ``port`` (the server answering there is this one)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return any(link.startswith("socket:[") and link[8:-1] in inodes for link in _open_files(pid))
