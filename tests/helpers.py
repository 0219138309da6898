"""What several test modules use: fixture cases, fleets of a profile, real nginx on a rendered
routing config with stub workers on its sockets, and synfleet run on a terminal of a given width."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import platform
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nio import AsyncClient

from synfleet.layout import native_layout
from synfleet.model.fleet import Fleet
from synfleet.model.profiles import profile_spec
from synfleet.model.schema import FleetSpec, read_fleet
from synfleet.model.schema.synapse import Media
from synfleet.nginx.binary.command import NginxProcess, world_readable_tempdir
from synfleet.nginx.binary.harness import StubUpstreams
from synfleet.render.nginx import NginxLayout, Site, access_lines, render_nginx
from synfleet.render.services import Context, Native
from synfleet.routing.plan import RoutingPlan
from synfleet.system import free_port, free_ports

CONFIGS = Path(__file__).parent / "configs"

#: With CI=true, a test whose prerequisite is missing (root, network namespaces, podman, an
#: importable Synapse, the seed guide beside the checkout) fails with the reason instead of
#: skipping: what CI reports as passed has run.
STRICT = os.environ.get("CI", "").lower() == "true"


def require(missing: str | None) -> None:
    """Go on when ``missing`` is None (the prerequisite is there); else skip the test with that
    reason, or with CI=true fail it."""
    if not missing:
        return
    if STRICT:
        pytest.fail(f"missing prerequisite (CI=true runs every test): {missing}", pytrace=False)
    pytest.skip(missing)


def root_reason(why: str) -> str | None:
    return None if os.geteuid() == 0 else f"needs root: {why}"


def synapse_reason() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("synapse") else "Synapse is not installed (pip install 'synfleet[synapse]')"


def podman_reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/setup.sh installs it)"
    return root_reason("the compose tests run rootful podman")


def fleet_case(name: str) -> Fleet:
    """The fleet of ``configs/fleets/<name>/fleet.toml``."""
    return read_fleet(CONFIGS / "fleets" / name / "fleet.toml").fleet


def copy_fleet_case(name: str, directory: Path) -> Path:
    """A deployment directory holding ``configs/fleets/<name>/fleet.toml``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / "fleets" / name / "fleet.toml", directory / "fleet.toml")
    return directory


def profile_with(profile: str, server_name: str = "localhost", **sections: dict[str, Any]) -> FleetSpec:
    """The fleet of ``profile`` for ``server_name``, with some keys of some sections changed."""
    data = profile_spec(server_name, profile).model_dump(mode="json")
    for section, values in sections.items():
        data[section].update(values)
    return FleetSpec.model_validate(data)


@dataclass
class LiveNginx:
    plan: RoutingPlan
    port: int
    directory: Path
    nginx: NginxProcess

    def access_log(self) -> list[dict[str, str]]:
        """Parsed access log lines (stop nginx first so the buffer is flushed)."""
        return access_lines(self.directory / "logs" / "access.log")


@contextmanager
def live_nginx(fleet: Fleet) -> Iterator[LiveNginx]:
    """Render ``fleet``'s nginx config into a temp prefix and run it with a stub on every socket."""
    with world_readable_tempdir("synfleet-test-") as directory:
        port = free_port()
        layout = NginxLayout(
            log_dir=str(directory / "logs"),
            listen=(f"127.0.0.1:{port}",),
            pid_file=str(directory / "nginx.pid"),
            temp_dir=str(directory / "tmp"),
        )
        for sub in ("logs", "tmp", "conf"):
            (directory / sub).mkdir()
        plan = RoutingPlan(fleet, socket_dir=str(directory / "sockets"))
        for name, text in render_nginx(plan, layout, Site(Media().max_upload_bytes)).items():
            (directory / "conf" / name).write_text(text)
        sockets = {
            server.removeprefix("unix:"): worker
            for upstream in plan.upstreams.values()
            for worker, server in zip(upstream.workers, upstream.servers, strict=True)
        }
        with StubUpstreams(sockets):
            nginx = NginxProcess(directory / "conf")
            nginx.start(port)
            try:
                yield LiveNginx(plan, port, directory, nginx)
            finally:
                nginx.stop()


async def call(client: AsyncClient, method: str, path: str, body: Any = None) -> Any:
    """A request nio has no method for, with the client's token; it must answer 200."""
    headers = {"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"}
    response = await client.send(method, path, json.dumps(body) if body is not None else None, headers=headers)
    text = await response.text()
    assert response.status == 200, (method, path, response.status, text)
    return json.loads(text)


def metrics_on_free_ports(profile: str) -> dict[str, Any]:
    """Metrics on: nginx's status on the first of free ports, then one for each Synapse process."""
    first = free_ports(len(profile_with(profile).fleet.workers) + 1)
    return {"enabled": True, "base_port": first + 1, "nginx_status_port": first}


@contextmanager
def prometheus(config: Path, data: Path) -> Iterator[int]:
    """A real Prometheus with ``config``, its data in ``data``, on 127.0.0.1: its port; stopped at
    the end of the block."""
    port = free_port()
    command = [prometheus_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}"]
    server = subprocess.Popen(
        [*command, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/-/ready", server)
        yield port
    finally:
        server.terminate()
        server.wait(30)


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until Prometheus answers 200 on its readiness endpoint (before, its API answers 503 in text)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"Prometheus exited with {server.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"Prometheus was not ready in {timeout:.0f}s")


def prometheus_tool(name: str) -> str:
    """``prometheus`` or ``promtool``: from the virtualenv (scripts/setup.sh unpacks them there) or
    the PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: run scripts/setup.sh"
    return found


#: kcmp(2)'s number, and its type for "the same open file description".
_KCMP = {"x86_64": 312, "aarch64": 272}
_KCMP_FILE = 0


def same_open_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Descriptor ``fd1`` of ``pid1`` and ``fd2`` of ``pid2`` are one open file (shared by a fork)."""
    libc = ctypes.CDLL(None, use_errno=True)
    answer = libc.syscall(_KCMP[platform.machine()], pid1, pid2, _KCMP_FILE, fd1, fd2)
    if answer < 0:
        raise OSError(ctypes.get_errno(), f"kcmp {pid1}:{fd1} {pid2}:{fd2}")
    return bool(answer == 0)


def descriptors(pid: int, target: str) -> list[int]:
    """``pid``'s descriptors that point at ``target`` (e.g. ``anon_inode:[eventpoll]``)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                found.append(int(fd))
        except OSError:
            continue
    return found


#: Variables that make rich treat any output as a terminal; a test of what a pipe or a terminal
#: gets must not inherit them.
_TERMINAL_OVERRIDES = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES")


def columns_env(columns: int) -> dict[str, str]:
    """This process's environment with ``COLUMNS=columns`` and none of rich's terminal overrides."""
    env = {k: v for k, v in os.environ.items() if k not in _TERMINAL_OVERRIDES}
    env["COLUMNS"] = str(columns)
    return env


def synfleet_in_terminal(*args: str, columns: int, timeout: float = 60) -> str:
    """What ``synfleet *args`` prints on a terminal ``columns`` wide (a pseudo-terminal), colours
    and line ends (CR LF) taken out."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    with subprocess.Popen(
        [sys.executable, "-m", "synfleet", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=columns_env(columns),
    ) as process:
        os.close(follower)
        chunks, deadline = [], time.monotonic() + timeout
        while select.select([leader], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(max(1.0, deadline - time.monotonic()))
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text)


def native_context(spec: FleetSpec, secrets: dict[str, str] | None = None) -> Context:
    """What the native run renders for ``spec`` under /srv/fleet/run, its programs in /usr/bin (and,
    with ``secrets``, the files that hold one)."""
    run = "/srv/fleet/run"
    programs = {name: f"/usr/bin/{name}" for name in ("python", "postgres", "redis-server", "nginx", "turnserver")}
    native = Native(programs, run, f"{run}/postgres", "", ())
    return Context(spec, native_layout(run), native=native, secrets=secrets or {})
