"""docker compose back end: the seed's compose file, one service per process, plus its env files."""

from __future__ import annotations

import json

from synfleet.render.layout import COMPOSE
from synfleet.render.processes import synapse_processes
from synfleet.render.templating import render
from synfleet.spec.file import FleetSpec
from synfleet.spec.fleet import Role


def render_compose(spec: FleetSpec, secrets: dict[str, str]) -> dict[str, str]:
    """``docker-compose.yml`` and the env files it references, by path relative to the deploy dir."""
    processes = synapse_processes(spec.fleet, COMPOSE)
    local_postgres, local_redis = not spec.database.host, not spec.redis.host
    infrastructure = [("postgres", local_postgres), ("redis", local_redis)]
    services = []
    for process in processes:
        if process.role is Role.MAIN:
            depends = [("sockets-init", "service_completed_successfully")]
            depends += [(name, "service_healthy") for name, local in infrastructure if local]
        else:
            depends = [("synapse", "service_healthy")]
        services.append(
            {
                "service": process.service,
                "group": process.role.value,
                "command": process.arguments,
                "socket": process.socket,
                "depends_on": depends,
            }
        )

    def resources(group: str) -> str:
        limits = spec.resources_for(group)
        return json.dumps({"resources": {"limits": {"memory": limits.memory, "cpus": str(limits.cpus)}}})

    files = {
        "docker-compose.yml": render(
            "docker-compose.yml.j2",
            spec=spec,
            processes=services,
            local_postgres=local_postgres,
            local_redis=local_redis,
            resources=resources,
        )
    }
    if local_postgres:
        files["env/postgres.env"] = (
            f"POSTGRES_USER={spec.database.user}\n"
            f"POSTGRES_PASSWORD={secrets['postgres_password']}\n"
            f"POSTGRES_DB={spec.database.name}\n"
            # Synapse refuses databases whose collation is not C.
            "POSTGRES_INITDB_ARGS=--encoding=UTF8 --lc-collate=C --lc-ctype=C\n"
        )
    return files
