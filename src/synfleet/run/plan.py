"""The native run's plan: every process `synfleet up` supervises, how each starts and is checked,
and the run directory's files (nginx and Synapse from the same templates as docker compose, with
the native layout, plus supervisord's)."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError
from synfleet.model.file import FleetSpec
from synfleet.model.fleet import Role, Service
from synfleet.nginx.command import command_line
from synfleet.render.deploy import render_files
from synfleet.render.files import Rendered
from synfleet.render.nginx import NginxLayout
from synfleet.render.processes import synapse_processes
from synfleet.run.paths import NGINX_DIR, RunPaths
from synfleet.run.postgres import service_account
from synfleet.run.process import Health, HealthKind, NativeProcess, Tier
from synfleet.run.supervisor import supervisor_config
from synfleet.system import require_binary


@dataclass(frozen=True)
class Plan:
    spec: FleetSpec
    paths: RunPaths
    processes: list[NativeProcess]
    postgres_account: str | None


def plan_for(paths: RunPaths, spec: FleetSpec) -> Plan:
    """Find every binary and check the directories before anything is written or started."""
    if importlib.util.find_spec("synapse") is None:
        raise SynfleetError(
            "Synapse is not installed in this Python: pip install 'synfleet[synapse]' (or run scripts/setup.sh)"
        )
    names = ["nginx"]
    if spec.database.local:
        names += ["postgres", "initdb"]
    if spec.redis.local:
        names.append("redis-server")
    binaries = {name: require_binary(name) for name in names}
    account = service_account() if spec.database.local else None
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


def native_nginx_layout(spec: FleetSpec, paths: RunPaths) -> NginxLayout:
    return NginxLayout(
        log_dir=str(paths.logs),
        listen=(f"{_host(spec.listen.bind)}:{spec.listen.http_port}",),
        pid_file=str(paths.nginx_dir / "nginx.pid"),
        temp_dir=str(paths.nginx_dir / "tmp"),
        access_log_buffer="",
    )


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def native_processes(
    spec: FleetSpec, paths: RunPaths, binaries: dict[str, str], postgres_user: str | None
) -> list[NativeProcess]:
    """Every process `synfleet up` supervises, in start order."""
    layout = paths.layout
    processes: list[NativeProcess] = []
    if spec.database.local:
        processes.append(
            NativeProcess(
                Service.POSTGRES.value,
                Tier.INFRASTRUCTURE,
                [
                    binaries["postgres"],
                    "-D",
                    str(paths.postgres_data),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    f"unix_socket_directories={paths.sockets}",
                    "-c",
                    "max_connections=500",
                ],
                Health(HealthKind.POSTGRES, str(paths.sockets), user=spec.database.user),
                str(paths.log(Service.POSTGRES)),
                f"{paths.sockets}/.s.PGSQL.5432",
                user=postgres_user,
                stop_signal="INT",  # fast shutdown
                stop_wait=60,
            )
        )
    if spec.redis.local:
        processes.append(
            NativeProcess(
                Service.REDIS.value,
                Tier.INFRASTRUCTURE,
                [
                    binaries["redis-server"],
                    "--port",
                    "0",
                    "--unixsocket",
                    layout.redis_socket,
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(paths.run),
                ],
                Health(HealthKind.REDIS, layout.redis_socket),
                str(paths.log(Service.REDIS)),
                layout.redis_socket,
            )
        )
    for process in synapse_processes(spec.fleet, layout):
        processes.append(
            NativeProcess(
                process.name,
                Tier.MAIN if process.role is Role.MAIN else Tier.WORKERS,
                [sys.executable, "-m", *process.arguments],
                Health(HealthKind.HTTP, process.socket),
                str(paths.log(process.name)),
                process.socket,
                environment={"PYTHONUNBUFFERED": "1"},
            )
        )
    processes.append(
        NativeProcess(
            Service.NGINX.value,
            Tier.FRONT,
            command_line(
                paths.nginx_dir, paths.nginx_dir / "nginx.conf", paths.nginx_error_log, binary=binaries["nginx"]
            ),
            Health(HealthKind.TCP, spec.listen.bind, spec.listen.http_port),
            str(paths.nginx_error_log),
            f"{spec.listen.bind}:{spec.listen.http_port}",
            stop_signal="QUIT",
        )
    )
    return processes


def run_files(plan: Plan, secrets: dict[str, str]) -> Rendered:
    """The run directory's files, by path relative to it: nginx, Synapse, supervisord."""
    paths = plan.paths
    files = render_files(plan.spec, paths.layout, native_nginx_layout(plan.spec, paths), secrets, NGINX_DIR)
    files["supervisord.conf"] = supervisor_config(paths, plan.processes)
    return Rendered(files)
