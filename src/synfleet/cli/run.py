"""``synfleet up``, ``down``, ``status``, ``logs`` and ``user add``: the fleet on this machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import click
from rich.markup import escape
from rich.table import Table

from synfleet.cli.options import DIR_OPTION, HOST_OPTION, make_directory
from synfleet.cli.output import output_console, print_line, reporter
from synfleet.errors import FleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.fleet import Service
from synfleet.model.load import FLEET_FILE, load_spec
from synfleet.model.schema import FleetSpec
from synfleet.render.hosts import runs_nginx
from synfleet.run import service
from synfleet.run.apply import apply, plan_change
from synfleet.run.backup import backup, restore
from synfleet.run.fleet import ORPHANED, FleetStatus, ProcessStatus, down, status, up
from synfleet.run.logs import follow, log_files, tail
from synfleet.run.paths import RunPaths, main_paths, place_run_directory, unplace_run_directory
from synfleet.run.plan import check_host, one_host
from synfleet.run.register import register_user
from synfleet.run.supervisor import Supervisor
from synfleet.run.upgrade import upgrade_compose, upgrade_native
from synfleet.system import Memory


@click.command("up")
@DIR_OPTION
@HOST_OPTION
@click.option(
    "--foreground",
    is_flag=True,
    help="Keep running with the supervisor as a child until it exits (for systemd; see `synfleet service`).",
)
def up_command(directory: Path, host: str, foreground: bool) -> None:
    """Start PostgreSQL, Redis, Synapse main and workers, and nginx here; return when all are healthy.
    In a fleet on several hosts, --host NAME starts that host's share."""
    console = output_console()
    make_directory(directory)  # a new deployment directory runs the default fleet
    spec = load_spec(directory)
    paths = RunPaths(directory, host)
    check_host(paths, spec)
    if moved := place_run_directory(directory, host):
        print_line(console, f"  {directory} is out of the fleet's accounts' reach: its run directory is {moved}")
    supervisor = Supervisor(paths) if foreground else None
    try:
        seconds = up(paths, spec, reporter(console), supervisor)
    except UsageError:
        if moved:  # refused before anything was written: leave nothing behind
            unplace_run_directory(directory, host, moved)
        raise
    if supervisor is not None and supervisor.process is not None:
        console.print(f"fleet up in {seconds:.1f}s; supervising in the foreground (pid {supervisor.process.pid})")
        sys.exit(supervisor.process.wait() or 0)
    if host and spec.fleet.front != host:
        console.print(f"host {host} up in {seconds:.1f}s: {', '.join(spec.fleet.processes_on(host))}")
        print_line(console, f"  stop with: synfleet down --dir {directory} --host {host}")
        return
    print_line(
        console,
        f"fleet up in {seconds:.1f}s: http://{spec.listen.bind}:{spec.listen.http_port}/ "
        f"(server name {spec.server_name})",
    )
    print_line(
        console,
        f"  next: synfleet user add NAME --password ... --dir {directory}; stop with: synfleet down --dir {directory}",
    )


@click.command("down")
@DIR_OPTION
@HOST_OPTION
def down_command(directory: Path, host: str) -> None:
    """Stop everything `up` started (with --host, that host's share); sockets are removed, data is kept."""
    console = output_console()
    paths = RunPaths(directory, host)
    if not paths.run.exists():  # nothing to stop here: say so, or which host was meant
        try:
            spec = load_spec(directory)
        except FleetError:
            spec = None
        if spec is not None:
            check_host(paths, spec)
    if down(paths, console.print):
        console.print("fleet stopped (data kept)")
    else:
        console.print("the fleet was not running")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@click.command("status")
@DIR_OPTION
@HOST_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the same figures as JSON, for scripts and monitoring.")
def status_command(directory: Path, host: str, as_json: bool) -> None:
    """Show every process: state, pid, health, uptime, memory, socket (with --host, that host's).
    A fleet on several hosts without --host: which host runs what, and which shares run here."""
    spec = load_spec(directory)
    if spec.hosts and not host:
        _print_placement(directory, spec, as_json)
        return
    fleet = status(RunPaths(directory, host), spec)
    rows = fleet.processes
    if as_json:
        _print_status_json(directory, spec.server_name, host, fleet)
    console = output_console()
    if not rows:
        print_line(console, "the fleet is not running (start it with: synfleet up)")
        sys.exit(3)
    if all(row.state == ORPHANED for row in rows):
        for row in rows:
            console.print(f"  {row.pid:>7}  {escape(row.name)}  {_mib(row.memory.rss)} RSS")
        print_line(
            console,
            f"[red]{len(rows)} processes of the fleet run without their supervisor[/red] (it died): "
            f"`synfleet up --dir {directory}` brings the fleet back under supervision, `synfleet down` stops them",
        )
        sys.exit(1)
    table = Table(title=f"host {host} ({spec.fleet.host(host).address})" if host else None)
    for column in ("process", "state", "pid", "health", "uptime", "RSS", "PSS", "socket"):
        table.add_column(column, justify="right" if column in ("pid", "RSS", "PSS", "uptime") else "left")
    for row in rows:
        health = "[green]healthy[/green]" if row.healthy else "[red]unhealthy[/red]"
        table.add_row(
            row.name,
            row.state.lower(),
            str(row.pid or "-"),
            health,
            _duration(row.uptime),
            _mib(row.memory.rss),
            _mib(row.memory.pss),
            row.socket,
        )
    console.print(table)
    unhealthy = [r.name for r in rows if not r.healthy]
    held = f" (and the supervisor {_mib(fleet.supervisor.memory.pss)})" if fleet.supervisor else ""
    console.print(
        f"{len(rows)} processes, {_mib(fleet.memory.pss)} PSS{held}, {_mib(fleet.memory.rss)} RSS"
        + (f"; unhealthy: {', '.join(unhealthy)}" if unhealthy else "")
    )
    if unhealthy:
        sys.exit(1)


def _print_placement(directory: Path, spec: FleetSpec, as_json: bool) -> None:
    hosts = []
    for name in spec.fleet.host_names:
        paths = RunPaths(directory, name)  # a share that never ran here needs none of its programs here
        rows = status(paths, spec).processes if paths.run.exists() else []
        running = bool(rows) and not all(row.state == ORPHANED for row in rows)
        healthy = sum(row.healthy for row in rows) if running else 0
        processes = spec.fleet.processes_on(name)
        if runs_nginx(spec, name) and Service.NGINX not in processes:
            processes.append(Service.NGINX.value)  # for the links from other hosts
        hosts.append((name, spec.fleet.host(name).address, processes, running, healthy))
    if as_json:
        document = {
            "directory": str(directory.resolve()),
            "server_name": spec.server_name,
            "hosts": [
                {"name": n, "address": a, "processes": p, "running_here": r, "healthy_here": h}
                for n, a, p, r, h in hosts
            ],
        }
        click.echo(json.dumps(document, indent=2))
        return
    table = Table(title=f"{spec.server_name} on {len(hosts)} hosts")
    for column in ("host", "address", "processes", "here"):
        table.add_column(column)
    for name, address, processes, running, healthy in hosts:
        here = f"running, {healthy} of {len(processes)} healthy" if running else "-"
        table.add_row(name, address, ", ".join(processes), here)
    output_console().print(table)
    click.echo("each host's own: synfleet status --host NAME (on that host)")


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def _exit_status(rows: list[ProcessStatus]) -> int:
    """3: not running; 1: processes without their supervisor, or unhealthy; 0: all healthy."""
    if not rows:
        return 3
    return 0 if all(row.healthy for row in rows) and not any(row.state == ORPHANED for row in rows) else 1


def _print_status_json(directory: Path, server_name: str, host: str, fleet: FleetStatus) -> NoReturn:
    rows = fleet.processes
    document = {
        "directory": str(directory.resolve()),
        "server_name": server_name,
        "host": host or None,
        "running": bool(rows) and not all(row.state == ORPHANED for row in rows),
        "processes": [
            {
                "name": row.name,
                "state": row.state.lower(),
                "pid": row.pid or None,
                "healthy": row.healthy,
                "uptime_seconds": round(row.uptime, 1),
                **_memory_json(row.memory),
                "socket": row.socket or None,
            }
            for row in rows
        ],
        "supervisor": {"pid": fleet.supervisor.pid, **_memory_json(fleet.supervisor.memory)}
        if fleet.supervisor
        else None,
        "total_rss_bytes": fleet.memory.rss * 1024,
        "total_pss_bytes": fleet.memory.pss * 1024,
        "unhealthy": [row.name for row in rows if not row.healthy],
    }
    click.echo(json.dumps(document, indent=2))
    sys.exit(_exit_status(rows))


def _memory_json(memory: Memory) -> dict[str, int]:
    """RSS counts shared pages in full in every process; PSS divides them among the sharers (it
    adds up); USS is what only this process holds."""
    return {"rss_bytes": memory.rss * 1024, "pss_bytes": memory.pss * 1024, "uss_bytes": memory.uss * 1024}


@click.command("logs")
@DIR_OPTION
@HOST_OPTION
@click.argument("name", required=False)
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("-n", "--lines", default=40, show_default=True, type=click.IntRange(0, 100_000))
def logs_command(directory: Path, host: str, name: str | None, follow_: bool, lines: int) -> None:
    """Show a process's log (NAME: main, a worker, postgres, redis, nginx); without NAME, every log
    (with --host, of that host's processes)."""
    paths = RunPaths(directory, host)
    check_host(paths, load_spec(directory))
    logs = log_files(paths)
    if name is not None and name not in logs:
        raise UsageError(f"no process {name!r}; choose from: {', '.join(logs)}")
    chosen = {name: logs[name]} if name else logs
    for process, path in chosen.items():
        for line in tail(path, lines):
            click.echo(f"{process}: {line}" if name is None else line, nl=False)
    if not follow_:
        return
    try:
        for process, line in follow(chosen):
            click.echo(f"{process}: {line}" if name is None else line, nl=False)
    except KeyboardInterrupt:
        pass


@click.group("user")
def user_group() -> None:
    """Manage users on the running fleet."""


@user_group.command("add")
@DIR_OPTION
@click.argument("name")
@click.option("--password", required=True, help="The new user's password ('-' reads it from stdin).")
@click.option("--admin", is_flag=True, help="Make the user a server admin.")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="main's inbound socket, for a fleet `up` did not start: under docker compose, "
    "synapse_inbound_main.sock in the sockets volume (`docker volume inspect synfleet-<server name>_sockets`).",
)
def user_add_command(directory: Path, name: str, password: str, admin: bool, socket_path: Path | None) -> None:
    """Register user NAME through Synapse's shared-secret admin API."""
    if password == "-":
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise UsageError("--password: must not be empty")
    if socket_path is not None and not socket_path.is_socket():
        raise UsageError(f"--socket: {socket_path} is not a socket")
    paths = main_paths(directory, load_spec(directory))
    user_id = register_user(paths, name, password, admin, socket_path)["user_id"]
    click.echo(f"created {user_id}" + (" (admin)" if admin else ""))


@click.command("apply")
@DIR_OPTION
@click.option("--dry-run", is_flag=True, help="Print the plan (and the rooms that move) and change nothing.")
def apply_command(directory: Path, dry_run: bool) -> None:
    """Bring the running fleet to what fleet.toml says, restarting only what must restart."""
    console = output_console()
    paths = RunPaths(directory)
    spec = load_spec(directory)
    one_host(
        spec,
        "apply changes a fleet on one host; on several, run `synfleet down --host NAME` and "
        "`synfleet up --host NAME` on each host whose share changed (main's host first)",
    )
    change = plan_change(paths, spec)
    for line in change.lines():
        console.print(escape(line))
    if dry_run or change.empty:
        return
    began = time.monotonic()
    apply(paths, change, reporter(console))
    console.print(f"applied in {time.monotonic() - began:.1f}s")


@click.command("upgrade")
@DIR_OPTION
@click.option(
    "--synapse",
    "version",
    help="docker compose: the Synapse release to move to (sets synapse.version, renders, prints the commands).",
)
@click.option("--force", is_flag=True, help="Restart on the same release, or (compose) allow an older one.")
def upgrade_command(directory: Path, version: str | None, force: bool) -> None:
    """Move the fleet to another Synapse release: main migrates alone, then the workers start."""
    console = output_console()

    if version is None:
        one_host(
            load_spec(directory),
            "upgrade restarts a fleet on one host; on several, install the new release on every host, then "
            "`synfleet down --host NAME` on each and `synfleet up --host NAME` on main's host first (it "
            "migrates the database), then on the others",
        )
        upgrade_native(RunPaths(directory), force, reporter(console))
        return
    for command in upgrade_compose(directory, version, force, reporter(console)):
        click.echo(command)


@click.command("backup")
@DIR_OPTION
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="The archive to write (default: D/backups/<server name>-<UTC time>.backup).",
)
def backup_command(directory: Path, out: Path | None) -> None:
    """Write the running fleet (database, media, signing key, secrets, fleet.toml) to one archive."""
    console = output_console()
    spec = load_spec(directory)
    one_host(
        spec,
        "backup reads a fleet on one host; on several, back up PostgreSQL on its host (pg_dump), the "
        f"media store on the media host, and {directory / SECRETS_DIR}",
    )
    if out is None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = directory / "backups" / f"{spec.server_name}-{stamp}.backup"
        out.parent.mkdir(mode=0o700, exist_ok=True)
    elif not out.parent.is_dir():
        raise UsageError(f"--out: {out.parent} is not a directory")
    backup(directory, out, reporter(console, markup=False))


@click.command("restore")
@click.argument("archive", type=click.Path(path_type=Path))
@DIR_OPTION
@click.option("--force", is_flag=True, help="Replace the stopped fleet in D (kept beside it as D.replaced-<time>).")
def restore_command(archive: Path, directory: Path, force: bool) -> None:
    """Rebuild a fleet in D from a `synfleet backup` archive, checked whole before anything is written,
    staged beside D and swapped in whole."""
    console = output_console()
    restore(archive, directory, force, reporter(console, markup=False))


@click.group("service")
def service_group() -> None:
    """Run the fleet as a systemd service: started at boot, its supervisor restarted when it dies."""


@service_group.command("install")
@DIR_OPTION
@HOST_OPTION
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead (for managing units yourself).")
def service_install_command(directory: Path, host: str, print_only: bool) -> None:
    """Write, enable and start a systemd unit for the fleet in DIR (with --host, for that host's share)."""
    paths = RunPaths(directory, host)
    if host or (directory / FLEET_FILE).exists():
        check_host(paths, load_spec(directory))
    if print_only:
        click.echo(f"# {service.UNIT_DIR / service.unit_name(paths)}")
        click.echo(service.unit_text(paths), nl=False)
        return
    click.echo(f"installed and started {service.install(paths)}")


@service_group.command("remove")
@DIR_OPTION
@HOST_OPTION
def service_remove_command(directory: Path, host: str) -> None:
    """Stop, disable and remove the fleet's systemd unit (with --host, that host's share's)."""
    click.echo(f"removed {service.remove(RunPaths(directory, host))}")
