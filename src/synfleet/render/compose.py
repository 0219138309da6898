"""docker compose back end: the seed's compose file, one service per process, plus its env files."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from synfleet.layout import (
    COMPOSE,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_NGINX_CONFIG_DIR,
    COMPOSE_NGINX_TEMP_DIR,
    DEPLOY_NGINX_CONFIG,
    DEPLOY_NGINX_LOGS,
    SECRETS_DIR,
    SYNAPSE_DIR,
)
from synfleet.model.file import FleetSpec
from synfleet.model.fleet import Role, Service
from synfleet.render.metrics import (
    DASHBOARD_FILE,
    GRAFANA_DASHBOARDS_DIR,
    GRAFANA_PROVISIONING,
    GRAFANA_PROVISIONING_DIR,
    PROMETHEUS_CONFIG,
    PROMETHEUS_PORT,
)
from synfleet.render.processes import MAIN_SERVICE, SynapseProcess, synapse_processes
from synfleet.render.secrets import Secret
from synfleet.render.templating import render

#: The account Synapse's official image runs as.
SYNAPSE_IMAGE_UID = SYNAPSE_IMAGE_GID = 991


def synapse_entrypoint(process: SynapseProcess) -> list[str]:
    """A Synapse container's entrypoint: ``python -m <command>`` after removing its sockets and
    their lock files. Twisted keeps a lock beside each socket naming the listener's pid; a
    container restarted after a crash runs Synapse with the same pid, finds the lock "held" and
    cannot listen. Only this service makes these sockets, so what is left of them is stale.

    main starts as root, to give Synapse's data volume to the image's account first, and becomes
    that account with the image's gosu (as the image's own entrypoint does). That is not a one-shot
    service before main: podman-compose makes a dependency of every ``depends_on``, and podman
    restarts no container whose dependency has exited."""
    steps = [f"rm -f {' '.join(f'{path} {path}.lock' for path in process.sockets)}"]
    run = 'exec python -m "$$@"'  # $$ is compose's escape for a literal $
    if process.role is Role.MAIN:
        user = f"{SYNAPSE_IMAGE_UID}:{SYNAPSE_IMAGE_GID}"
        steps.insert(0, f"chown {user} {COMPOSE.data_dir}")
        run = f'exec gosu {user} python -m "$$@"'
    return ["sh", "-c", " && ".join([*steps, run]), process.service]


def project_name(server_name: str) -> str:
    """The compose project's name (the prefix of its containers, volumes and network): one per
    server name, so that two fleets on one machine do not share volumes."""
    return "synfleet-" + re.sub(r"[^a-z0-9_-]+", "-", server_name.lower()).strip("-")


def publish_address(bind: str) -> str:
    """listen.bind as a compose port mapping takes it (IPv6 in brackets)."""
    return f"[{bind}]" if ":" in bind else bind


def nginx_healthcheck(spec: FleetSpec) -> list[str]:
    """A request for /health through nginx, with the image's busybox wget (the slim nginx image has
    no curl); on HTTPS when plain HTTP only redirects."""
    if spec.tls.enabled:
        url = f"https://127.0.0.1:{COMPOSE_HTTPS_PORT}/health"
        return ["CMD", "wget", "-q", "-O", "/dev/null", "--no-check-certificate", url]
    return ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{COMPOSE_HTTP_PORT}/health"]


def render_compose(spec: FleetSpec, secrets: dict[str, str]) -> dict[str, str]:
    """``docker-compose.yml`` and the env files it references, by path relative to the deploy dir."""
    processes = synapse_processes(spec.fleet, COMPOSE)
    local_postgres, local_redis = spec.database.local, spec.redis.local
    infrastructure = [(Service.POSTGRES.value, local_postgres), (Service.REDIS.value, local_redis)]
    services = []
    for process in processes:
        if process.role is Role.MAIN:
            depends = [(name, "service_healthy") for name, local in infrastructure if local]
        else:
            depends = [(MAIN_SERVICE, "service_healthy")]
        services.append(
            {
                "service": process.service,
                "group": spec.fleet.group(process.name),
                "command": process.arguments,
                "socket": process.socket,
                "entrypoint": synapse_entrypoint(process),
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
            publish=publish_address(spec.listen.bind),
            project=project_name(spec.server_name),
            nginx_temp_dir=COMPOSE_NGINX_TEMP_DIR,
            nginx_health=nginx_healthcheck(spec),
            prometheus_config=PROMETHEUS_CONFIG,
            prometheus_port=PROMETHEUS_PORT,
            grafana_provisioning=GRAFANA_PROVISIONING,
            grafana_provisioning_dir=GRAFANA_PROVISIONING_DIR,
            grafana_dashboards=str(PurePosixPath(DASHBOARD_FILE).parent),
            grafana_dashboards_dir=GRAFANA_DASHBOARDS_DIR,
        )
    }
    if spec.metrics.enabled:
        files["env/grafana.env"] = (
            f"GF_SECURITY_ADMIN_PASSWORD={secrets[Secret.GRAFANA_ADMIN_PASSWORD]}\n"
            "GF_USERS_ALLOW_SIGN_UP=false\n"
            "GF_ANALYTICS_REPORTING_ENABLED=false\n"
            "GF_ANALYTICS_CHECK_FOR_UPDATES=false\n"
        )
    if local_postgres:
        files["env/postgres.env"] = (
            f"POSTGRES_USER={spec.database.user}\n"
            f"POSTGRES_PASSWORD={secrets[Secret.POSTGRES_PASSWORD]}\n"
            f"POSTGRES_DB={spec.database.name}\n"
            # Synapse refuses databases whose collation is not C.
            "POSTGRES_INITDB_ARGS=--encoding=UTF8 --lc-collate=C --lc-ctype=C\n"
        )
    return files
