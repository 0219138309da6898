"""A rendered compose deployment run with podman and podman-compose: start, wait until every
healthcheck passes, find a service's container and volumes, stop.

podman runs healthchecks from systemd timers; where no systemd runs (containers, CI machines) they
never run by themselves, so :meth:`ComposeProject.wait_healthy` runs each one (``podman
healthcheck run``) until it passes. podman before 4.6 also ignores ``condition: service_healthy``
in ``depends_on``: processes that start before what they need exit and are restarted by their
restart policy, and the fleet converges.

``python -m synfleet.lab.compose --dir D`` starts ``D/deploy`` (after ``synfleet render``) under the
project name its compose file gives (``name:``, as ``docker compose up`` there would), waits for it
and prints how long that took; ``--down`` stops it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from synfleet.lab.errors import LabError
from synfleet.lab.podman import Podman
from synfleet.render.deploy import DEPLOY_DIR

COMPOSE_FILE = "docker-compose.yml"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "io.podman.compose.project"
SYSTEMD_NOISE = "unable to get systemd connection"


@dataclass(frozen=True)
class Container:
    id: str
    service: str
    state: str
    restarts: int
    pid: int


def declared_name(deploy: Path) -> str:
    """The project name the compose file in ``deploy`` gives itself (``name:``): the prefix of its
    containers, volumes and network."""
    data = yaml.safe_load((deploy / COMPOSE_FILE).read_text())
    return str(data["name"])


@dataclass
class ComposeProject:
    """One compose project: ``deploy`` (the rendered directory) under the name ``name``, run by
    ``podman`` (inside a lab host's network namespace for a project whose containers use the
    host's network)."""

    deploy: Path
    name: str
    podman: Podman

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        # Each service in its own network namespace, as Docker Compose runs them (not one pod).
        command = [*self.podman.prefix, sys.executable, "-m", "podman_compose", "--in-pod", "false"]
        command += ["-f", COMPOSE_FILE, "-p", self.name, *args]
        return subprocess.run(
            command, cwd=self.deploy, env=self.podman.env, capture_output=True, text=True, timeout=timeout
        )

    def _checked(self, *args: str, timeout: float = 600) -> None:
        done = self.compose(*args, timeout=timeout)
        if done.returncode != 0:
            # Without systemd, podman complains of it for every healthcheck: not the failure.
            lines = [line for line in (done.stderr + done.stdout).splitlines() if SYSTEMD_NOISE not in line]
            raise LabError(f"podman-compose {' '.join(args)} failed: {' / '.join(lines[-6:])}")

    def up(self) -> None:
        self._checked("up", "-d")

    def down(self, volumes: bool = False) -> None:
        """Stop dependents before what they depend on, as Docker Compose does (podman-compose stops
        every container at once: a worker that loses PostgreSQL first exits, its restart policy
        starts it again, and the project cannot be removed), then remove the project."""
        containers = self.containers()
        for layer in self.stop_order():
            ids = [containers[name].id for name in layer if name in containers]
            if ids:
                self.podman.run("stop", "-t", "10", *ids, timeout=120)
        self._checked("down", *(["--volumes"] if volumes else []))

    def remove(self) -> None:
        """Stop the project and remove its volumes; a LabError if any of its containers is left."""
        try:
            self.down(volumes=True)
        finally:
            left = self.podman.check("ps", "-a", "-q", "--filter", f"label={PROJECT_LABEL}={self.name}").split()
            if left:
                raise LabError(f"{self.name}: containers left behind: {', '.join(left)}")

    def stop_order(self) -> list[list[str]]:
        """The services in layers: each layer depends only on later ones."""
        depends = {
            name: set(cast(dict[str, object], service.get("depends_on") or {}))
            for name, service in self.services.items()
        }
        layers: list[list[str]] = []
        remaining = set(depends)
        while remaining:
            needed = {dep for name in remaining for dep in depends[name]}
            layer = sorted(remaining - needed) or sorted(remaining)
            layers.append(layer)
            remaining -= set(layer)
        return layers

    @property
    def services(self) -> dict[str, dict[str, object]]:
        data = yaml.safe_load((self.deploy / COMPOSE_FILE).read_text())
        services: dict[str, dict[str, object]] = data["services"]
        return services

    def containers(self) -> dict[str, Container]:
        """The project's containers by service, running or not."""
        listed = self.podman.check("ps", "-a", "--filter", f"label={PROJECT_LABEL}={self.name}", "--format", "json")
        ids = [entry["Id"] for entry in json.loads(listed or "[]")]
        if not ids:
            return {}
        result = {}
        for item in json.loads(self.podman.check("inspect", *ids)):
            service = item["Config"]["Labels"].get(SERVICE_LABEL, "")
            state = item["State"]
            result[service] = Container(item["Id"], service, state["Status"], int(item["RestartCount"]), state["Pid"])
        return result

    def healthy(self, container: Container) -> bool:
        done = self.podman.run("healthcheck", "run", container.id, timeout=60)
        return done.returncode == 0

    def wait_healthy(self, timeout: float = 600, interval: float = 2) -> float:
        """Seconds until every service with a healthcheck passes it; a LabError naming those that
        did not."""
        started = time.monotonic()
        pending = {name for name, service in self.services.items() if "healthcheck" in service}
        while True:
            containers = self.containers()
            for name in sorted(pending):
                container = containers.get(name)
                if container is not None and container.state == "running" and self.healthy(container):
                    pending.discard(name)
            if not pending:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise LabError(f"not healthy after {timeout:.0f}s: {', '.join(sorted(pending))}")
            time.sleep(interval)

    def volume_path(self, volume: str) -> Path:
        """Where a named volume of the project lies on this machine (rootful podman)."""
        return Path(
            self.podman.check("volume", "inspect", "--format", "{{.Mountpoint}}", f"{self.name}_{volume}").strip()
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synfleet.lab.compose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("."), help="the fleet directory (with deploy/)")
    parser.add_argument(
        "--project", default="", help="compose project name (default: the compose file's, synfleet-<server name>)"
    )
    parser.add_argument("--down", action="store_true", help="stop the project (volumes are kept)")
    args = parser.parse_args(argv)
    deploy = args.dir.resolve() / DEPLOY_DIR
    if not (deploy / COMPOSE_FILE).is_file():
        print(
            f"error: {deploy / COMPOSE_FILE} is missing: run `synfleet render --dir {args.dir}` first", file=sys.stderr
        )
        return 2
    try:
        project = ComposeProject(deploy, args.project or declared_name(deploy), Podman.for_this_machine())
        if args.down:
            project.down()
            return 0
        project.up()
        seconds = project.wait_healthy()
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{project.name}: every healthcheck passed {seconds:.1f}s after `up -d` returned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
