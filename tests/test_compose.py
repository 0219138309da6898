"""The compose deployment, run for real: `synfleet render` output started with podman and
podman-compose, from locally built stand-ins of the official images (synfleet.lab.images).

For the `small` and the `seed` profile, the same client flows as the native end-to-end test
through the published port, every request on
the worker `synfleet route` predicts (with the compose socket paths), a room worker's container
killed mid-stream and restarted by its restart policy, and the project stopped and started again
with its volumes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

import helpers
from conftest import synfleet
from flows import (
    PASSWORD,
    check_rooms_still_there,
    check_routing,
    check_serves_again,
    conversation,
    new_room,
    send_stream,
    socket_healthy,
)
from postgres_roles import POSTGRES_SUPERUSER, check_least_privilege
from synfleet.lab.compose import ComposeProject
from synfleet.lab.images import SERVICES, ensure_images
from synfleet.lab.podman import Podman
from synfleet.layout import COMPOSE, inbound_socket
from synfleet.model.fleet import Role
from synfleet.model.load import load_spec
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.nginx import access_lines
from synfleet.render.services import MAIN_SERVICE
from synfleet.routing.plan import RoutingPlan
from synfleet.system import free_port

pytestmark = pytest.mark.integration

#: The account Synapse runs as in its containers (the official image's).
SYNAPSE_UID = 991


@dataclass
class ComposeFleet:
    directory: Path
    project: ComposeProject
    port: int
    profile: str
    up_seconds: float
    rooms: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plan(self) -> RoutingPlan:
        """What `synfleet route` predicts for the compose deployment: its socket paths."""
        return RoutingPlan(load_spec(self.directory).fleet, socket_dir=COMPOSE.socket_dir)

    def access_log(self) -> list[dict[str, str]]:
        time.sleep(1.5)  # nginx writes its buffered access log every second
        return access_lines(self.directory / "deploy" / "nginx" / "logs" / "access.log")

    def socket(self, worker: str) -> Path:
        """A worker's inbound socket, seen from this machine in the sockets volume."""
        return Path(inbound_socket(str(self.project.volume_path("sockets")), worker))


@pytest.fixture(scope="module")
def podman() -> Podman:
    helpers.require(helpers.podman_reason())
    return Podman.for_this_machine()


@pytest.fixture(scope="module", params=["small", "seed"])
def fleet(
    request: pytest.FixtureRequest, podman: Podman, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeFleet]:
    profile = request.param
    images = ensure_images(podman)
    if reason := podman.can_start_containers(images.synapse):
        helpers.require(f"podman cannot start a container here: {reason}")
    directory = tmp_path_factory.mktemp(f"compose-{profile}")
    port = free_port()
    spec = helpers.profile_with(
        profile, listen={"http_port": port}, synapse={"relaxed_rate_limits": True}, images=images.model_dump()
    )
    (directory / "fleet.toml").write_text(fleet_toml(spec))
    rendered = synfleet("render", "--dir", str(directory))
    assert rendered.returncode == 0, rendered.stderr
    project = ComposeProject(directory / "deploy", f"synfleet-test-{uuid.uuid4().hex[:8]}", podman)
    try:
        started = time.monotonic()
        project.up()
        seconds = project.wait_healthy()
        print(f"\n[compose {profile}] up -d to every healthcheck passing: {time.monotonic() - started:.1f}s")
        fleet = ComposeFleet(directory, project, port, profile, seconds)
        for user in ("alice", "bob"):
            main_socket = str(fleet.socket("main"))
            added = synfleet(
                "user", "add", user, "--password", PASSWORD, "--socket", main_socket, "--dir", str(directory)
            )
            assert added.returncode == 0, added.stderr
        yield fleet
    finally:
        project.remove()


def test_conversation_and_routing(fleet: ComposeFleet) -> None:
    asyncio.run(conversation(fleet))
    check_routing(fleet)
    # Synapse never runs as root, main included (it starts as root only to own its volume).
    synapse_services = {MAIN_SERVICE} | {w.name for w in fleet.plan.fleet.workers if w.role is not Role.MAIN}
    for name, container in fleet.project.containers().items():
        if name in synapse_services:
            uids = Path(f"/proc/{container.pid}/status").read_text().split("Uid:")[1].split()[:4]
            assert set(map(int, uids)) == {SYNAPSE_UID}, f"{name} runs as {uids}"


def test_killed_room_worker_container_is_restarted_and_nothing_acknowledged_is_lost(fleet: ComposeFleet) -> None:
    room = asyncio.run(new_room(fleet, "kill -9"))
    victim = fleet.plan.upstreams["synapse_inbound_room_workers"].worker_for(room[1:])
    assert victim is not None
    before = fleet.project.containers()[victim]
    killed_at: list[float] = []

    def kill() -> None:
        os.kill(before.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    acknowledged, failures = asyncio.run(send_stream(fleet, room, kill))
    socket_path = fleet.socket(victim)
    while time.monotonic() - killed_at[0] < 180:
        after = fleet.project.containers()[victim]
        if after.pid not in (0, before.pid) and socket_healthy(socket_path):
            break
        time.sleep(0.5)
    recovery = time.monotonic() - killed_at[0]
    after = fleet.project.containers()[victim]
    assert after.restarts > before.restarts and after.pid != before.pid, (before, after)
    assert socket_healthy(socket_path), f"{victim} did not come back"
    print(
        f"\n[compose {fleet.profile}] kill -9 {victim}: {len(acknowledged)} sends acknowledged, {failures} failed, "
        f"restarted and healthy after {recovery:.1f}s"
    )
    assert failures == 0 and len(acknowledged) == 120
    check_serves_again(fleet, room, victim)


def test_synapse_role_owns_its_database_and_nothing_more(fleet: ComposeFleet) -> None:
    """Synapse's role, with its password, on the sockets volume: its own database and nothing beyond.
    The superuser takes only the PostgreSQL image's own account: not root, not with its password."""
    database, secrets = load_spec(fleet.directory).database, fleet.directory / "secrets"
    sockets = str(fleet.project.volume_path("sockets"))
    check_least_privilege(sockets, database, (secrets / "postgres_password").read_text().strip())
    password = (secrets / "postgres_superuser_password").read_text().strip()
    with pytest.raises(psycopg2.OperationalError, match="Peer authentication failed"):
        psycopg2.connect(host=sockets, user=POSTGRES_SUPERUSER, password=password, dbname="postgres").close()


def test_down_then_up_keeps_users_and_rooms(fleet: ComposeFleet) -> None:
    fleet.project.down()
    assert not fleet.project.containers()
    fleet.project.up()
    seconds = fleet.project.wait_healthy()
    print(f"\n[compose {fleet.profile}] up again, every healthcheck passing after {seconds:.1f}s")
    check_rooms_still_there(fleet)


def test_images_are_built_once(podman: Podman) -> None:
    """A second call finds every image current and builds nothing: the tests' cache."""
    images = {name: tag for name, tag in ensure_images(podman).model_dump().items() if name in SERVICES}

    def ids() -> dict[str, str]:
        return {
            name: podman.check("image", "inspect", "--format", "{{.Id}}", tag).strip() for name, tag in images.items()
        }

    before = ids()
    assert ensure_images(podman).model_dump().items() >= images.items()
    assert ids() == before


def test_lab_compose_names_the_project_as_its_compose_file_does(podman: Podman, tmp_path: Path) -> None:
    """`python -m synfleet.lab.compose --dir D` starts the project under the compose file's name,
    so its volumes are where the README's `user add --socket` example looks: synfleet-<server
    name, dots as dashes>_sockets (not D's directory name)."""
    images = ensure_images(podman)
    if reason := podman.can_start_containers(images.synapse):
        helpers.require(f"podman cannot start a container here: {reason}")
    server_name = f"names-{uuid.uuid4().hex[:8]}.test"
    project = ComposeProject(tmp_path / "deploy", "synfleet-" + server_name.replace(".", "-"), podman)
    spec = helpers.profile_with("small", server_name, listen={"http_port": free_port()}, images=images.model_dump())
    (tmp_path / "fleet.toml").write_text(fleet_toml(spec))
    synfleet("render", "--dir", str(tmp_path), check=True)
    lab = [sys.executable, "-m", "synfleet.lab.compose", "--dir", str(tmp_path)]
    try:
        started = subprocess.run(lab, capture_output=True, text=True, timeout=900)
        assert started.returncode == 0, started.stdout + started.stderr
        assert started.stdout.startswith(f"{project.name}: every healthcheck passed"), started.stdout
        volumes = podman.check("volume", "ls", "--format", "{{.Name}}").split()
        assert f"{project.name}_sockets" in volumes
        assert not [volume for volume in volumes if volume.startswith(f"{tmp_path.name}_")]
        stopped = subprocess.run([*lab, "--down"], capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert project.containers() == {}
    finally:
        project.remove()
    made = [podman.check(kind, "ls", "--format", "{{.Name}}").split() for kind in ("volume", "network")]
    assert not [name for names in made for name in names if name.startswith(f"{project.name}_")]
