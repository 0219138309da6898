"""Native back end: the run directory `synfleet up` starts, and its process plan.

Same nginx and Synapse templates as docker compose, with the native layout (everything under
``D/run``), plus PostgreSQL, Redis and nginx as local processes under supervisord.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from synfleet.render.deploy import Rendered, render_files
from synfleet.render.layout import Layout, native_layout
from synfleet.render.nginx import NginxLayout
from synfleet.render.processes import synapse_processes
from synfleet.render.secrets import SECRETS_DIR
from synfleet.render.templating import render
from synfleet.spec.file import FleetSpec
from synfleet.spec.fleet import Role

RUN_DIR = "run"

#: Start order: infrastructure, then main (it migrates the schema), then workers, then nginx.
TIER_INFRASTRUCTURE, TIER_MAIN, TIER_WORKERS, TIER_FRONT = range(4)


@dataclass(frozen=True)
class Health:
    """How to tell a process is ready: ``http`` GET /health on a UNIX socket, ``postgres`` /
    ``redis`` on their sockets, ``tcp`` a listening port."""

    kind: str
    target: str
    port: int = 0
    user: str = ""


@dataclass(frozen=True)
class NativeProcess:
    name: str
    tier: int
    command: list[str]
    health: Health
    log: str
    socket: str
    user: str | None = None
    stop_signal: str = "TERM"
    stop_wait: int = 20
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@dataclass(frozen=True)
class RunPaths:
    """Where the native run lives on this machine."""

    directory: Path  # the deployment directory D

    @property
    def run(self) -> Path:
        return self.directory.resolve() / RUN_DIR

    @property
    def layout(self) -> Layout:
        return native_layout(str(self.run), str((self.directory / SECRETS_DIR).resolve()))

    @property
    def sockets(self) -> Path:
        return self.run / "sockets"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def postgres_data(self) -> Path:
        return self.run / "postgres"

    @property
    def supervisor_conf(self) -> Path:
        return self.run / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run / "supervisor.sock"

    @property
    def supervisor_pid(self) -> Path:
        return self.run / "supervisord.pid"

    @property
    def nginx_dir(self) -> Path:
        return self.run / "nginx"


def native_nginx_layout(spec: FleetSpec, paths: RunPaths) -> NginxLayout:
    return NginxLayout(
        socket_dir=str(paths.sockets),
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
    logs = paths.logs
    processes: list[NativeProcess] = []
    if not spec.database.host:
        processes.append(
            NativeProcess(
                "postgres",
                TIER_INFRASTRUCTURE,
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
                Health("postgres", str(paths.sockets), user=spec.database.user),
                str(logs / "postgres.log"),
                f"{paths.sockets}/.s.PGSQL.5432",
                user=postgres_user,
                stop_signal="INT",  # fast shutdown
                stop_wait=60,
            )
        )
    if not spec.redis.host:
        processes.append(
            NativeProcess(
                "redis",
                TIER_INFRASTRUCTURE,
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
                Health("redis", layout.redis_socket),
                str(logs / "redis.log"),
                layout.redis_socket,
            )
        )
    for process in synapse_processes(spec.fleet, layout):
        processes.append(
            NativeProcess(
                process.name,
                TIER_MAIN if process.role is Role.MAIN else TIER_WORKERS,
                [sys.executable, "-m", *process.arguments],
                Health("http", process.socket),
                str(logs / f"{process.name}.log"),
                process.socket,
                environment={"PYTHONUNBUFFERED": "1"},
            )
        )
    processes.append(
        NativeProcess(
            "nginx",
            TIER_FRONT,
            [
                binaries["nginx"],
                "-p",
                str(paths.nginx_dir),
                "-e",
                str(logs / "error.log"),
                "-c",
                str(paths.nginx_dir / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            Health("tcp", spec.listen.bind, spec.listen.http_port),
            str(logs / "error.log"),
            f"{spec.listen.bind}:{spec.listen.http_port}",
            stop_signal="QUIT",
        )
    )
    return processes


def render_run_dir(
    spec: FleetSpec, paths: RunPaths, secrets: dict[str, str], processes: list[NativeProcess]
) -> Rendered:
    """The run directory's files (relative to it): nginx, Synapse, supervisord."""
    files = render_files(spec, paths.layout, native_nginx_layout(spec, paths), secrets)
    # nginx and Synapse files go where the native layout says (run/nginx, run/synapse).
    relocated = {name.replace("nginx/config/", "nginx/", 1): text for name, text in files.items()}
    relocated["supervisord.conf"] = render(
        "supervisord.conf.j2",
        paths=paths,
        processes=processes,
        as_root=os.geteuid() == 0,
    )
    return Rendered(relocated)
