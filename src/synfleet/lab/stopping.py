"""Stopping what the lab started, always by process ID: a process it holds a handle to, and then every
process left in one of its namespaces (daemons and grandchildren that the handles do not cover)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

#: How long a process gets to exit after SIGTERM before it is sent SIGKILL.
GRACE_SECONDS = 5.0


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float | None = None) -> None:
    """Stop ``process`` (SIGTERM, then SIGKILL after ``grace`` seconds, default :data:`GRACE_SECONDS`) and
    reap it."""
    grace = GRACE_SECONDS if grace is None else grace
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_all(list_pids: Callable[[], list[int]], grace: float | None = None) -> list[int]:
    """Stop every process that ``list_pids`` names, until it names none: SIGTERM, then SIGKILL after ``grace``
    seconds. ``list_pids`` is asked again each round, so processes started meanwhile are caught too. Returns
    the PIDs still there after SIGKILL (normally none: only a process stuck in the kernel survives)."""
    grace = GRACE_SECONDS if grace is None else grace
    remaining = list_pids()
    terminated: set[int] = set()
    deadline = time.monotonic() + grace
    while remaining and time.monotonic() < deadline:
        # SIGTERM once per process, so one that is shutting down gracefully is not hurried.
        _signal([pid for pid in remaining if pid not in terminated], signal.SIGTERM)
        terminated.update(remaining)
        time.sleep(0.05)
        remaining = list_pids()
    deadline = time.monotonic() + grace
    while remaining and time.monotonic() < deadline:
        _signal(remaining, signal.SIGKILL)
        time.sleep(0.05)
        remaining = list_pids()
    return remaining


def _signal(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, signum)
