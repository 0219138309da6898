"""docker compose back end: the seed's compose file, one service per process, plus its env files."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

from synfleet.layout import (
    COMPOSE,
    COMPOSE_CONFIG_SOURCE,
    COMPOSE_HOST,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_NGINX_CONFIG_DIR,
    COMPOSE_NGINX_TEMP_DIR,
    COMPOSE_SECRETS_SOURCE,
    COMPOSE_TLS_SOURCE,
    DEPLOY_NGINX_CONFIG,
    DEPLOY_NGINX_LOGS,
    DEPLOY_POSTGRES_ENV,
    SECRETS_DIR,
    SYNAPSE_DIR,
)
from synfleet.metrics.targets import RULES_FILE
from synfleet.model.fleet import Service
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.turn import listen_address
from synfleet.pki.fleet import TLS_DIR, Installed
from synfleet.render.hosts import gateways, relays
from synfleet.render.metrics import (
    DASHBOARD_FILE,
    GRAFANA_DASHBOARDS_DIR,
    GRAFANA_PROVISIONING,
    GRAFANA_PROVISIONING_DIR,
    PROMETHEUS_CONFIG,
    PROMETHEUS_CONFIG_DIR,
    PROMETHEUS_PORT,
    PROMETHEUS_RULES,
)
from synfleet.render.nginx import NginxLayout, first_link
from synfleet.render.secrets import Secret, synapse_secrets
from synfleet.render.services import (
    CONTAINER_HBA_FILE,
    CONTAINER_INITDB_DIR,
    HBA_FILE,
    INITDB_SCRIPT,
    SYNAPSE_IMAGE_GID,
    SYNAPSE_IMAGE_UID,
    Context,
    Start,
    compose_test,
    publish_address,
    service_table,
    synapse_tls,
)
from synfleet.render.templating import render


def project_name(server_name: str) -> str:
    """The compose project's name (the prefix of its containers, volumes and network): one per
    server name, so that two fleets on one machine do not share volumes."""
    return "synfleet-" + re.sub(r"[^a-z0-9_-]+", "-", server_name.lower()).strip("-")


def _depends(starts: list[Start], start: Start, infrastructure: list[str]) -> list[Any]:
    """The first Synapse process of a project (main, where it runs) waits for the project's
    PostgreSQL and Redis; every other one for that first."""
    if start is starts[0]:
        return [(name, "service_healthy") for name in infrastructure]
    return [(starts[0].name, "service_healthy")]


#: Where the project's files go, in the project and in the containers: the same for every project.
PROJECT_PATHS = {
    "http_port": COMPOSE_HTTP_PORT,
    "https_port": COMPOSE_HTTPS_PORT,
    "nginx_config_dir": COMPOSE_NGINX_CONFIG_DIR,
    "synapse_dir": SYNAPSE_DIR,
    "nginx_config": DEPLOY_NGINX_CONFIG,
    "nginx_logs": DEPLOY_NGINX_LOGS,
    "postgres_env": DEPLOY_POSTGRES_ENV,
    "nginx_temp_dir": COMPOSE_NGINX_TEMP_DIR,
    "prometheus_config": PROMETHEUS_CONFIG,
    "prometheus_rules": PROMETHEUS_RULES,
    "prometheus_config_dir": PROMETHEUS_CONFIG_DIR,
    "rules_file": RULES_FILE,
    "grafana_provisioning": GRAFANA_PROVISIONING,
    "grafana_provisioning_dir": GRAFANA_PROVISIONING_DIR,
    "grafana_dashboards": str(PurePosixPath(DASHBOARD_FILE).parent),
    "grafana_dashboards_dir": GRAFANA_DASHBOARDS_DIR,
    "secrets_source": COMPOSE_SECRETS_SOURCE,
    "tls_source": COMPOSE_TLS_SOURCE,
    "secrets": SECRETS_DIR,
    "project_tls": f"{SECRETS_DIR}/{TLS_DIR}",  # a host's files of the links between hosts
    "redis_password": Secret.REDIS_PASSWORD.value,
    "turn_secret": Secret.TURN_SHARED_SECRET.value,
}


def _synapse_services(spec: FleetSpec, table: dict[str, Start]) -> list[dict[str, Any]]:
    """The project's Synapse services, from their rows of the service table."""
    workers = [worker for worker in spec.fleet.workers if worker.name in table]
    synapse = [table[worker.name] for worker in workers]
    infrastructure = [service.value for service in (Service.POSTGRES, Service.REDIS) if service in table]
    return [
        {
            "service": start.name,
            "group": spec.fleet.group(worker.name),
            "command": list(start.command),
            "entrypoint": list(start.entrypoint),
            "depends_on": _depends(synapse, start, infrastructure),
            "health": compose_test(start.health),
        }
        for worker, start in zip(workers, synapse, strict=True)
    ]


def _nginx_tls(spec: FleetSpec, host: str) -> list[str]:
    """The TLS files nginx reads on ``host`` of a fleet on several hosts (relative to the secrets
    directory): the CAs its links trust, its host's identity, and the front's on the front's host."""
    identities = [Installed.HOST, Installed.FRONT] if spec.fleet.front == host else [Installed.HOST]
    return [Installed.TRUST.certificate, *(name for i in identities for name in (i.certificate, i.key))]


def _grafana_env(secrets: dict[str, str]) -> str:
    return (
        f"GF_SECURITY_ADMIN_PASSWORD={secrets[Secret.GRAFANA_ADMIN_PASSWORD]}\n"
        "GF_USERS_ALLOW_SIGN_UP=false\n"
        "GF_ANALYTICS_REPORTING_ENABLED=false\n"
        "GF_ANALYTICS_CHECK_FOR_UPDATES=false\n"
    )


def turn_ports(spec: FleetSpec) -> list[str]:
    """The port mappings of coturn's container on a bridged network: its port, UDP and TCP, and
    its relay ports, each published at the same number on the address it listens on."""
    turn = spec.turn
    at = publish_address(listen_address(spec))
    relays = f"{turn.relay_min_port}-{turn.relay_max_port}"
    return [
        f"{at}:{turn.port}:{turn.port}/udp",
        f"{at}:{turn.port}:{turn.port}/tcp",
        f"{at}:{relays}:{relays}/udp",
    ]


def render_compose(spec: FleetSpec, secrets: dict[str, str], host: str = "") -> dict[str, str]:
    """``docker-compose.yml`` and the env files it references, by path relative to the deploy dir;
    with ``host``, the project of that host of a fleet on several hosts: its processes only, every
    container on the host's network."""
    layout = COMPOSE_HOST if host else COMPOSE
    # nginx's links between hosts: on a host that is not the front, its health check asks the first.
    links = NginxLayout(
        layout.nginx_log_dir, (), gateways=gateways(spec, host, layout), relays=relays(spec, host, layout)
    )
    context = Context(spec, layout, host, secrets=secrets)
    table = service_table(context, spec.fleet.front == host, first_link(links))
    # A killed nginx leaves its relay sockets in the shared volume, and binds none that exists.
    stale = [relay.listen for relay in links.relays if relay.listen.startswith(f"{layout.socket_dir}/")]
    services = _synapse_services(spec, table)
    nginx = table.get(Service.NGINX)

    def resources(group: str) -> str:
        limits = spec.resources_for(group)
        return json.dumps({"resources": {"limits": {"memory": limits.memory, "cpus": str(limits.cpus)}}})

    prometheus = [f"--config.file={PROMETHEUS_CONFIG_DIR}/prometheus.yml", "--storage.tsdb.path=/prometheus"]
    prometheus.append(f"--web.listen-address={'127.0.0.1' if host else ''}:{PROMETHEUS_PORT}")
    compose_file = render(
        "docker-compose.yml.j2",
        **PROJECT_PATHS,
        spec=spec,
        layout=layout,
        host_network=bool(host),
        synapse_user=f"{SYNAPSE_IMAGE_UID}:{SYNAPSE_IMAGE_GID}",
        config_source=COMPOSE_CONFIG_SOURCE,
        synapse_tls=bool(synapse_tls(context)),
        nginx_tls=_nginx_tls(spec, host) if host else [],
        nginx_entrypoint=["sh", "-c", f'rm -f {" ".join(stale)}; exec /docker-entrypoint.sh "$@"', "sh"]
        if stale
        else [],
        secrets_dir=f"{'../../' if host else ''}../{SECRETS_DIR}",
        processes=services,
        postgres=table.get(Service.POSTGRES),
        hba=(HBA_FILE, CONTAINER_HBA_FILE),
        initdb=(INITDB_SCRIPT, f"{CONTAINER_INITDB_DIR}/{PurePosixPath(INITDB_SCRIPT).name}"),
        redis=table.get(Service.REDIS),
        turn=table.get(Service.TURN),
        turn_ports=turn_ports(spec),
        synapse_secrets=synapse_secrets(spec),
        compose_test=compose_test,
        nginx=nginx,
        nginx_depends=services[0]["service"] if services else None,
        resources=resources,
        publish=publish_address(spec.listen.bind),
        project=project_name(spec.server_name) + (f"-{host}" if host else ""),
        nginx_health=compose_test(nginx.health, spec.tls.enabled) if nginx else [],
        prometheus_command=prometheus,
        grafana=not host,
    )
    files = {"docker-compose.yml": compose_file}
    if spec.metrics.enabled and not host:
        files["env/grafana.env"] = _grafana_env(secrets)
    for start in table.values():
        files.update(start.files)
    return files
