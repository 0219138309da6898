"""`synfleet up`, `down` and `status`: the fleet as processes on this machine."""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError
from synfleet.model.fleet import Service
from synfleet.model.pem import check_files
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.turn import listen_address
from synfleet.pki.fleet import FleetAuthority
from synfleet.render.files import tree_differs, update_tree
from synfleet.render.secrets import Secret, ensure_secrets
from synfleet.run.accounts import Accounts, as_root, ensure_accounts
from synfleet.run.backup import load_pending_dump
from synfleet.run.handover import settle
from synfleet.run.health import is_healthy
from synfleet.run.logs import failure_logs
from synfleet.run.ownership import stop
from synfleet.run.paths import RunPaths
from synfleet.run.plan import Plan, plan_for, run_files, running_processes, running_spec
from synfleet.run.postgres import ensure_database, init_cluster
from synfleet.run.served import record_served, refuse_empty_database, refuse_new_cluster
from synfleet.run.supervised import NativeProcess, Tier
from synfleet.run.supervisor import Supervisor
from synfleet.system import Memory, process_tree_memory, require_binary

Report = Callable[[str], None]


def _port_free(host: str, port: int, key: str) -> None:
    """Binding as nginx will (SO_REUSEADDR: connections left in TIME_WAIT do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is in use by another program: stop it, or set {key} in fleet.toml"
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _clear_stale_sockets(paths: RunPaths) -> None:
    """Sockets left behind by a crash; refuse to touch one that something still answers on."""
    if not paths.sockets.exists():
        return
    for path in paths.sockets.iterdir():
        if not stat.S_ISSOCK(path.lstat().st_mode):  # a link there is the fleet's account's, never followed
            continue
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)
                continue
        raise UsageError(f"socket {path} is in use by a process synfleet did not start: stop it first")


def write_run_files(plan: Plan, secrets: dict[str, str], accounts: Accounts | None) -> bool:
    """Make the run directory's directories, each with its owner and mode (see
    :mod:`synfleet.run.handover`), and write its files: run as root, those holding secrets are
    readable by the fleet's group. True if any file changed."""
    settle(plan.paths, accounts)
    return update_tree(plan.paths.run, run_files(plan, secrets), group=accounts.fleet.gid if accounts else None)


def wait_healthy(
    supervisor: Supervisor, processes: list[NativeProcess], timeout: float, report: Report
) -> NativeProcess | None:
    """Wait until every process answers its health check; the first one that fails, else None."""

    def wait(process: NativeProcess) -> NativeProcess | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            info = supervisor.info()[process.name]
            state = info.state
            if state in ("FATAL", "EXITED", "STOPPED"):
                report(f"[red]failed[/red]   {process.name} ({state.lower()})")
                return process
            if state in ("RUNNING", "STARTING") and is_healthy(process.health, info.pid):
                report(f"[green]healthy[/green]  {process.name} ({time.monotonic() - started:.1f}s)")
                return None
            time.sleep(0.25)
        report(f"[red]failed[/red]   {process.name} (not healthy after {timeout:.0f}s)")
        return process

    with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        failures = [f for f in pool.map(wait, processes) if f is not None]
    return failures[0] if failures else None


def runs_postgres(plan: Plan) -> bool:
    """The fleet's own PostgreSQL runs here (on this host of a fleet on several)."""
    return any(p.name == Service.POSTGRES for p in plan.processes)


def fronted(plan: Plan) -> bool:
    """The public nginx runs here."""
    return not plan.paths.host or plan.spec.fleet.front == plan.paths.host


def up(paths: RunPaths, spec: FleetSpec, report: Report, supervisor: Supervisor | None = None) -> float:
    """Bring the fleet of ``spec`` up in ``paths``; returns seconds until everything was healthy.
    With a ``supervisor`` given, it is started in the foreground (its process stays this one's
    child, in ``supervisor.process``), and the fleet must not be running yet."""
    began = time.monotonic()
    check_files(spec)
    plan = plan_for(paths, spec)
    if paths.host and paths.host != spec.fleet.main.host and not FleetAuthority(paths.directory).exists():
        raise UsageError(
            f"{paths.directory}/secrets has no fleet CA: the hosts must share one. Run `synfleet up --host "
            f"{spec.fleet.main.host}` (main's host) or `synfleet render` first, and copy its D/secrets to every host"
        )
    foreground = supervisor is not None
    supervisor = supervisor or Supervisor(paths)
    already = supervisor.running()
    if already and foreground:
        raise UsageError(
            f"the fleet in {paths.directory} already runs under a supervisor that `synfleet up` started: "
            "stop it with `synfleet down` first"
        )
    if not already:
        _prepare(plan, report)
    secrets = ensure_secrets(paths.directory, spec)
    if already:
        report("the fleet is already running; checking every process")
        if tree_differs(paths.run, run_files(plan, secrets)):
            plan = plan_for(paths, running_spec(paths))  # check what runs
            report(
                "[yellow]fleet.toml differs from the running fleet[/yellow]: `synfleet apply --dry-run` shows "
                "what would change, `synfleet apply` changes it"
            )
    else:
        _start_supervisor(plan, secrets, supervisor, foreground, report)
    try:
        for tier in Tier:
            _start_tier(plan, tier, secrets, supervisor, report)
    except BaseException:
        if not already:
            report("stopping what was started")
            down(paths, lambda _: None)
        raise
    record_served(plan)
    return time.monotonic() - began


def _prepare(plan: Plan, report: Report) -> None:
    """Before a start: stop what a dead supervisor left running, check the front's ports (and
    coturn's) are free, and remove sockets nobody listens on."""
    if stopped := stop_orphans(plan.paths):
        report(f"stopped {stopped} processes of the fleet that ran without their supervisor; starting again")
    listen = plan.spec.listen
    if fronted(plan):
        _port_free(listen.bind, listen.http_port, "listen.http_port")
        if plan.spec.tls.enabled:
            _port_free(listen.bind, listen.https_port, "listen.https_port")
    if any(p.name == Service.TURN for p in plan.processes):
        _port_free(listen_address(plan.spec), plan.spec.turn.port, "turn.port")
    _clear_stale_sockets(plan.paths)


def _start_supervisor(
    plan: Plan, secrets: dict[str, str], supervisor: Supervisor, foreground: bool, report: Report
) -> None:
    """Write the run directory, create PostgreSQL's cluster on the first run, start supervisord."""
    paths = plan.paths
    if runs_postgres(plan):
        refuse_new_cluster(paths)  # none for a signing key that has served, unless a restored dump waits
    accounts = ensure_accounts(report) if as_root() else None
    write_run_files(plan, secrets, accounts)
    if runs_postgres(plan) and init_cluster(
        require_binary("initdb"),
        paths.postgres_data,
        plan.spec.database,
        plan.spec.fleet.host_addresses,
        accounts.fleet if accounts else None,
        paths.initdb_log,
    ):
        report("created the PostgreSQL cluster")
    if refused := supervisor.start_daemon(foreground=foreground, preload=plan.spec.synapse.start == "fork"):
        report(
            f'[yellow]synapse.start = "fork" refused[/yellow]: {refused}; every Synapse process starts '
            'its own Python (synapse.start = "exec" says so without this warning)'
        )


def _start_tier(plan: Plan, tier: Tier, secrets: dict[str, str], supervisor: Supervisor, report: Report) -> None:
    """Start the tier's processes that do not run yet and wait until all are healthy; after the
    infrastructure, make sure Synapse's database exists and load a restored dump."""
    members = [p for p in plan.processes if p.tier is tier]
    if not members:
        return
    info = supervisor.info()
    for process in members:
        if info[process.name].state not in ("RUNNING", "STARTING"):
            report(f"starting {process.name}")
            supervisor.start(process.name)
    failed = wait_healthy(supervisor, members, tier.timeout, report)
    if failed:
        logs = failure_logs(failed.name, Path(failed.log), plan.paths)
        raise SynfleetError(f"{failed.name} did not become healthy\n{logs}")
    if tier is Tier.INFRASTRUCTURE and runs_postgres(plan):
        refuse_empty_database(plan.paths, plan.spec)
        for change in ensure_database(
            str(plan.paths.sockets),
            plan.paths.postgres_data,
            plan.spec.database,
            secrets[Secret.POSTGRES_PASSWORD],
            plan.spec.fleet.host_addresses,
        ):
            report(change)
        load_pending_dump(plan.paths, plan.spec, report)


#: How each program's left over processes are asked to stop, and how long they get.
_ORPHAN_STOP = {"postgres": (signal.SIGINT, 60.0)}  # PostgreSQL's fast shutdown; the others SIGTERM, 20 s


def stop_orphans(paths: RunPaths) -> int:
    """Stop the fleet's processes that run without their supervisor (it died), front to back, each
    gracefully, then forcibly; how many there were."""
    left = running_processes(paths)
    for program in dict.fromkeys(Path(p.executable).name for p in left):
        group = [p for p in left if Path(p.executable).name == program]
        sig, grace = _ORPHAN_STOP.get(program, (signal.SIGTERM, 20.0))
        stop(group, sig, grace)
    return len(left)


def down(paths: RunPaths, report: Report) -> bool:
    """Stop everything `up` started (gracefully, then forcibly), remove sockets, keep data; also
    processes of the fleet that outlived their supervisor or their parent. False if nothing was
    running."""
    supervisor = Supervisor(paths)
    was_running = supervisor.pid() is not None
    if supervisor.running():
        report("stopping nginx, workers, main, then Redis and PostgreSQL")
        supervisor.stop_all()
    if was_running:
        supervisor.shutdown()
    if stopped := stop_orphans(paths):
        report(f"stopped {stopped} processes of the fleet that ran without their supervisor")
        was_running = True
    if paths.sockets.exists():
        for path in paths.sockets.iterdir():
            if path.is_socket() or path.name.endswith(".lock"):
                path.unlink(missing_ok=True)
    paths.supervisor_socket.unlink(missing_ok=True)
    return was_running


#: The state of a fleet process that runs without its supervisor.
ORPHANED = "ORPHANED"
#: How figures name supervisord itself.
SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: str
    pid: int
    uptime: float
    memory: Memory  # the process and its children (PostgreSQL's backends, nginx's workers)
    healthy: bool
    socket: str


@dataclass(frozen=True)
class FleetStatus:
    processes: list[ProcessStatus]
    supervisor: ProcessStatus | None  # in the fork start, it holds the import Synapse's processes share

    @property
    def memory(self) -> Memory:
        """The processes' together (PSS adds up to what they really hold), the supervisor apart."""
        return sum((row.memory for row in self.processes), Memory())


def _state(supervised: str, healthy: bool) -> str:
    """A process's state as status shows it: supervisord's, except that a process it still calls
    STARTING (for startsecs after each start) runs once it answers its health check, as `up` and
    `apply` count it."""
    return "RUNNING" if supervised == "STARTING" and healthy else supervised


def status(paths: RunPaths, spec: FleetSpec) -> FleetStatus:
    """Every process of the native run of ``spec``; none when the fleet is not running. Without
    a supervisor, the processes that still run (orphans), in state ORPHANED. A started process that
    answers its health check is RUNNING (see :func:`_state`)."""
    plan = plan_for(paths, spec)
    supervisor = Supervisor(plan.paths)
    if not supervisor.running():
        orphans = running_processes(paths)
        memory = process_tree_memory({str(p.pid): p.pid for p in orphans})
        return FleetStatus(
            [
                ProcessStatus(p.command[:100], ORPHANED, p.pid, 0.0, memory.get(str(p.pid), Memory()), False, "")
                for p in orphans
            ],
            None,
        )
    info = supervisor.info()
    now = time.time()
    live = {name: entry.pid for name, entry in info.items() if entry.state in ("RUNNING", "STARTING")}
    own = supervisor.daemon()
    memory = process_tree_memory({**live, **({SUPERVISOR: own.pid} if own else {})})
    result = []
    for process in plan.processes:
        entry = info.get(process.name)
        if entry is None:
            continue
        running = process.name in live
        healthy = running and is_healthy(process.health, entry.pid)
        result.append(
            ProcessStatus(
                process.name,
                _state(entry.state, healthy),
                entry.pid,
                now - entry.started if running else 0.0,
                memory.get(process.name, Memory()),
                healthy,
                os.path.relpath(process.socket, plan.paths.run) if process.socket.startswith("/") else process.socket,
            )
        )
    supervisor_row = (
        ProcessStatus(SUPERVISOR, "RUNNING", own.pid, 0.0, memory.get(SUPERVISOR, Memory()), True, "") if own else None
    )
    return FleetStatus(result, supervisor_row)
