"""The native run's logs: where each process's log is, its last lines, and new lines as they come."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from synfleet.model.fleet import Service
from synfleet.model.load import load_spec
from synfleet.run.paths import RunPaths


def log_files(paths: RunPaths) -> dict[str, Path]:
    """Each process's log by process name, in start order (with a host, that host's processes);
    nginx's is its access log, or on a host of several without the front, its gateways' log."""
    spec = load_spec(paths.directory)
    names = [name for name in spec.fleet.processes_on(paths.host) if name != Service.NGINX]
    nginx = paths.access_log if spec.fleet.front == paths.host else paths.gateway_log
    return {**{name: paths.log(name) for name in names}, Service.NGINX.value: nginx}


def tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open(errors="replace") as handle:
            return list(deque(handle, maxlen=lines))
    except OSError:
        return []


def follow(logs: dict[str, Path], interval: float = 0.3) -> Iterator[tuple[str, str]]:
    """``(process, line)`` for each line written to ``logs`` from now on; never ends."""
    handles = {process: path.open(errors="replace") for process, path in logs.items() if path.exists()}
    for handle in handles.values():
        handle.seek(0, 2)
    while True:
        for process, handle in handles.items():
            for line in handle:
                yield process, line
        time.sleep(interval)


def failure_logs(name: str, log: Path, paths: RunPaths, lines: int = 15) -> str:
    """The last lines of what a failed process logged and printed."""
    out = []
    for path in dict.fromkeys([log, paths.output(name)]):
        chunk = tail(path, lines)
        if chunk:
            out.append(f"--- last lines of {path}:\n" + "".join(chunk).rstrip())
    return "\n".join(out) or f"(no log output; see {paths.logs})"
