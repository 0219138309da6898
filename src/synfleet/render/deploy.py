"""`synfleet render`: the docker compose deployment directory, or its Kubernetes subdirectory,
written atomically.

:func:`render_files` is shared by the compose and native targets: nginx and Synapse files for one
layout. The Kubernetes target (:mod:`synfleet.render.kubernetes`) runs nginx with compose's
container layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from synfleet.errors import UsageError
from synfleet.layout import (
    COMPOSE,
    COMPOSE_HOST,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_NGINX_TEMP_DIR,
    DEPLOY_NGINX_CONFIG,
    DEPLOY_NGINX_LOGS,
    SECRETS_DIR,
    SYNAPSE_DIR,
    Layout,
)
from synfleet.model.fleet import Service
from synfleet.model.pem import check_files
from synfleet.model.schema import FleetSpec
from synfleet.pki.fleet import host_files
from synfleet.render.compose import render_compose
from synfleet.render.files import Rendered, write_tree
from synfleet.render.hosts import front_servers, gateways, link_tls, local_metrics, local_nginx, relays, runs_nginx
from synfleet.render.kubernetes import KUBERNETES_DIR, kubernetes_spec, render_kubernetes
from synfleet.render.metrics import metrics_files
from synfleet.render.nginx import NginxLayout, NginxTls, render_nginx, site_of
from synfleet.render.secrets import ensure_secrets
from synfleet.render.services import SYNAPSE_IMAGE_UID, compose_service, publish_address
from synfleet.render.synapse import render_synapse
from synfleet.routing.plan import RoutingPlan

DEPLOY_DIR = "deploy"
#: Under the deployment, one compose project per host of a fleet on several hosts.
HOSTS_DIR = "hosts"


def nginx_tls(spec: FleetSpec, listen: str, certificate: str, key: str, http2_on: bool) -> NginxTls | None:
    """nginx's HTTPS server on ``listen`` when the fleet has TLS, with the files at those paths;
    HTTP/2 by the ``http2`` directive (nginx 1.25.1 and later) or by the older ``listen`` flag."""
    if not spec.tls.enabled:
        return None
    return NginxTls(
        listen=(listen,),
        certificate=certificate,
        key=key,
        public_port=spec.listen.https_port,
        http2_on=http2_on,
    )


def compose_nginx_layout(spec: FleetSpec, host: str = "") -> NginxLayout:
    """nginx in its container (compose's and Kubernetes' alike); with ``host``, on that host's
    network in its project of a fleet on several hosts: the public listeners if it is the front,
    and the links from the other hosts."""
    if host:  # on the host's addresses
        bind = publish_address(spec.listen.bind)
        http, https = f"{bind}:{spec.listen.http_port}", f"{bind}:{spec.listen.https_port}"
        status = f"127.0.0.1:{spec.metrics.nginx_status_port}"
    else:  # on the container's ports, which compose publishes
        http, https, status = str(COMPOSE_HTTP_PORT), str(COMPOSE_HTTPS_PORT), str(spec.metrics.nginx_status_port)
    front = not host or spec.fleet.front == host  # Kubernetes places nginx itself
    # The image's nginx version is not known here: the listen flag works in every version.
    tls = nginx_tls(spec, https, COMPOSE.tls_certificate, COMPOSE.tls_key, http2_on=False)
    return NginxLayout(
        log_dir=COMPOSE.nginx_log_dir,
        listen=(http,) if front else (),
        temp_dir=COMPOSE_NGINX_TEMP_DIR,
        tls=tls if front else None,
        status_listen=status if spec.metrics.enabled else None,
        gateways=gateways(spec, host, COMPOSE_HOST),
        relays=relays(spec, host, COMPOSE_HOST),
        links=link_tls(spec, COMPOSE_HOST),
        front=front,
    )


def render_files(
    spec: FleetSpec,
    layout: Layout,
    nginx_layout: NginxLayout,
    secrets: dict[str, str],
    nginx_dir: str,
    host: str = "",
) -> dict[str, str]:
    """nginx (into ``nginx_dir``) and Synapse files for one layout, by path relative to the
    deployment's root; with ``host``, that host's share of a fleet on several hosts."""
    plan = RoutingPlan(spec.fleet, socket_dir=layout.socket_dir, remote=front_servers(spec, layout))
    files = {f"{nginx_dir}/{name}": text for name, text in render_nginx(plan, nginx_layout, site_of(spec)).items()}
    synapse = render_synapse(spec, layout, secrets, host)
    files.update({f"{SYNAPSE_DIR}/{name}": text for name, text in synapse.items()})
    return files


def render_compose_deployment(spec: FleetSpec, secrets: dict[str, str], directory: Path) -> Rendered:
    """The compose project; on several hosts, one per host in ``hosts/<name>``, each with its
    certificates for the links between hosts (from ``directory``'s fleet CA) in ``secrets/tls``."""
    if spec.hosts:
        projects = [
            (f"{HOSTS_DIR}/{host}/", render_host_project(spec, secrets, host) | _project_tls(directory, spec, host))
            for host in spec.hosts
        ]
        files = {prefix + name: text for prefix, project in projects for name, text in project.items()}
        directories = tuple(f"{HOSTS_DIR}/{host}/{DEPLOY_NGINX_LOGS}" for host in spec.hosts)
        return Rendered(files, secrets, directories)
    files = render_files(spec, COMPOSE, compose_nginx_layout(spec), secrets, DEPLOY_NGINX_CONFIG)
    files.update(render_compose(spec, secrets))
    services = {worker.name: compose_service(worker) for worker in spec.fleet.workers}
    files.update(metrics_files(spec, lambda target: services[target.process], grafana=True, nginx=Service.NGINX.value))
    return Rendered(files, secrets, (DEPLOY_NGINX_LOGS,))


def _project_tls(directory: Path, spec: FleetSpec, host: str) -> dict[str, str]:
    return {f"{SECRETS_DIR}/{name}": text for name, text in host_files(directory, spec, host).items()}


def render_host_project(spec: FleetSpec, secrets: dict[str, str], host: str) -> dict[str, str]:
    """One host's compose project of a fleet on several hosts (see :mod:`synfleet.render.hosts`)."""
    files = render_files(spec, COMPOSE_HOST, compose_nginx_layout(spec, host), secrets, DEPLOY_NGINX_CONFIG, host)
    if not runs_nginx(spec, host):
        files = {name: text for name, text in files.items() if not name.startswith(DEPLOY_NGINX_CONFIG)}
    files.update(render_compose(spec, secrets, host))
    files.update(metrics_files(spec, local_metrics(spec, host), grafana=False, nginx=local_nginx(spec, host)))
    return files


def render_deployment(spec: FleetSpec, directory: Path) -> Path:
    """Render ``directory/deploy`` for docker compose; secrets are created once and kept."""
    check_files(spec)
    secrets = ensure_secrets(directory, spec)
    reclaim_secrets(directory)
    target = directory / DEPLOY_DIR
    write_tree(target, render_compose_deployment(spec, secrets, directory), keep=(KUBERNETES_DIR,))
    return target


def reclaim_secrets(directory: Path) -> None:
    """Run as root, take back ``D/secrets`` from the Synapse image's account where an older synfleet
    gave it away: Synapse's containers now read their copies as root (see
    :func:`synfleet.render.services.synapse_entrypoint`), and that account may be anyone's on this host."""
    if os.geteuid() != 0:
        return
    folder = directory / SECRETS_DIR
    for path in (folder, *folder.iterdir()):
        if path.lstat().st_uid == SYNAPSE_IMAGE_UID:
            os.chown(path, 0, 0, follow_symlinks=False)


def render_kubernetes_deployment(spec: FleetSpec, directory: Path, trial_services: bool = False) -> Path:
    """Render ``directory/deploy/kubernetes``; the fleet is checked for Kubernetes before anything
    (secrets included) is written. The compose files beside it are left as they are."""
    kubernetes_spec(spec, trial_services)
    check_files(spec)
    secrets = ensure_secrets(directory)
    files = render_kubernetes(spec, secrets, compose_nginx_layout(spec), trial_services)
    deploy = directory / DEPLOY_DIR
    try:
        deploy.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{deploy}: cannot create the directory: {exc.strerror}") from None
    target = deploy / KUBERNETES_DIR
    write_tree(target, Rendered(files, secrets))
    return target
