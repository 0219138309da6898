"""`synfleet up`, `down` and `status`: the fleet as processes on this machine."""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError
from synfleet.render.deploy import PRIVATE_FILES
from synfleet.render.native import (
    TIER_INFRASTRUCTURE,
    NativeProcess,
    RunPaths,
    native_processes,
    render_run_dir,
)
from synfleet.render.secrets import ensure_secrets
from synfleet.run.health import is_healthy
from synfleet.run.measure import memory_kib
from synfleet.run.postgres import ensure_database, hand_over, init_cluster, service_account
from synfleet.run.supervisor import Supervisor
from synfleet.spec.file import FleetSpec
from synfleet.spec.load import load_spec, write_new
from synfleet.system import require_binary

#: How long each tier may take to become healthy. Main migrates the schema on its first start.
TIER_TIMEOUTS = (60.0, 300.0, 300.0, 30.0)

Report = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    spec: FleetSpec
    paths: RunPaths
    processes: list[NativeProcess]
    postgres_account: str | None


def plan_for(directory: Path) -> Plan:
    """Validate the fleet and find every binary before anything is written or started."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = load_spec(directory)
    if importlib.util.find_spec("synapse") is None:
        raise SynfleetError(
            "Synapse is not installed in this Python: pip install 'synfleet[synapse]' (or run scripts/setup.sh)"
        )
    names = ["nginx"]
    if not spec.database.host:
        names += ["postgres", "initdb"]
    if not spec.redis.host:
        names.append("redis-server")
    binaries = {name: require_binary(name) for name in names}
    account = service_account() if not spec.database.host else None
    paths = RunPaths(directory)
    if os.geteuid() == 0:
        _check_reachable(paths.run)
    return Plan(spec, paths, native_processes(spec, paths, binaries, account), account)


def _check_reachable(run: Path) -> None:
    """nginx workers and PostgreSQL drop root; they must be able to reach the run directory."""
    for parent in run.parents:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            raise UsageError(
                f"{parent} is not reachable by other users (mode {stat.S_IMODE(parent.stat().st_mode):o}); nginx "
                f"and PostgreSQL, which do not run as root, need it: use a directory elsewhere (e.g. /srv/fleet) "
                f"or chmod o+x {parent}"
            )


def _port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is in use by another program: stop it, or set listen.http_port "
                    "in fleet.toml"
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _clear_stale_sockets(paths: RunPaths) -> None:
    """Sockets left behind by a crash; refuse to touch one that something still answers on."""
    if not paths.sockets.exists():
        return
    for path in paths.sockets.iterdir():
        if not path.is_socket():
            continue
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)
                continue
        raise UsageError(f"socket {path} is in use by a process synfleet did not start: stop it first")


def tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open(errors="replace") as handle:
            return list(deque(handle, maxlen=lines))
    except OSError:
        return []


def failure_logs(process: NativeProcess, paths: RunPaths, lines: int = 15) -> str:
    out = []
    for log in dict.fromkeys([Path(process.log), paths.logs / f"{process.name}.out"]):
        chunk = tail(log, lines)
        if chunk:
            out.append(f"--- last lines of {log}:\n" + "".join(chunk).rstrip())
    return "\n".join(out) or f"(no log output; see {paths.logs})"


def _write_run_files(plan: Plan, secrets: dict[str, str]) -> bool:
    """Write the run directory's config files; True if any changed."""
    paths = plan.paths
    changed = False
    for directory in (paths.run, paths.logs, paths.sockets, paths.nginx_dir / "tmp", paths.run / "data"):
        directory.mkdir(parents=True, exist_ok=True)
    paths.run.chmod(0o755)
    if plan.postgres_account:
        hand_over(paths.sockets, plan.postgres_account)  # PostgreSQL puts its socket there
    rendered = render_run_dir(plan.spec, paths, secrets, plan.processes)
    for relative, text in sorted(rendered.files.items()):
        target = paths.run / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.read_text() == text:
            continue
        write_new(target, text, 0o600 if relative in PRIVATE_FILES else 0o644)
        changed = True
    return changed


def _wait_healthy(
    supervisor: Supervisor, processes: list[NativeProcess], timeout: float, report: Report
) -> NativeProcess | None:
    """Wait until every process answers its health check; the first one that fails, else None."""

    def wait(process: NativeProcess) -> NativeProcess | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = supervisor.info()[process.name].state
            if state in ("FATAL", "EXITED", "STOPPED"):
                report(f"[red]failed[/red]   {process.name} ({state.lower()})")
                return process
            if state in ("RUNNING", "STARTING") and is_healthy(process.health):
                report(f"[green]healthy[/green]  {process.name} ({time.monotonic() - started:.1f}s)")
                return None
            time.sleep(0.25)
        report(f"[red]failed[/red]   {process.name} (not healthy after {timeout:.0f}s)")
        return process

    with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        failures = [f for f in pool.map(wait, processes) if f is not None]
    return failures[0] if failures else None


def up(directory: Path, report: Report) -> float:
    """Bring the fleet up; returns seconds until everything was healthy."""
    began = time.monotonic()
    plan = plan_for(directory)
    paths = plan.paths
    supervisor = Supervisor(paths)
    already = supervisor.running()
    if not already:
        _port_free(plan.spec.listen.bind, plan.spec.listen.http_port)
        _clear_stale_sockets(paths)
    secrets = ensure_secrets(directory)
    changed = _write_run_files(plan, secrets)
    if already:
        report("the fleet is already running; checking every process")
        if changed:
            supervisor.reread()
            report(
                "[yellow]configuration changed[/yellow]: run `synfleet down` and `synfleet up` to apply it everywhere"
            )
    else:
        if not plan.spec.database.host and init_cluster(
            require_binary("initdb"),
            paths.postgres_data,
            plan.spec.database,
            plan.postgres_account,
            paths.logs / "initdb.log",
        ):
            report("created the PostgreSQL cluster")
        supervisor.start_daemon()
    try:
        for tier, timeout in enumerate(TIER_TIMEOUTS):
            members = [p for p in plan.processes if p.tier == tier]
            if not members:
                continue
            info = supervisor.info()
            for process in members:
                if info[process.name].state not in ("RUNNING", "STARTING"):
                    report(f"starting {process.name}")
                    supervisor.start(process.name)
            failed = _wait_healthy(supervisor, members, timeout, report)
            if failed:
                raise SynfleetError(f"{failed.name} did not become healthy\n{failure_logs(failed, paths)}")
            if tier == TIER_INFRASTRUCTURE and not plan.spec.database.host:
                ensure_database(str(paths.sockets), plan.spec.database)
    except BaseException:
        if not already:
            report("stopping what was started")
            down(directory, lambda _: None)
        raise
    return time.monotonic() - began


def down(directory: Path, report: Report) -> bool:
    """Stop everything `up` started (gracefully, then forcibly), remove sockets, keep data.
    False if nothing was running."""
    paths = RunPaths(directory)
    supervisor = Supervisor(paths)
    was_running = supervisor.pid() is not None
    if supervisor.running():
        report("stopping nginx, workers, main, then Redis and PostgreSQL")
        supervisor.stop_all()
    if was_running:
        supervisor.shutdown()
    if paths.sockets.exists():
        for path in paths.sockets.iterdir():
            if path.is_socket() or path.name.endswith(".lock"):
                path.unlink(missing_ok=True)
    paths.supervisor_socket.unlink(missing_ok=True)
    return was_running


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: str
    pid: int
    uptime: float
    rss_kib: int
    healthy: bool
    socket: str


def status(directory: Path) -> list[ProcessStatus]:
    """Every process of the native run; empty when the fleet is not running."""
    plan = plan_for(directory)
    supervisor = Supervisor(plan.paths)
    if not supervisor.running():
        return []
    info = supervisor.info()
    now = time.time()
    result = []
    for process in plan.processes:
        entry = info.get(process.name)
        if entry is None:
            continue
        running = entry.state in ("RUNNING", "STARTING")
        result.append(
            ProcessStatus(
                process.name,
                entry.state,
                entry.pid,
                now - entry.started if running else 0.0,
                memory_kib(entry.pid) if running else 0,
                running and is_healthy(process.health),
                os.path.relpath(process.socket, plan.paths.run) if process.socket.startswith("/") else process.socket,
            )
        )
    return result
