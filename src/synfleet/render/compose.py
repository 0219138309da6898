"""docker compose back end: the seed's compose file, one service per process, plus its env files."""

from __future__ import annotations

import json

from synfleet.layout import (
    COMPOSE,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_NGINX_CONFIG_DIR,
    DEPLOY_NGINX_CONFIG,
    DEPLOY_NGINX_LOGS,
    SECRETS_DIR,
    SYNAPSE_DIR,
)
from synfleet.model.file import FleetSpec
from synfleet.model.fleet import Role, Service
from synfleet.render.processes import MAIN_SERVICE, synapse_processes
from synfleet.render.secrets import Secret
from synfleet.render.templating import render

#: The account Synapse's official image runs as.
SYNAPSE_IMAGE_UID = SYNAPSE_IMAGE_GID = 991
#: The one-shot service that prepares the volumes before anything else starts.
INIT_SERVICE = "volumes-init"


def render_compose(spec: FleetSpec, secrets: dict[str, str]) -> dict[str, str]:
    """``docker-compose.yml`` and the env files it references, by path relative to the deploy dir."""
    processes = synapse_processes(spec.fleet, COMPOSE)
    local_postgres, local_redis = spec.database.local, spec.redis.local
    infrastructure = [(Service.POSTGRES.value, local_postgres), (Service.REDIS.value, local_redis)]
    services = []
    for process in processes:
        if process.role is Role.MAIN:
            depends = [(INIT_SERVICE, "service_completed_successfully")]
            depends += [(name, "service_healthy") for name, local in infrastructure if local]
        else:
            depends = [(MAIN_SERVICE, "service_healthy")]
        services.append(
            {
                "service": process.service,
                "group": spec.fleet.group(process.name),
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
            layout=COMPOSE,
            main_service=MAIN_SERVICE,
            init_service=INIT_SERVICE,
            synapse_user=f"{SYNAPSE_IMAGE_UID}:{SYNAPSE_IMAGE_GID}",
            secrets_dir=f"../{SECRETS_DIR}",
            http_port=COMPOSE_HTTP_PORT,
            https_port=COMPOSE_HTTPS_PORT,
            nginx_config_dir=COMPOSE_NGINX_CONFIG_DIR,
            synapse_dir=SYNAPSE_DIR,
            nginx_config=DEPLOY_NGINX_CONFIG,
            nginx_logs=DEPLOY_NGINX_LOGS,
            processes=services,
            local_postgres=local_postgres,
            local_redis=local_redis,
            resources=resources,
        )
    }
    if local_postgres:
        files["env/postgres.env"] = (
            f"POSTGRES_USER={spec.database.user}\n"
            f"POSTGRES_PASSWORD={secrets[Secret.POSTGRES_PASSWORD]}\n"
            f"POSTGRES_DB={spec.database.name}\n"
            # Synapse refuses databases whose collation is not C.
            "POSTGRES_INITDB_ARGS=--encoding=UTF8 --lc-collate=C --lc-ctype=C\n"
        )
    return files
