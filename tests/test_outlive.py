"""A fleet whose supervisor, nginx master or PostgreSQL postmaster is killed: what is left behind is
found, the restarted program serves (with the current configuration), `status` tells the truth,
`down` leaves nothing of the fleet running, and `up` brings it back. No process that is not the
fleet's is ever signalled, whatever a pid file says."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import helpers
from conftest import RunningFleet, fleet_under_test, synfleet
from synfleet.model.schema import FleetSpec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.services import Health, HealthKind
from synfleet.run.health import is_healthy
from synfleet.run.ownership import holds_listener
from synfleet.run.paths import RELOCATED_RUNS, RunPaths, place_run_directory
from synfleet.system import free_port

pytestmark = pytest.mark.integration
PASSWORD = "outlived but not forgotten"


@dataclass
class Fleet(RunningFleet):
    def after_up(self) -> None:
        added = self.synfleet("user", "add", "carol", "--password", PASSWORD)
        assert added.returncode == 0, added.stderr

    def after_down(self) -> None:
        assert not self.leftovers()

    def up(self) -> None:
        done = self.synfleet("up")
        assert done.returncode == 0, done.stdout + done.stderr

    def pid(self, relative: str) -> int:
        return int((self.directory / "run" / relative).read_text().split()[0])

    def leftovers(self) -> list[str]:
        """Every live process that names the deployment directory (command line, cwd or open file),
        found independently of synfleet's own search."""
        mark = str(self.directory.resolve())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if "Z" in (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]:
                    continue  # a zombie has exited already
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                links = [os.readlink(entry / "cwd")]
                descriptors = list((entry / "fd").iterdir())
            except OSError:
                continue
            for fd in descriptors:
                with contextlib.suppress(OSError):  # closed while being read
                    links.append(os.readlink(fd))
            if mark in command or any(link.startswith(mark) for link in links):
                found.append(f"{entry.name} {command.strip()}")
        return found

    def answers(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.port}/_matrix/client/versions", timeout=10).status_code


fleet = fleet_under_test(Fleet, "small", synapse={"relaxed_rate_limits": True})


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False


def test_a_killed_nginx_master_is_replaced_and_serves_the_current_configuration(fleet: Fleet) -> None:
    fleet.up()
    # nginx's configuration on disk changes (uploads above 1M refused); the running master keeps
    # the configuration it read at its start.
    locations = fleet.directory / "run" / "nginx" / "locations.conf"
    text = locations.read_text()
    assert f"client_max_body_size {50 << 20};" in text
    locations.write_text(text.replace(f"client_max_body_size {50 << 20};", f"client_max_body_size {1 << 20};"))
    upload = f"http://127.0.0.1:{fleet.port}/_matrix/media/v3/upload"
    assert httpx.post(upload, content=b"x" * (2 << 20), timeout=30).status_code == 401  # Synapse: no token
    master = fleet.pid("nginx/nginx.pid")
    workers = _children(master)
    assert workers
    os.kill(master, signal.SIGKILL)
    assert _wait(lambda: holds_listener(fleet.pid("nginx/nginx.pid"), fleet.port), 10), "no new master on the port"
    assert not [w for w in workers if _alive(w)], "workers of the killed master still run"
    assert httpx.post(upload, content=b"x" * (2 << 20), timeout=30).status_code == 413  # the new configuration
    assert _wait(lambda: fleet.synfleet("status").returncode == 0, 30)


def test_a_killed_nginx_master_then_down_leaves_nothing(fleet: Fleet) -> None:
    fleet.up()
    os.kill(fleet.pid("nginx/nginx.pid"), signal.SIGKILL)
    assert fleet.synfleet("down").returncode == 0
    assert not fleet.leftovers()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", fleet.port))  # the port is free


def test_a_killed_postmaster_takes_its_backends_along(fleet: Fleet) -> None:
    fleet.up()
    postmaster = fleet.pid("postgres/postmaster.pid")
    backends = _children(postmaster)
    assert backends
    os.kill(postmaster, signal.SIGKILL)
    assert _wait(
        lambda: _alive(fleet.pid("postgres/postmaster.pid")) and fleet.pid("postgres/postmaster.pid") != postmaster, 30
    )
    assert not [b for b in backends if _alive(b)], "backends of the killed postmaster still run"
    assert _wait(lambda: fleet.synfleet("status").returncode == 0, 60), fleet.synfleet("status").stdout
    assert fleet.answers() == 200
    fleet.up()
    os.kill(fleet.pid("postgres/postmaster.pid"), signal.SIGKILL)
    assert fleet.synfleet("down").returncode == 0
    assert not fleet.leftovers()


def test_a_dead_supervisor_is_reported_cleaned_up_and_recovered(fleet: Fleet) -> None:
    fleet.up()
    os.kill(fleet.pid("supervisord.pid"), signal.SIGKILL)
    time.sleep(0.5)
    status = fleet.synfleet("status")
    assert status.returncode == 1 and "run without their supervisor" in status.stdout, status.stdout
    assert fleet.answers() == 200  # still serving, unsupervised
    up = fleet.synfleet("up")  # brings it back under supervision
    assert up.returncode == 0 and "without their supervisor" in up.stdout, up.stdout + up.stderr
    assert fleet.synfleet("status").returncode == 0
    os.kill(fleet.pid("supervisord.pid"), signal.SIGKILL)
    assert fleet.synfleet("down").returncode == 0
    assert not fleet.leftovers()
    fleet.up()
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": PASSWORD}
    answer = httpx.post(f"http://127.0.0.1:{fleet.port}/_matrix/client/v3/login", json=login, timeout=30)
    assert answer.status_code == 200, answer.text  # the data outlived it all


def test_a_killed_up_leaves_nothing_that_down_cannot_stop(fleet: Fleet) -> None:
    assert fleet.synfleet("down").returncode == 0
    starting = subprocess.Popen(
        [sys.executable, "-m", "synfleet", "up", "--dir", str(fleet.directory)], stdout=subprocess.PIPE, text=True
    )
    assert starting.stdout is not None
    for line in starting.stdout:
        if "starting main" in line:
            break
    starting.kill()
    starting.wait()
    assert fleet.synfleet("down").returncode == 0
    assert not fleet.leftovers()
    fleet.up()
    assert fleet.answers() == 200


def test_a_recycled_pid_in_a_pid_file_is_never_signalled(fleet: Fleet) -> None:
    assert fleet.synfleet("down").returncode == 0
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (fleet.directory / "run" / "supervisord.pid").write_text(f"{bystander.pid}\n")
        assert fleet.synfleet("status").returncode == 3  # not taken for the fleet's supervisor
        assert fleet.synfleet("down").returncode == 0
        assert bystander.poll() is None, "down signalled a process that is not the fleet's"
    finally:
        bystander.kill()
        bystander.wait()
    fleet.up()


def test_health_is_the_supervised_process_not_whoever_holds_the_port() -> None:
    port = free_port()
    health = Health(HealthKind.LISTENER, "127.0.0.1", port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        bystander = subprocess.Popen(["sleep", "60"])
        try:
            assert is_healthy(health, os.getpid())  # this process holds the listening socket
            assert not is_healthy(health, bystander.pid)  # the port answers, but not from this pid
        finally:
            bystander.kill()
            bystander.wait()


def test_in_the_foreground_a_dead_supervisor_ends_up_for_the_service_manager(fleet: Fleet) -> None:
    assert fleet.synfleet("down").returncode == 0
    command = [sys.executable, "-m", "synfleet", "up", "--foreground", "--dir", str(fleet.directory)]
    running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: fleet.synfleet("status").returncode == 0, 120), "the fleet never became healthy"
        assert running.poll() is None  # still supervising
        os.kill(fleet.pid("supervisord.pid"), signal.SIGKILL)
        assert running.wait(timeout=30) != 0  # systemd's Restart= starts it again
    finally:
        if running.poll() is None:
            running.kill()
    fleet.up()  # what the restarted unit does: the orphans are stopped, the fleet started again
    assert fleet.synfleet("status").returncode == 0


@pytest.mark.prerequisite(None if shutil.which("systemd-analyze") else "needs systemd-analyze (package systemd)")
def test_the_service_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    printed = synfleet("service", "install", "--print", "--dir", str(tmp_path))
    assert printed.returncode == 0, printed.stderr
    first, _, unit = printed.stdout.partition("\n")
    name = Path(first.removeprefix("# ")).name
    assert name.startswith("synfleet-") and name.endswith(".service")
    assert f"--dir {tmp_path}" in unit and "Restart=always" in unit and "synfleet down" in unit
    (tmp_path / name).write_text(unit)
    verified = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.prerequisite(None if shutil.which("systemd-analyze") else "needs systemd-analyze (package systemd)")
def test_a_hosts_share_gets_a_unit_of_its_own(tmp_path: Path) -> None:
    spec = helpers.profile_with("small").model_dump(mode="json")
    spec["hosts"] = {"a": {"address": "10.1.0.2"}, "b": {"address": "10.1.0.3"}}
    spec["placement"] = {"default": "a", "rooms": "b"}
    (tmp_path / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(spec)))
    without = synfleet("service", "install", "--print", "--dir", str(tmp_path))
    assert without.returncode == 2 and "--host NAME" in without.stderr
    printed = synfleet("service", "install", "--print", "--host", "b", "--dir", str(tmp_path))
    assert printed.returncode == 0, printed.stderr
    first, _, unit = printed.stdout.partition("\n")
    name = Path(first.removeprefix("# ")).name
    assert name.startswith(f"synfleet-{tmp_path.name}-b-".replace("_", "-"))
    assert f"up --foreground --dir {tmp_path} --host b\n" in unit and f"down --dir {tmp_path} --host b\n" in unit
    (tmp_path / name).write_text(unit)
    verified = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: install would install")
def test_service_install_without_systemd_says_so_and_writes_nothing(tmp_path: Path) -> None:
    before = sorted(Path("/etc/systemd/system").glob("synfleet-*")) if Path("/etc/systemd/system").is_dir() else []
    result = synfleet("service", "install", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("synfleet: error: systemd is not running on this machine")
    assert result.stderr.count("\n") == 1
    after = sorted(Path("/etc/systemd/system").glob("synfleet-*")) if Path("/etc/systemd/system").is_dir() else []
    assert after == before


@pytest.mark.prerequisite(helpers.root_reason("the fleet's accounts exist only then"))
def test_a_deployment_out_of_reach_runs_from_var_lib(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    directory = hidden / "fleet"
    directory.mkdir()
    moved = place_run_directory(directory)
    try:
        assert moved is not None and moved.parent == RELOCATED_RUNS
        assert (directory / "run").resolve() == moved and RunPaths(directory).run == moved
        assert place_run_directory(directory) is None  # placed once
        with world_readable_tempdir("synfleet-open-") as reachable:
            assert place_run_directory(reachable) is None  # a reachable directory keeps its own run/
    finally:
        if moved is not None:
            shutil.rmtree(moved)
