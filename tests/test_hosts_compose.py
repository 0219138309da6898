"""The same fleet on three hosts, run from its compose projects (`synfleet render` writes
deploy/hosts/<name>/): each host's project started with podman-compose inside that host's network
namespace, from the locally built stand-ins of the official images, every container on the host's
network. The same client flows, routing and replication checks as the native run, the same
capture of the network between the hosts (TLS only), and the same refusals from a host outside the
fleet: here they prove the containers' PostgreSQL (its own pg_hba.conf, TLS), Redis (TLS, the
password from the secrets) and nginx's links between hosts; and that each container holds only
the TLS files it reads, its program's account's only.
"""

from __future__ import annotations

import os
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

import helpers
from conftest import synfleet
from flows import PASSWORD
from synfleet.lab import Lab, LabError, unavailable_reason
from synfleet.lab.compose import ComposeProject
from synfleet.lab.images import ensure_images
from synfleet.lab.podman import Podman
from synfleet.layout import COMPOSE, COMPOSE_HOST, inbound_socket
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.hosts import front_servers
from synfleet.render.nginx import access_lines
from synfleet.routing.plan import RoutingPlan
from synfleet.system import free_port
from three_hosts import (
    HOSTS,
    SHARES,
    Hosts,
    conversation_across_hosts,
    outsider_refused,
    sealed_conversation,
    write_fleet,
)

pytestmark = [pytest.mark.integration, pytest.mark.prerequisite(unavailable_reason())]


@dataclass
class ComposeHosts(Hosts):
    """The fleet run by one compose project per host."""

    projects: dict[str, ComposeProject] = field(default_factory=dict)
    profile: str = "three hosts, compose"

    @property
    def plan(self) -> RoutingPlan:
        """What `synfleet route` predicts for the compose projects: their socket paths, and the
        other hosts' workers at their addresses."""
        spec = self.spec
        return RoutingPlan(spec.fleet, socket_dir=COMPOSE.socket_dir, remote=front_servers(spec, COMPOSE_HOST))

    def access_log(self) -> list[dict[str, str]]:
        time.sleep(1.5)  # nginx writes its buffered access log every second
        return access_lines(self.projects["a"].deploy / "nginx" / "logs" / "access.log")

    def sockets(self, host: str) -> str:
        return str(self.projects[host].volume_path("sockets"))

    def query(self, sql: str) -> list[str]:
        spec = self.spec
        password = (self.directory / "secrets" / "postgres_password").read_text().strip()
        connection = psycopg2.connect(
            host=self.sockets("a"), user=spec.database.user, password=password, dbname=spec.database.name
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return ["|".join(str(value) for value in row) for row in cursor.fetchall()]
        finally:
            connection.close()


@pytest.fixture(scope="module")
def hosts() -> Iterator[ComposeHosts]:
    helpers.require(helpers.podman_reason())
    podman = Podman.for_this_machine()
    images = ensure_images(podman)
    if reason := podman.can_start_containers(images.synapse):
        helpers.require(f"podman cannot start a container here: {reason}")
    with world_readable_tempdir("synfleet-hosts-compose-") as directory, Lab([*HOSTS, "x"]) as lab:
        port = free_port()
        write_fleet(lab, directory, port, images=images.model_dump())
        rendered = synfleet("render", "--dir", str(directory))
        assert rendered.returncode == 0, rendered.stderr
        name = f"synfleet-test-{uuid.uuid4().hex[:8]}"
        fleet = ComposeHosts(lab, directory, port)
        for host in HOSTS:
            deploy = directory / "deploy" / "hosts" / host
            fleet.projects[host] = ComposeProject(deploy, f"{name}-{host}", podman.inside(lab[host].netns))
        started: list[ComposeProject] = []
        try:
            began = time.monotonic()
            for host in HOSTS:
                started.append(fleet.projects[host])
                fleet.projects[host].up()
            for host in HOSTS:
                fleet.projects[host].wait_healthy()
            print(f"\n[compose, three hosts] up -d to every healthcheck passing: {time.monotonic() - began:.1f}s")
            main_socket = inbound_socket(fleet.sockets("a"), "main")
            for user in ("alice", "bob"):
                added = synfleet(
                    "user", "add", user, "--password", PASSWORD, "--socket", main_socket, "--dir", str(directory)
                )
                assert added.returncode == 0, added.stderr
            yield fleet
        finally:
            left = []
            for project in reversed(started):  # every one, even when one fails
                try:
                    project.remove()
                except LabError as error:
                    left.append(str(error))
            assert not left, left


def test_each_host_project_runs_its_share_on_the_hosts_network(hosts: ComposeHosts) -> None:
    for host, expected in SHARES.items():
        containers = hosts.projects[host].containers()
        services = {"main" if name == "synapse" else name for name in containers}
        assert services == expected, host
        assert all(c.state == "running" for c in containers.values()), containers
        network = os.stat(f"/run/netns/{hosts.lab[host].netns}").st_ino
        for container in containers.values():  # each on its host's network
            assert os.stat(f"/proc/{container.pid}/ns/net").st_ino == network, (host, container.service)


def test_conversation_routing_and_replication_across_hosts(hosts: ComposeHosts) -> None:
    conversation_across_hosts(hosts)


def test_outsider_is_refused_by_every_link(hosts: ComposeHosts) -> None:
    outsider_refused(hosts)


def test_a_conversation_crosses_the_network_sealed(hosts: ComposeHosts) -> None:
    sealed_conversation(hosts)


#: The TLS files each container reads, at /secrets/tls: in its memory, or (nginx) mounted from its project.
SERVER_TLS = {"trust.pem", "host.pem", "host.key"}
CLIENT_TLS = {"trust.pem", "database.pem", "database.key"}
CONTAINER_TLS = {
    "a": {
        "postgres": SERVER_TLS,
        "redis": SERVER_TLS,
        "synapse": set(),
        "nginx": SERVER_TLS | {"front.pem", "front.key"},
    },
    "b": {"client_sync1": CLIENT_TLS, "rooms1": CLIENT_TLS, "nginx": SERVER_TLS},
    "c": {"rooms2": CLIENT_TLS, "tasks1": CLIENT_TLS, "nginx": SERVER_TLS},
}


def test_each_container_holds_only_its_tls_files_for_its_account(hosts: ComposeHosts) -> None:
    """PostgreSQL, Redis and Synapse's processes get the TLS files they read, owned by the account
    their program runs as, mode 0600 in a 0700 directory; main, beside PostgreSQL, gets none; nginx's
    master (root) reads its project's as they are."""
    for host, expected in CONTAINER_TLS.items():
        containers = hosts.projects[host].containers()
        for service, files in expected.items():
            container = containers[service]
            folder = Path(f"/proc/{container.pid}/root/secrets/tls")
            if not files:
                assert not folder.exists(), (host, service)
                continue
            program = os.stat(f"/proc/{container.pid}").st_uid  # the account its program runs as
            assert {p.name for p in folder.iterdir()} == files, (host, service)
            copied = [] if service == "nginx" else [folder]  # nginx's folder holds only its mounts
            for path in [*copied, *folder.iterdir()]:
                found = path.stat()
                mode = 0o700 if path == folder else 0o600
                assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (program, mode), (host, service, path.name)


def test_a_killed_nginx_comes_back_and_carries_the_links_again(hosts: ComposeHosts) -> None:
    """nginx on host b killed with SIGKILL: its relay sockets stay in the shared sockets volume,
    and the restarted container removes them before nginx binds them again; the links through it
    serve again (a new room on rooms1, on host b, with replication from b to main on a)."""
    before = hosts.projects["b"].containers()["nginx"]
    os.kill(before.pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = hosts.projects["b"].containers().get("nginx")
        if now is not None and now.state == "running" and now.pid != before.pid and hosts.projects["b"].healthy(now):
            break
        time.sleep(1)
    else:
        raise AssertionError("nginx on host b did not come back healthy")
    assert hosts.room_on("rooms1")
