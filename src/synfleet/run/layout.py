"""Which layout a deployment directory runs with, and so which sockets nginx hashes over."""

from __future__ import annotations

from pathlib import Path

from synfleet.render.native import RunPaths
from synfleet.routing.plan import DOCKER_SOCKET_DIR, RoutingPlan
from synfleet.spec.load import load_spec


def deployed_plan(directory: Path) -> RoutingPlan:
    """The routing plan of ``directory``'s fleet with the socket paths it runs with.

    nginx's consistent hash depends on the ``server`` strings, so the native run (sockets under
    ``D/run``) and docker compose (``/sockets``) place rooms differently. A directory that
    ``synfleet up`` has run uses the native paths, any other the compose paths.
    """
    fleet = load_spec(directory).fleet
    paths = RunPaths(directory)
    socket_dir = str(paths.sockets) if paths.supervisor_conf.exists() else DOCKER_SOCKET_DIR
    return RoutingPlan(fleet, socket_dir=socket_dir)
