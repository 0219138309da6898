"""Kubernetes back end: the fleet as manifests for ``kubectl apply -k`` (``D/deploy/kubernetes``).

One StatefulSet per group of Synapse processes: main; the workers of one role; each dedicated
stream writer. A pod's ordinal picks its worker (pod ``synapse-rooms-0`` runs ``rooms1``), so every
name stays stable and unique across restarts. Each process that nginx or replication reaches has a
Service of its own, selecting its one pod: nginx's upstream ``server`` text, and the address behind
it, outlive the pod, and nginx's consistent hash (ketama over that text) keeps every room on its
worker. Processes talk TCP (see :class:`~synfleet.layout.TcpLinks`); PostgreSQL and Redis are
external, or single-pod StatefulSets for a trial.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from synfleet.errors import FleetError
from synfleet.layout import (
    COMPOSE_NGINX_CONFIG_DIR,
    COMPOSE_NGINX_TEMP_DIR,
    POD_INBOUND_PORT,
    POD_REPLICATION_PORT,
    Layout,
    kubernetes_layout,
)
from synfleet.model.fleet import ROLE_ORDER, Fleet, Role, Service, Worker
from synfleet.model.ports import POSTGRES_PORT, REDIS_PORT
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.storage import POSTGRES_SUPERUSER
from synfleet.model.synapse import WORKER_MODULE
from synfleet.render.hosts import hba
from synfleet.render.nginx import NginxLayout, render_nginx, site_of
from synfleet.render.secrets import SYNAPSE_FILES, Secret
from synfleet.render.services import (
    C_COLLATION,
    CONTAINER_HBA_FILE,
    CONTAINER_INITDB_DIR,
    DATABASE_PASSWORD_VARIABLE,
    INITDB_SCRIPT,
    POSTGRES_IMAGE_DATA,
    SYNAPSE_IMAGE_GID,
    SYNAPSE_IMAGE_UID,
    Context,
    initdb_script,
    kubernetes_probes,
    nginx,
    postgres,
    redis,
    synapse,
)
from synfleet.render.synapse import render_synapse
from synfleet.routing.plan import RoutingPlan

#: Where ``synfleet render --target kubernetes`` writes, relative to ``D/deploy``.
KUBERNETES_DIR = "kubernetes"
#: The port of nginx's Service (plain HTTP; 443 too with TLS).
NGINX_SERVICE_PORT = 80
NGINX_TLS_SERVICE_PORT = 443
NGINX_REPLICAS = 2
#: The label a StatefulSet gives each pod, naming it.
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
#: The environment variable holding the pod's name, from which the command takes its ordinal.
POD_NAME_ENV = "POD_NAME"
#: libpq reads the database password from this variable; it never enters a ConfigMap.
DATABASE_PASSWORD_ENV = "PGPASSWORD"
SECRETS_NAME = "synfleet-secrets"
TLS_SECRET_NAME = "nginx-tls"
SYNAPSE_CONFIG_NAME = "synapse-config"
NGINX_CONFIG_NAME = "nginx-config"
#: The trial PostgreSQL's pg_hba.conf and first-start script.
POSTGRES_CONFIG_NAME = "postgres-config"
#: The headless Service every Synapse StatefulSet names as its governing service.
SYNAPSE_HEADLESS = "synapse"
#: What a volume claim asks for: the media store, and a trial's PostgreSQL.
MEDIA_STORE_SIZE = "50Gi"
TRIAL_POSTGRES_SIZE = "10Gi"
#: A StatefulSet's name with "-" and the controller's 10-character revision hash must fit a label.
MAX_STATEFULSET_NAME = 52

#: The probes of a container that needs no start-up allowance.
_READY_AND_LIVE: dict[str, Mapping[str, int]] = {
    "readinessProbe": {"periodSeconds": 5},
    "livenessProbe": {"periodSeconds": 10, "failureThreshold": 6},
}

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF = {"app.kubernetes.io/part-of": "synfleet"}
WORKER_LABEL = "synfleet/worker"
CONFIG_CHECKSUM = "synfleet/config-checksum"


def dns_label(text: str) -> str:
    """``text`` as lower-case letters, digits and inner hyphens (a DNS-1123 label's alphabet)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def namespace_name(server_name: str) -> str:
    """The fleet's namespace: ``synfleet-`` and the server name, e.g. ``synfleet-example-org``."""
    return f"synfleet-{dns_label(server_name)}"[:63].rstrip("-")


@dataclass(frozen=True)
class Group:
    """One StatefulSet of Synapse processes. With ``by_ordinal``, pod N runs ``<role>N+1``."""

    name: str
    workers: tuple[Worker, ...]
    by_ordinal: bool

    @property
    def resource_group(self) -> str:
        """The fleet file's ``[resources]`` group: ``main`` or the role."""
        return self.workers[0].role.value

    def pod(self, index: int) -> str:
        return f"{self.name}-{index}"

    @property
    def pods(self) -> tuple[tuple[str, Worker], ...]:
        return tuple((self.pod(index), worker) for index, worker in enumerate(self.workers))

    @property
    def labels(self) -> dict[str, str]:
        return {NAME_LABEL: "synapse", COMPONENT_LABEL: self.name}


def synapse_groups(fleet: Fleet) -> tuple[Group, ...]:
    """main, then each role's workers (in the fleet's order), then each dedicated stream writer."""
    groups = [Group("synapse-main", (fleet.main,), by_ordinal=False)]
    for role in ROLE_ORDER:
        if workers := fleet.with_role(role):
            if [w.name for w in workers] != [f"{role.value}{i}" for i in range(1, len(workers) + 1)]:
                raise AssertionError(f"{role.value} workers are not numbered from 1: pod ordinals cannot name them")
            groups.append(Group(f"synapse-{dns_label(role.value)}", workers, by_ordinal=True))
    for writer in fleet.with_role(Role.STREAM_WRITER):
        groups.append(Group(f"synapse-writer-{dns_label(writer.name)}", (writer,), by_ordinal=False))
    for group in groups:
        if len(group.name) > MAX_STATEFULSET_NAME:
            raise FleetError(
                f"stream_writers: worker name {group.workers[0].name!r} is too long for Kubernetes: its "
                f"StatefulSet {group.name} has {len(group.name)} characters, at most {MAX_STATEFULSET_NAME}"
            )
    return tuple(groups)


def worker_services(fleet: Fleet) -> dict[str, str]:
    """Each Synapse process's own Service (its pod's name), by worker name."""
    return {worker.name: pod for group in synapse_groups(fleet) for pod, worker in group.pods}


def routing_plan(fleet: Fleet) -> RoutingPlan:
    """nginx's plan: every worker at ``<its Service>:<inbound port>``, a text no pod restart changes."""
    remote = {name: f"{service}:{POD_INBOUND_PORT}" for name, service in worker_services(fleet).items()}
    return RoutingPlan(fleet, socket_dir="", remote=remote)


def kubernetes_spec(spec: FleetSpec, trial_services: bool) -> FleetSpec:
    """``spec`` as Kubernetes runs it: PostgreSQL and Redis at the trial Services, or external ones
    (required); one media worker at most. Raises FleetError naming the key otherwise."""
    media = len(spec.fleet.with_role(Role.MEDIA))
    if media > 1:
        raise FleetError(
            f"workers.media: Kubernetes takes at most 1 media worker, got {media}: media workers must share one "
            "media store, and each pod of a StatefulSet gets a volume of its own"
        )
    missing = [key for key, section in (("database.host", spec.database), ("redis.host", spec.redis)) if section.local]
    if missing and not trial_services:
        raise FleetError(
            f"{' and '.join(missing)}: required for Kubernetes, where PostgreSQL and Redis are external "
            "(set the address the pods reach), or pass --trial-services for a trial with both in the cluster"
        )
    if trial_services:
        return spec.model_copy(
            update={
                "database": spec.database.model_copy(update={"host": Service.POSTGRES.value}),
                "redis": spec.redis.model_copy(update={"host": Service.REDIS.value}),
            }
        )
    return spec


class _Dumper(yaml.SafeDumper):
    """YAML with multi-line strings (the config files in ConfigMaps) as readable ``|`` blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def _dump_all(documents: list[dict[str, Any]]) -> str:
    options: dict[str, Any] = {"Dumper": _Dumper, "sort_keys": False, "default_flow_style": False, "width": 4096}
    text = "---\n".join(yaml.dump(d, **options) for d in documents)
    return "# Rendered by synfleet from fleet.toml; edit that file and re-render.\n" + text


def _meta(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "labels": {**labels, **PART_OF}}


def _config_key(path: str) -> str:
    """A ConfigMap key for a path under the config directory (keys cannot hold "/"; no file or
    directory name synfleet writes holds "-")."""
    return path.replace("/", "-")


def _checksum(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name, text in sorted(files.items()):
        digest.update(f"{name}\0{text}\0".encode())
    return digest.hexdigest()


def _memory(value: str) -> str:
    """A fleet file size (512m, 2g) as a Kubernetes quantity (512Mi, 2Gi)."""
    units = {"k": "Ki", "m": "Mi", "g": "Gi"}
    return value[:-1] + units[value[-1]] if value[-1] in units else value


def _resources(spec: FleetSpec, group: str) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS): ``[resources]`` gives one figure per group."""
    limits = spec.resources_for(group)
    amount = {"cpu": f"{max(1, round(limits.cpus * 1000))}m", "memory": _memory(limits.memory)}
    return {"requests": amount, "limits": dict(amount)}


def _port(name: str, number: int) -> dict[str, Any]:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def _service_port(name: str, number: int, target: str | int | None = None) -> dict[str, Any]:
    return {"name": name, "port": number, "targetPort": target if target is not None else name, "protocol": "TCP"}


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRETS_NAME, "key": str(key)}}}


def _pdb(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}},
    }


def _config_volume(name: str, key: str) -> dict[str, Any]:
    """A volume of one key of the trial PostgreSQL's ConfigMap, as a file of that name."""
    return {"name": name, "configMap": {"name": POSTGRES_CONFIG_NAME, "items": [{"key": key, "path": key}]}}


def _claim(size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def _policy(name: str, target: Mapping[str, str], source: Mapping[str, str], port: int) -> dict[str, Any]:
    """Pods ``target`` take connections on ``port`` only from pods ``source`` (of the namespace)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, {}),
        "spec": {
            "podSelector": {"matchLabels": dict(target)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": dict(source)}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            ],
        },
    }


@dataclass(frozen=True)
class KubernetesRender:
    """What one render needs: the fleet as Kubernetes runs it, its secrets, nginx's container layout."""

    spec: FleetSpec
    secrets: Mapping[str, str]
    nginx_layout: NginxLayout
    trial_services: bool

    @property
    def fleet(self) -> Fleet:
        return self.spec.fleet

    @cached_property
    def layout(self) -> Layout:
        return kubernetes_layout(worker_services(self.fleet))

    @cached_property
    def plan(self) -> RoutingPlan:
        return routing_plan(self.fleet)

    @cached_property
    def synapse_files(self) -> dict[str, str]:
        return render_synapse(self.spec, self.layout, dict(self.secrets))

    @cached_property
    def nginx_files(self) -> dict[str, str]:
        return render_nginx(self.plan, self.nginx_layout, site_of(self.spec))

    # -- Synapse --------------------------------------------------------------------------------

    @cached_property
    def context(self) -> Context:
        return Context(self.spec, self.layout)

    def _command(self, group: Group) -> list[str]:
        layout = self.layout
        if not group.by_ordinal:
            return list(synapse(self.context, group.workers[0]).command)
        role = group.workers[0].role.value
        # The pod's ordinal is the suffix of its name: synapse-rooms-0 runs rooms1.
        # "$$" is Kubernetes' escape for the shell's "$" (it expands "$(NAME)" itself).
        config = layout.worker_config(f"{role}$$(( ${{{POD_NAME_ENV}##*-}} + 1 ))")
        return [
            "sh",
            "-c",
            f'exec python -m {WORKER_MODULE} --config-path {layout.shared_config} --config-path "{config}"',
        ]

    def _media_store(self, group: Group) -> bool:
        """The group's pods keep the media store: the media worker's, or main's without one."""
        media = self.fleet.with_role(Role.MEDIA)
        return group.workers[0].role is (Role.MEDIA if media else Role.MAIN)

    def synapse_container(self, group: Group) -> dict[str, Any]:
        """The one container of a group's pods: its command, the database password from the
        Secret, its ports, probes on /health, limits, and the config, secrets and data mounts."""
        layout = self.layout
        ports = [_port("http", POD_INBOUND_PORT)]
        if any(w.in_instance_map for w in group.workers):
            ports.append(_port("replication", POD_REPLICATION_PORT))
        health = synapse(self.context, group.workers[0]).health
        return {
            "name": "synapse",
            "image": self.spec.synapse_image,
            "command": self._command(group),
            "env": [
                {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                _secret_env(DATABASE_PASSWORD_ENV, Secret.POSTGRES_PASSWORD),
            ],
            "ports": ports,
            # main's first start migrates the database schema: a few minutes before /health answers.
            **kubernetes_probes(
                health,
                startupProbe={"periodSeconds": 5, "failureThreshold": 120},
                readinessProbe={"periodSeconds": 5, "failureThreshold": 2},
                livenessProbe={"periodSeconds": 10, "failureThreshold": 6},
            ),
            "resources": _resources(self.spec, group.resource_group),
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "config", "mountPath": layout.config_dir, "readOnly": True},
                {"name": "secrets", "mountPath": layout.secrets_dir, "readOnly": True},
                {"name": "data", "mountPath": layout.data_dir},
            ],
        }

    def statefulset(self, group: Group, checksum: str) -> dict[str, Any]:
        config_items = [{"key": _config_key(path), "path": path} for path in sorted(self.synapse_files)]
        secret_items = [{"key": str(name), "path": str(name)} for name in SYNAPSE_FILES]
        volumes: list[dict[str, Any]] = [
            {"name": "config", "configMap": {"name": SYNAPSE_CONFIG_NAME, "items": config_items}},
            {"name": "secrets", "secret": {"secretName": SECRETS_NAME, "defaultMode": 0o440, "items": secret_items}},
        ]
        keeps_media = self._media_store(group)
        if not keeps_media:
            volumes.append({"name": "data", "emptyDir": {}})
        spec: dict[str, Any] = {
            "serviceName": SYNAPSE_HEADLESS,
            "replicas": len(group.workers),
            # Pods start and stop independently: a worker needs no other worker to start.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": group.labels},
            "template": {
                "metadata": {"labels": {**group.labels, **PART_OF}, "annotations": {CONFIG_CHECKSUM: checksum}},
                "spec": {
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": SYNAPSE_IMAGE_UID,
                        "runAsGroup": SYNAPSE_IMAGE_GID,
                        "fsGroup": SYNAPSE_IMAGE_GID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [self.synapse_container(group)],
                    "volumes": volumes,
                },
            },
        }
        if keeps_media:
            spec["volumeClaimTemplates"] = [_claim(MEDIA_STORE_SIZE)]
        metadata = _meta(group.name, group.labels)
        return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": spec}

    def pod_services(self, group: Group) -> list[dict[str, Any]]:
        """A Service for each pod whose process nginx routes to or others call over replication."""
        routed = {w for upstream in self.plan.upstreams.values() for w in upstream.workers}
        services = []
        for pod, worker in group.pods:
            ports = []
            if worker.name in routed:
                ports.append(_service_port("http", POD_INBOUND_PORT))
            if worker.in_instance_map:
                ports.append(_service_port("replication", POD_REPLICATION_PORT))
            if not ports:
                continue
            labels = {**group.labels, WORKER_LABEL: worker.name}
            services.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": _meta(pod, labels),
                    "spec": {"type": "ClusterIP", "selector": {POD_NAME_LABEL: pod}, "ports": ports},
                }
            )
        return services

    # -- nginx ----------------------------------------------------------------------------------

    def nginx_pod(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """nginx's container, and its pod's volumes: the config, a cache, with TLS the certificate."""
        tls = self.nginx_layout.tls
        health = nginx(self.context).health  # up when it accepts connections; /health would pass through to main
        ports = [_port("http", int(self.nginx_layout.listen[0]))]
        mounts: list[dict[str, Any]] = [
            {"name": "config", "mountPath": COMPOSE_NGINX_CONFIG_DIR, "readOnly": True},
            {"name": "cache", "mountPath": COMPOSE_NGINX_TEMP_DIR},
        ]
        volumes: list[dict[str, Any]] = [
            {"name": "config", "configMap": {"name": NGINX_CONFIG_NAME}},
            {"name": "cache", "emptyDir": {}},
        ]
        if tls is not None:
            ports.append(_port("https", int(tls.listen[0])))
            directory = str(Path(tls.certificate).parent)
            mounts.append({"name": "tls", "mountPath": directory, "readOnly": True})
            items = [
                {"key": "tls.crt", "path": Path(tls.certificate).name},
                {"key": "tls.key", "path": Path(tls.key).name},
            ]
            volumes.append({"name": "tls", "secret": {"secretName": TLS_SECRET_NAME, "items": items}})
        container = {
            "name": "nginx",
            "image": self.spec.images.nginx,
            "ports": ports,
            **kubernetes_probes(health, **_READY_AND_LIVE),
            "resources": _resources(self.spec, Service.NGINX.value),
            "volumeMounts": mounts,
        }
        return container, volumes

    def nginx(self, checksum: str) -> list[dict[str, Any]]:
        labels = {NAME_LABEL: "nginx"}
        container, volumes = self.nginx_pod()
        service_ports = [_service_port("http", NGINX_SERVICE_PORT)]
        if self.nginx_layout.tls is not None:
            service_ports.append(_service_port("https", NGINX_TLS_SERVICE_PORT))
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta("nginx", labels),
            "spec": {
                "replicas": NGINX_REPLICAS,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**labels, **PART_OF}, "annotations": {CONFIG_CHECKSUM: checksum}},
                    "spec": {
                        "enableServiceLinks": False,
                        # Replicas on different nodes where there are several: a node loss leaves one.
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": labels},
                            }
                        ],
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("nginx", labels),
            "spec": {"type": "ClusterIP", "selector": labels, "ports": service_ports},
        }
        return [deployment, service, _pdb("nginx", labels)]

    # -- trial services -------------------------------------------------------------------------

    def _trial_container(self, service: Service, image: str, port: int, **extra: Any) -> dict[str, Any]:
        """A trial service's container from its row of the service table; ``extra`` goes after the
        arguments (``env``) or at the end (``volumeMounts``)."""
        start = {Service.POSTGRES: postgres, Service.REDIS: redis}[service](self.context)
        environment = {"env": extra.pop("env")} if "env" in extra else {}
        return {
            "name": service.value,
            "image": image,
            "args": list(start.command),
            **environment,
            "ports": [_port(service.value, port)],
            **kubernetes_probes(start.health, **_READY_AND_LIVE),
            "resources": _resources(self.spec, service.value),
            **extra,
        }

    def trial_postgres(self) -> list[dict[str, Any]]:
        """PostgreSQL's official image: its superuser on the pod's socket only, as the image's
        account (the password the image wants is never used); on its first start, Synapse's role
        and database (:func:`~synfleet.render.services.initdb_script`). Synapse's role logs in from
        any pod's address, with its password; the NetworkPolicy admits Synapse's pods only."""
        db = self.spec.database
        labels = {NAME_LABEL: Service.POSTGRES.value}
        environment = [
            {"name": "POSTGRES_USER", "value": POSTGRES_SUPERUSER},
            _secret_env("POSTGRES_PASSWORD", Secret.POSTGRES_SUPERUSER_PASSWORD),
            _secret_env(DATABASE_PASSWORD_VARIABLE, Secret.POSTGRES_PASSWORD),
            {"name": "POSTGRES_INITDB_ARGS", "value": C_COLLATION},
            # A subdirectory: the volume's root may hold lost+found, which initdb refuses.
            {"name": "PGDATA", "value": f"{POSTGRES_IMAGE_DATA}/pgdata"},
        ]
        hba_file, script = PurePosixPath(CONTAINER_HBA_FILE), PurePosixPath(INITDB_SCRIPT).name
        config = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(POSTGRES_CONFIG_NAME, labels),
            "data": {hba_file.name: hba(db, anywhere=True), script: initdb_script(db)},
        }
        volumes = [
            _config_volume("hba", hba_file.name),
            _config_volume("initdb", script),
        ]
        mounts = [
            {"name": "data", "mountPath": POSTGRES_IMAGE_DATA},
            {"name": "hba", "mountPath": str(hba_file.parent), "readOnly": True},
            {"name": "initdb", "mountPath": CONTAINER_INITDB_DIR, "readOnly": True},
        ]
        image = self.spec.images.postgres
        container = self._trial_container(Service.POSTGRES, image, POSTGRES_PORT, env=environment, volumeMounts=mounts)
        claim = _claim(TRIAL_POSTGRES_SIZE)
        return [config, *self._trial(Service.POSTGRES.value, labels, container, db.port, POSTGRES_PORT, claim, volumes)]

    def trial_redis(self) -> list[dict[str, Any]]:
        labels = {NAME_LABEL: Service.REDIS.value}
        container = self._trial_container(Service.REDIS, self.spec.images.redis, REDIS_PORT)
        return self._trial(Service.REDIS.value, labels, container, self.spec.redis.port, REDIS_PORT, None)

    def _trial(
        self,
        name: str,
        labels: dict[str, str],
        container: dict[str, Any],
        port: int,
        target: int,
        claim: dict[str, Any] | None,
        volumes: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        pod: dict[str, Any] = {"enableServiceLinks": False, "containers": [container]}
        if volumes:
            pod["volumes"] = volumes
        spec: dict[str, Any] = {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": {**labels, **PART_OF}}, "spec": pod},
        }
        if claim:
            spec["volumeClaimTemplates"] = [claim]
        return [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name, labels), "spec": spec},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(name, labels),
                "spec": {"type": "ClusterIP", "selector": labels, "ports": [_service_port(name, port, target)]},
            },
            _policy(f"{name}-from-synapse", labels, {NAME_LABEL: "synapse"}, target),
        ]

    # -- the whole tree -------------------------------------------------------------------------

    def secret(self) -> dict[str, Any]:
        data = {str(name): base64.b64encode(value.encode()).decode() for name, value in sorted(self.secrets.items())}
        metadata = _meta(SECRETS_NAME, {})
        return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data}

    def tls_secret(self) -> dict[str, Any]:
        data = {
            "tls.crt": base64.b64encode(Path(self.spec.tls.certificate).read_bytes()).decode(),
            "tls.key": base64.b64encode(Path(self.spec.tls.key).read_bytes()).decode(),
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(TLS_SECRET_NAME, {}),
            "type": "kubernetes.io/tls",
            "data": data,
        }

    def manifests(self) -> dict[str, list[dict[str, Any]]]:
        """Every manifest file's objects, by file name, in the order ``kubectl`` applies them."""
        namespace = namespace_name(self.spec.server_name)
        synapse_files = self.synapse_files
        nginx_files = self.nginx_files
        synapse_labels = {NAME_LABEL: "synapse"}
        files: dict[str, list[dict[str, Any]]] = {
            "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace, {})}],
            "secrets.yaml": [self.secret()],
            "synapse-config.yaml": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": _meta(SYNAPSE_CONFIG_NAME, synapse_labels),
                    "data": {_config_key(path): text for path, text in sorted(synapse_files.items())},
                }
            ],
            "nginx-config.yaml": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": _meta(NGINX_CONFIG_NAME, {NAME_LABEL: "nginx"}),
                    "data": dict(sorted(nginx_files.items())),
                }
            ],
        }
        if self.nginx_layout.tls is not None:
            files["nginx-tls.yaml"] = [self.tls_secret()]
        files["synapse-headless.yaml"] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(SYNAPSE_HEADLESS, synapse_labels),
                "spec": {"clusterIP": "None", "selector": synapse_labels, "publishNotReadyAddresses": True},
            }
        ]
        synapse_checksum = _checksum(synapse_files)
        for group in synapse_groups(self.fleet):
            objects = [self.statefulset(group, synapse_checksum), _pdb(group.name, group.labels)]
            files[f"{group.name}.yaml"] = objects + self.pod_services(group)
        files["nginx.yaml"] = self.nginx(_checksum(nginx_files))
        files["network-policies.yaml"] = [
            _policy("synapse-http-from-nginx", synapse_labels, {NAME_LABEL: "nginx"}, POD_INBOUND_PORT),
            _policy("synapse-replication-from-synapse", synapse_labels, synapse_labels, POD_REPLICATION_PORT),
        ]
        if self.trial_services:
            files["trial-postgres.yaml"] = self.trial_postgres()
            files["trial-redis.yaml"] = self.trial_redis()
        return files


def render_kubernetes(
    spec: FleetSpec, secrets: Mapping[str, str], nginx_layout: NginxLayout, trial_services: bool = False
) -> dict[str, str]:
    """Every file of ``deploy/kubernetes`` by name: the manifests and ``kustomization.yaml``."""
    render = KubernetesRender(kubernetes_spec(spec, trial_services), secrets, nginx_layout, trial_services)
    manifests = render.manifests()
    files = {name: _dump_all(objects) for name, objects in manifests.items()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace_name(spec.server_name),
        "resources": list(manifests),
    }
    files["kustomization.yaml"] = _dump_all([kustomization])
    return files
