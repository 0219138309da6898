"""supervisord, driven over its XML-RPC interface on a UNIX socket."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from synfleet.errors import SynfleetError
from synfleet.render.templating import render
from synfleet.run.accounts import as_root
from synfleet.run.ownership import Running, identify, stop
from synfleet.run.paths import RunPaths
from synfleet.run.preload import MODULE as PRELOAD_MODULE
from synfleet.run.preload import UNSAFE_EXIT
from synfleet.run.supervised import NativeProcess
from synfleet.system import find_binary, fleet_python


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int
    started: int  # unix time
    description: str


def supervisor_config(paths: RunPaths, processes: list[NativeProcess]) -> str:
    """supervisord.conf: every process, none started automatically (`synfleet up` starts them
    tier by tier), each restarted when it crashes."""
    return render("supervisord.conf.j2", paths=paths, processes=processes, as_root=as_root())


class Supervisor:
    """The supervisord of one run directory."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.process: subprocess.Popen[bytes] | None = None  # supervisord, when started in the foreground

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.paths.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def daemon(self) -> Running | None:
        """supervisord, if its pid file names a live supervisord of this run directory (never a
        recycled pid: the process's command line must name this run's supervisord.conf)."""
        try:
            process = identify(int(self.paths.supervisor_pid.read_text().strip()))
        except (OSError, ValueError):
            return None
        if process is None or not ("supervisord" in process.command or PRELOAD_MODULE in process.command):
            return None
        return process if str(self.paths.supervisor_conf) in process.command else None

    def pid(self) -> int | None:
        daemon = self.daemon()
        return daemon.pid if daemon else None

    def running(self) -> bool:
        if self.pid() is None:
            return False
        try:
            return cast(str, self._proxy().getState()["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def start_daemon(self, timeout: float = 30.0, foreground: bool = False, preload: bool = False) -> str | None:
        """Start supervisord: as a daemon, or (``foreground``) as this process's child, in
        :attr:`process`, for a service manager to watch. With ``preload``, in a Python that has
        imported Synapse, to fork its processes (see :mod:`synfleet.run.preload`); if forking this
        Synapse is not safe, supervisord starts plain (every Synapse process its own Python), and
        the reason is returned."""
        binary = find_binary("supervisord")
        if binary is None:
            raise SynfleetError("supervisord is not installed: pip install supervisor (or run scripts/setup.sh)")
        self.paths.supervisor_socket.unlink(missing_ok=True)
        # -P: the caller's working directory is no place to import from (it may run as root)
        preloading = [fleet_python(), "-P", "-m", PRELOAD_MODULE]
        refused = None
        if preload and foreground:  # the check alone: a refusal must not be lost in the child's output
            check = subprocess.run([*preloading, "--check"], capture_output=True, text=True, check=False)
            refused = check.stderr.strip() if check.returncode == UNSAFE_EXIT else None
        program = preloading if preload and refused is None else [binary]
        command = [*program, "-c", str(self.paths.supervisor_conf)]
        if foreground:
            self.process = subprocess.Popen([*command, "--nodaemon"], stdout=subprocess.DEVNULL)
        else:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if preload and result.returncode == UNSAFE_EXIT:
                refused = result.stderr.strip()
                result = subprocess.run([binary, *command[len(program) :]], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SynfleetError(f"supervisord failed to start: {(result.stderr or result.stdout).strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return refused
            time.sleep(0.1)
        raise SynfleetError(
            f"supervisord did not come up within {timeout:.0f}s (see {self.paths.logs}/supervisord.log)"
        )

    def start(self, name: str) -> None:
        try:
            self._proxy().startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise SynfleetError(f"supervisord could not start {name}: {fault.faultString}") from None

    def info(self) -> dict[str, ProcessInfo]:
        return {
            p["name"]: ProcessInfo(p["name"], p["statename"], p["pid"], p["start"], p["description"])
            for p in self._proxy().getAllProcessInfo()
        }

    def reread(self) -> None:
        """Load a changed supervisord.conf: add new programs, drop removed ones."""
        added, changed, removed = self.reload_config()
        for name in removed:
            self.remove(name)
        for name in changed:
            self.remove(name)
            self.add(name)
        for name in added:
            self.add(name)

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Read supervisord.conf again: the programs (added, changed, removed), none applied yet."""
        [[added, changed, removed]] = self._proxy().reloadConfig()
        return added, changed, removed

    def add(self, name: str) -> None:
        """Take a program of the config read by :meth:`reload_config` (not started: no autostart)."""
        self._proxy().addProcessGroup(name)

    def remove(self, name: str) -> None:
        """Stop a program (gracefully, then forcibly) and forget it."""
        proxy = self._proxy()
        proxy.stopProcessGroup(name)
        proxy.removeProcessGroup(name)

    def stop(self, name: str) -> None:
        with contextlib.suppress(xmlrpc.client.Fault):  # not running
            self._proxy().stopProcess(name, True)

    def signal(self, name: str, signal_name: str) -> None:
        self._proxy().signalProcess(name, signal_name)

    def stop_all(self) -> None:
        """Stop every program, highest priority number first, each gracefully then forcibly."""
        self._proxy().stopAllProcesses(True)

    def shutdown(self, timeout: float = 60.0) -> None:
        daemon = self.daemon()
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self._proxy().shutdown()
        if daemon is not None:
            stop([daemon], signal.SIGTERM, timeout)
