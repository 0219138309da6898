"""Where the native run of a deployment directory lives on this machine."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from synfleet.errors import UsageError
from synfleet.layout import COMPOSE, COMPOSE_HOST, NGINX_DIR, Layout, native_layout
from synfleet.model.fleet import Fleet
from synfleet.model.schema import FleetSpec
from synfleet.render.hosts import front_servers
from synfleet.routing.plan import RoutingPlan

RUN_DIR = "run"


@dataclass(frozen=True)
class RunPaths:
    """The run directory ``D/run`` of deployment directory ``D``: what the processes see (the
    :attr:`layout`), and what only synfleet uses (supervisord, PostgreSQL's data, nginx's prefix)."""

    directory: Path  # the deployment directory D
    host: str = ""  # in a fleet on several hosts, the host whose share runs here

    @cached_property
    def run(self) -> Path:
        """``D/run`` (``D/run-<host>`` for one host's share), or where it links to (see
        :func:`place_run_directory`)."""
        return (self.directory.resolve() / run_dir_name(self.host)).resolve()

    @cached_property
    def layout(self) -> Layout:
        return native_layout(str(self.run), gateway=bool(self.host))

    @property
    def secrets(self) -> Path:
        """The copy of the deployment's secrets that the processes read."""
        return Path(self.layout.secrets_dir)

    @property
    def config(self) -> Path:
        return Path(self.layout.config_dir)

    @property
    def sockets(self) -> Path:
        return Path(self.layout.socket_dir)

    @property
    def logs(self) -> Path:
        """supervisord's and nginx's logs: only root writes here when run as root."""
        return Path(self.layout.nginx_log_dir)

    @property
    def own_logs(self) -> Path:
        """The logs the fleet's processes write themselves, in a directory of the fleet's account."""
        return Path(self.layout.log_dir or self.layout.nginx_log_dir)

    @property
    def data(self) -> Path:
        return Path(self.layout.data_dir)

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
        return self.run / NGINX_DIR

    def log(self, process: str) -> Path:
        """A process's own log file (Synapse's logging, PostgreSQL's, Redis's)."""
        return Path(self.layout.log_file(process))

    @property
    def initdb_log(self) -> Path:
        return self.logs / "initdb.log"

    @property
    def nginx_error_log(self) -> Path:
        return self.logs / "error.log"

    def output(self, process: str) -> Path:
        """What supervisord captures of a process's stdout and stderr."""
        return self.logs / f"{process}.out"

    @property
    def access_log(self) -> Path:
        return self.logs / "access.log"

    @property
    def gateway_log(self) -> Path:
        """nginx's log of the requests other hosts send to this one (a fleet on several hosts)."""
        return self.logs / "gateway.log"


def run_dir_name(host: str = "") -> str:
    return f"{RUN_DIR}-{host}" if host else RUN_DIR


#: Where run directories go when their deployment directory is out of other accounts' reach.
RELOCATED_RUNS = Path("/var/lib/synfleet/runs")


def blocked_parent(path: Path) -> Path | None:
    """The first directory above ``path`` that other users cannot pass through."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def place_run_directory(directory: Path, host: str = "") -> Path | None:
    """Run as root, the fleet's accounts must reach ``D/run``. When ``D`` is out of their reach
    (a clone under /root, say), the run directory goes to /var/lib/synfleet/runs and ``D/run``
    links there; everything else stays in ``D``. The new place, when it moves now. A run directory
    already there belongs to an earlier fleet at the same path (its PostgreSQL cluster among it):
    it is never taken over, and never removed."""
    link = directory.resolve() / run_dir_name(host)
    if os.geteuid() != 0 or link.exists() or link.is_symlink() or blocked_parent(link) is None:
        return None
    target = relocated(link)
    if target.exists():
        raise UsageError(
            f"{link} is missing, but {target} holds the run directory of an earlier fleet at this path: "
            f"`ln -s {target} {link}` to run that fleet again, or remove {target} to start a new one"
        )
    RELOCATED_RUNS.mkdir(parents=True, exist_ok=True)
    for level in (RELOCATED_RUNS.parent, RELOCATED_RUNS):
        level.chmod(0o755)
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link.symlink_to(target)
    return target


def relocated(link: Path) -> Path:
    """Where the run directory ``link`` goes when its deployment directory is out of reach."""
    return RELOCATED_RUNS / f"{link.parent.name}-{hashlib.sha256(str(link).encode()).hexdigest()[:8]}"


def unplace_run_directory(directory: Path, host: str, target: Path) -> None:
    """Undo :func:`place_run_directory` after a refused start that wrote nothing there."""
    link = directory.resolve() / run_dir_name(host)
    try:
        target.rmdir()  # only while empty
    except OSError:
        return
    if link.is_symlink():
        link.unlink()


def main_paths(directory: Path, spec: FleetSpec) -> RunPaths:
    """The run directory where main runs (on its host, in a fleet on several)."""
    return RunPaths(directory, spec.fleet.main.host)


def deployed_plan(paths: RunPaths, fleet: Fleet | FleetSpec) -> RoutingPlan:
    """The routing plan of ``fleet`` with the socket paths its directory runs with.

    nginx's consistent hash depends on the ``server`` strings, so the native run (sockets under
    ``D/run``) and docker compose (``/sockets``) place rooms differently. A directory that
    ``synfleet up`` has run uses the native paths, any other the compose paths. A fleet file with
    [hosts] gives the plan of nginx's host: the other hosts' workers through its relays to them.
    """
    if not isinstance(fleet, FleetSpec):
        layout = paths.layout if paths.supervisor_conf.exists() else COMPOSE
        return RoutingPlan(fleet, socket_dir=layout.socket_dir)
    if fleet.hosts:
        paths = RunPaths(paths.directory, fleet.fleet.front)
    layout = paths.layout if paths.supervisor_conf.exists() else COMPOSE_HOST if fleet.hosts else COMPOSE
    return RoutingPlan(fleet.fleet, socket_dir=layout.socket_dir, remote=front_servers(fleet, layout))
