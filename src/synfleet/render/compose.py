"""docker compose back end: the seed's compose file, one service per process, plus its env files."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

from synfleet.layout import (
    COMPOSE,
    COMPOSE_HOST,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_NGINX_CONFIG_DIR,
    COMPOSE_NGINX_TEMP_DIR,
    DEPLOY_NGINX_CONFIG,
    DEPLOY_NGINX_LOGS,
    SECRETS_DIR,
    SYNAPSE_DIR,
)
from synfleet.model.fleet import Service
from synfleet.model.schema import FleetSpec
from synfleet.render.hosts import gateways, hba, runs_nginx
from synfleet.render.metrics import (
    DASHBOARD_FILE,
    GRAFANA_DASHBOARDS_DIR,
    GRAFANA_PROVISIONING,
    GRAFANA_PROVISIONING_DIR,
    PROMETHEUS_CONFIG,
    PROMETHEUS_PORT,
)
from synfleet.render.processes import SynapseProcess, synapse_processes
from synfleet.render.secrets import Secret
from synfleet.render.templating import render

#: The account Synapse's official image runs as.
SYNAPSE_IMAGE_UID = SYNAPSE_IMAGE_GID = 991


def synapse_entrypoint(process: SynapseProcess, owner: bool) -> list[str]:
    """A Synapse container's entrypoint: ``python -m <command>`` after removing its sockets and
    their lock files. Twisted keeps a lock beside each socket naming the listener's pid; a
    container restarted after a crash runs Synapse with the same pid, finds the lock "held" and
    cannot listen. Only this service makes these sockets, so what is left of them is stale.

    The ``owner`` (main; on a host without main, that host's first Synapse process) starts as root,
    to give Synapse's data volume to the image's account first, and becomes that account with the
    image's gosu (as the image's own entrypoint does). That is not a one-shot service before it:
    podman-compose makes a dependency of every ``depends_on``, and podman restarts no container
    whose dependency has exited."""
    steps = [f"rm -f {' '.join(f'{path} {path}.lock' for path in process.sockets)}"]
    run = 'exec python -m "$$@"'  # $$ is compose's escape for a literal $
    if owner:
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


#: A host's pg_hba.conf (fleets on several hosts), in its project and in the PostgreSQL container.
HBA_FILE = "postgres/pg_hba.conf"
CONTAINER_HBA_FILE = "/etc/synfleet/pg_hba.conf"


def _wget(url: str) -> list[str]:
    insecure = ["--no-check-certificate"] if url.startswith("https:") else []
    return ["CMD", "wget", "-q", "-O", "/dev/null", *insecure, url]


def nginx_healthcheck(spec: FleetSpec, host: str = "") -> list[str]:
    """A request for /health through nginx, with the image's wget (the slim nginx image has no
    curl); on HTTPS when plain HTTP only redirects. On a host of a fleet on several hosts, nginx
    listens on the host's own addresses; where it carries only the links from other hosts, any
    answer of its first link (which refuses this host's requests) shows that it serves."""
    scheme, port = ("https", COMPOSE_HTTPS_PORT) if spec.tls.enabled else ("http", COMPOSE_HTTP_PORT)
    if not host:
        return _wget(f"{scheme}://127.0.0.1:{port}/health")
    if spec.fleet.front == host:
        bind = spec.listen.bind
        address = "127.0.0.1" if bind in ("0.0.0.0", "::") else publish_address(bind)
        port = spec.listen.https_port if spec.tls.enabled else spec.listen.http_port
        return _wget(f"{scheme}://{address}:{port}/health")
    first = gateways(spec, host, COMPOSE_HOST)[0]
    return ["CMD-SHELL", f"wget -S -O /dev/null http://{first.listen}/ 2>&1 | grep -q 'HTTP/1.1 '"]


def _depends(processes: list[SynapseProcess], process: SynapseProcess, infrastructure: list[str]) -> list[Any]:
    """The first Synapse process of a project (main, where it runs) waits for the project's
    PostgreSQL and Redis; every other one for that first."""
    if process is processes[0]:
        return [(name, "service_healthy") for name in infrastructure]
    return [(processes[0].service, "service_healthy")]


def _postgres_command(spec: FleetSpec, host: str) -> list[str]:
    """Only the socket on one host; on a host of several, also its private address, with the
    pg_hba.conf that admits the fleet's hosts."""
    command = ["postgres", "-c", f"unix_socket_directories={COMPOSE.socket_dir}"]
    if not host:
        return [*command, "-c", "listen_addresses="]
    return [*command, "-c", f"listen_addresses={spec.fleet.host(host).address}", "-c", f"hba_file={CONTAINER_HBA_FILE}"]


def _redis(spec: FleetSpec, host: str) -> dict[str, Any]:
    """Redis's entrypoint, command and healthcheck: only the socket on one host; on a host of
    several also its private address, with the generated password (read from the secrets and given
    on standard input, never on a command line)."""
    socket = COMPOSE.redis_socket
    options = ["--unixsocket", socket, "--unixsocketperm", "666", "--save", "", "--appendonly", "no"]
    if not host:
        return {
            "entrypoint": None,
            "command": ["redis-server", "--port", "0", *options],
            "health": ["CMD", "redis-cli", "-s", socket, "ping"],
        }
    password = f"$$(cat {COMPOSE.secret(Secret.REDIS_PASSWORD)})"
    return {
        "entrypoint": ["sh", "-c", f'exec redis-server - "$$@" <<EOF\nrequirepass {password}\nEOF\n', "redis-server"],
        "command": ["--bind", spec.fleet.host(host).address, "--port", str(spec.redis.port), *options],
        "health": ["CMD-SHELL", f'REDISCLI_AUTH="{password}" redis-cli -s {socket} ping | grep -q PONG'],
    }


def render_compose(spec: FleetSpec, secrets: dict[str, str], host: str = "") -> dict[str, str]:
    """``docker-compose.yml`` and the env files it references, by path relative to the deploy dir;
    with ``host``, the project of that host of a fleet on several hosts: its processes only, every
    container on the host's network."""
    layout = COMPOSE_HOST if host else COMPOSE
    here = spec.fleet.processes_on(host)  # all of them without [hosts]
    processes = [p for p in synapse_processes(spec.fleet, layout) if p.name in here]
    local_postgres, local_redis = Service.POSTGRES in here, Service.REDIS in here
    infrastructure = [service.value for service in (Service.POSTGRES, Service.REDIS) if service in here]
    services = [
        {
            "service": process.service,
            "group": spec.fleet.group(process.name),
            "command": process.arguments,
            "socket": process.socket,
            "entrypoint": synapse_entrypoint(process, owner=process is processes[0]),
            "depends_on": _depends(processes, process, infrastructure),
        }
        for process in processes
    ]
    nginx = runs_nginx(spec, host)

    def resources(group: str) -> str:
        limits = spec.resources_for(group)
        return json.dumps({"resources": {"limits": {"memory": limits.memory, "cpus": str(limits.cpus)}}})

    prometheus = ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
    prometheus.append(f"--web.listen-address={'127.0.0.1' if host else ''}:{PROMETHEUS_PORT}")
    files = {
        "docker-compose.yml": render(
            "docker-compose.yml.j2",
            spec=spec,
            layout=layout,
            host_network=bool(host),
            synapse_user=f"{SYNAPSE_IMAGE_UID}:{SYNAPSE_IMAGE_GID}",
            secrets_dir=f"{'../../' if host else ''}../{SECRETS_DIR}",
            http_port=COMPOSE_HTTP_PORT,
            https_port=COMPOSE_HTTPS_PORT,
            nginx_config_dir=COMPOSE_NGINX_CONFIG_DIR,
            synapse_dir=SYNAPSE_DIR,
            nginx_config=DEPLOY_NGINX_CONFIG,
            nginx_logs=DEPLOY_NGINX_LOGS,
            processes=services,
            local_postgres=local_postgres,
            postgres_command=_postgres_command(spec, host),
            hba=(HBA_FILE, CONTAINER_HBA_FILE) if host else None,
            local_redis=local_redis,
            redis=_redis(spec, host),
            nginx=nginx,
            nginx_depends=services[0]["service"] if services else None,
            resources=resources,
            publish=publish_address(spec.listen.bind),
            project=project_name(spec.server_name) + (f"-{host}" if host else ""),
            nginx_temp_dir=COMPOSE_NGINX_TEMP_DIR,
            nginx_health=nginx_healthcheck(spec, host) if nginx else [],
            prometheus_command=prometheus,
            grafana=not host,
            prometheus_config=PROMETHEUS_CONFIG,
            grafana_provisioning=GRAFANA_PROVISIONING,
            grafana_provisioning_dir=GRAFANA_PROVISIONING_DIR,
            grafana_dashboards=str(PurePosixPath(DASHBOARD_FILE).parent),
            grafana_dashboards_dir=GRAFANA_DASHBOARDS_DIR,
        )
    }
    if spec.metrics.enabled and not host:
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
        if host:
            files[HBA_FILE] = hba(spec.database, spec.fleet.host_addresses)
    return files
