"""Kubernetes back end: the fleet as manifests for ``kubectl apply -k`` (``D/deploy/kubernetes``).

One StatefulSet per group of Synapse processes: main; the workers of one role; each dedicated
stream writer. A pod's ordinal picks its worker (pod ``synapse-rooms-0`` runs ``rooms1``), so every
name stays stable and unique across restarts. Each process that nginx or replication reaches has a
Service of its own, selecting its one pod: nginx's upstream ``server`` text, and the address behind
it, outlive the pod, and nginx's consistent hash (ketama over that text) keeps every room on its
worker. Processes talk TCP (see :class:`~synfleet.layout.TcpLinks`); PostgreSQL and Redis are
external, or single-pod StatefulSets for a trial.

Every pod runs as its image's own account with a read-only root filesystem (emptyDirs where it
writes), no capability, no service account token; it is given only the secrets its process reads.
NetworkPolicies deny every connection but the fleet's own links, DNS, clients to nginx,
Synapse's outbound federation, and a scraper's namespace to the metrics ports.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
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
    SHARED_CONFIG,
    Layout,
    kubernetes_layout,
    worker_config_file,
)
from synfleet.metrics.alerts import rule_groups
from synfleet.metrics.targets import scrape_config
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
    POSTGRES_IMAGE_SOCKETS,
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
#: The Prometheus configuration that scrapes the Synapse pods (not a manifest: for the scraper).
PROMETHEUS_FILE = "prometheus/prometheus.yml"
#: The alert rules as a Prometheus Operator PrometheusRule: beside the manifests, not in the
#: kustomization, since ``kubectl apply -k`` would fail on a cluster without the operator's CRD.
PROMETHEUS_RULE_FILE = "prometheus/prometheus-rule.yaml"

#: Where a container writes scratch files (an emptyDir: the root filesystem is read-only); nginx
#: keeps its pid file there.
SCRATCH_DIR = "/tmp"
NGINX_PID_FILE = f"{SCRATCH_DIR}/nginx.pid"
#: Redis's working directory in its image (nothing is kept there: see REDIS_EPHEMERAL).
REDIS_IMAGE_WORKDIR = "/data"

#: Of Synapse's secret files, those only main reads: shared-secret registration (the admin API's
#: register endpoint is main's) and the form secret (the consent pages are main's). Each worker's
#: file unsets their paths, and its pod is not given them.
MAIN_ONLY_SECRETS = (Secret.REGISTRATION_SHARED_SECRET, Secret.FORM_SECRET)


@dataclass(frozen=True)
class Account:
    """The account a pod runs as: its image's own, never root."""

    uid: int
    gid: int


SYNAPSE_ACCOUNT = Account(SYNAPSE_IMAGE_UID, SYNAPSE_IMAGE_GID)
#: The official images' accounts: nginx's "nginx", and the alpine images' "postgres" and "redis".
#: Any of them runs as another uid too (the Debian-based PostgreSQL image by its nss_wrapper).
SERVICE_ACCOUNTS = {
    Service.NGINX: Account(101, 101),
    Service.POSTGRES: Account(70, 70),
    Service.REDIS: Account(999, 1000),
}

#: The cluster's DNS servers, which nginx (its upstreams' Service names) and Synapse ask.
KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_PORT = 53
#: Where Synapse opens connections outside the fleet (federation, push gateways, key servers):
#: HTTPS and Matrix's federation port, at any address.
OUTBOUND_PORTS = (443, 8448)

#: The checkov checks some objects fail by design, with the reason each such object names in a
#: ``checkov.io/skipN`` annotation (checkov splits it at "=", so a reason has none).
CHECKOV_SKIPS = {
    "CKV_K8S_40": "runs as its image's own account, whose uid is below 10000 and owns the image's files",
    "CKV_K8S_43": "the image is the fleet file's [images] reference by tag; pin it there with @sha256:",
    "CKV_K8S_15": "IfNotPresent keeps a node's copy of a tag; pin the image with @sha256: in [images] instead",
    "CKV_K8S_35": "libpq and the PostgreSQL image's first start read the password from the environment only",
}

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
    (required); one media worker at most; no TURN. Raises FleetError naming the key otherwise."""
    if spec.turn.enabled:
        raise FleetError(
            "turn.enabled: Kubernetes manifests carry no TURN server: coturn relays on a range of UDP ports at "
            "an address clients reach directly, which a Service of the cluster does not give; TURN runs natively "
            "(`synfleet up`) or with docker compose: leave turn.enabled false for Kubernetes"
        )
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
    """YAML with multi-line strings (the config files in ConfigMaps) as readable ``|`` blocks, and
    a value used twice written twice (no anchors, which some tools do not follow)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


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


def _scratch(name: str, path: str, memory: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A volume and its mount for a path a process writes: an emptyDir, in memory where it holds
    only small files (memory counts against the container's limit)."""
    return {"name": name, "emptyDir": {"medium": "Memory"} if memory else {}}, {"name": name, "mountPath": path}


def _pod_spec(
    account: Account, container: dict[str, Any], volumes: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A pod of one container run as ``account`` (whose group owns the pod's volumes): the runtime's
    seccomp profile, no service account token, no Service environment variables; the container
    gains no privilege, keeps no capability and writes only to its volumes. ``extra`` are more
    fields of the pod's spec."""
    hardened = {
        **container,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    security = {
        "runAsNonRoot": True,
        "runAsUser": account.uid,
        "runAsGroup": account.gid,
        "fsGroup": account.gid,
        # A volume already owned by the group (a media store, a database) is not walked on each start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": security,
        **extra,
        "containers": [hardened],
        "volumes": volumes,
    }


def _workload_meta(name: str, labels: Mapping[str, str], image: str, *skipped: str) -> dict[str, Any]:
    """A workload's metadata, naming the checkov checks it fails by design (:data:`CHECKOV_SKIPS`):
    ``skipped``, a uid below 10000 (every image's account), and for an image without a digest
    the two that ask for one."""
    checks = ["CKV_K8S_40", *skipped]
    if "@sha256:" not in image:
        checks += ["CKV_K8S_43", "CKV_K8S_15"]
    annotations = {f"checkov.io/skip{n}": f"{check}={CHECKOV_SKIPS[check]}" for n, check in enumerate(checks, 1)}
    return {**_meta(name, labels), "annotations": annotations}


def _selector(labels: Mapping[str, str]) -> dict[str, Any]:
    return {"matchLabels": dict(labels)}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _allow(
    name: str, pods: dict[str, Any], direction: str, peers: list[dict[str, Any]], ports: list[dict[str, Any]]
) -> dict[str, Any]:
    """A NetworkPolicy: the pods ``pods`` selects take (``Ingress``) or open (``Egress``)
    connections on ``ports`` from or to ``peers``, any address when there are none."""
    rule: dict[str, Any] = {("from" if direction == "Ingress" else "to"): peers} if peers else {}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, {}),
        "spec": {"podSelector": pods, "policyTypes": [direction], direction.lower(): [{**rule, "ports": ports}]},
    }


def _link(
    source: str, pods: Mapping[str, str], target: str, peers: Mapping[str, str], port: int
) -> list[dict[str, Any]]:
    """Pods ``pods`` connect to pods ``peers`` of the namespace on ``port``: the egress of the one
    (``<source>-to-<target>``) and the ingress of the other (``<target>-from-<source>``)."""
    return [
        _allow(f"{source}-to-{target}", _selector(pods), "Egress", [{"podSelector": _selector(peers)}], _tcp(port)),
        _allow(f"{target}-from-{source}", _selector(peers), "Ingress", [{"podSelector": _selector(pods)}], _tcp(port)),
    ]


def _strings(data: Any) -> Iterator[str]:
    """Every string value in parsed YAML."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


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

    @property
    def namespace(self) -> str:
        return namespace_name(self.spec.server_name)

    @cached_property
    def layout(self) -> Layout:
        return kubernetes_layout(worker_services(self.fleet))

    @cached_property
    def plan(self) -> RoutingPlan:
        return routing_plan(self.fleet)

    @cached_property
    def synapse_files(self) -> dict[str, str]:
        """Synapse's files; each worker's also unsets the shared config's paths of
        :data:`MAIN_ONLY_SECRETS` (Synapse reads every secret file its config names)."""
        files = render_synapse(self.spec, self.layout, dict(self.secrets))
        shared = yaml.safe_load(files[SHARED_CONFIG])
        main_only = {self.layout.secret(name) for name in MAIN_ONLY_SECRETS}
        unset = {key: None for key, value in shared.items() if isinstance(value, str) and value in main_only}
        for worker in self.fleet.workers:
            if worker.role is not Role.MAIN:
                files[worker_config_file(worker.name)] += "# main's only, not in this worker's pod\n" + yaml.safe_dump(
                    unset, sort_keys=False
                )
        return files

    @cached_property
    def nginx_files(self) -> dict[str, str]:
        return render_nginx(self.plan, self.nginx_layout, site_of(self.spec))

    # -- Synapse --------------------------------------------------------------------------------

    @cached_property
    def context(self) -> Context:
        return Context(self.spec, self.layout)

    def process_secrets(self, worker: Worker) -> tuple[Secret, ...]:
        """The secret files ``worker``'s process reads: those its config names (the shared file,
        then for a worker its own, whose keys replace the shared ones)."""
        config = yaml.safe_load(self.synapse_files[SHARED_CONFIG])
        if worker.role is not Role.MAIN:
            config.update(yaml.safe_load(self.synapse_files[worker_config_file(worker.name)]))
        named = set(_strings(config))
        return tuple(name for name in SYNAPSE_FILES if self.layout.secret(name) in named)

    def group_secrets(self, group: Group) -> tuple[Secret, ...]:
        """The secret files the pods of ``group`` are given: what their processes read."""
        needed = {name for worker in group.workers for name in self.process_secrets(worker)}
        return tuple(name for name in SYNAPSE_FILES if name in needed)

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
        Secret, its ports, probes on /health, limits, and the config, secrets, data and scratch
        mounts."""
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
            "volumeMounts": [
                {"name": "config", "mountPath": layout.config_dir, "readOnly": True},
                {"name": "secrets", "mountPath": layout.secrets_dir, "readOnly": True},
                {"name": "data", "mountPath": layout.data_dir},
                # Twisted spools large request bodies (media uploads) to temporary files: on disk.
                _scratch("tmp", SCRATCH_DIR)[1],
            ],
        }

    def statefulset(self, group: Group, checksum: str) -> dict[str, Any]:
        config_items = [{"key": _config_key(path), "path": path} for path in sorted(self.synapse_files)]
        secret_items = [{"key": str(name), "path": str(name)} for name in self.group_secrets(group)]
        volumes: list[dict[str, Any]] = [
            {"name": "config", "configMap": {"name": SYNAPSE_CONFIG_NAME, "items": config_items}},
            {"name": "secrets", "secret": {"secretName": SECRETS_NAME, "defaultMode": 0o440, "items": secret_items}},
            _scratch("tmp", SCRATCH_DIR)[0],
        ]
        keeps_media = self._media_store(group)
        if not keeps_media:
            volumes.append({"name": "data", "emptyDir": {}})
        pod = _pod_spec(SYNAPSE_ACCOUNT, self.synapse_container(group), volumes)
        spec: dict[str, Any] = {
            "serviceName": SYNAPSE_HEADLESS,
            "replicas": len(group.workers),
            # Pods start and stop independently: a worker needs no other worker to start.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": group.labels},
            "template": {
                "metadata": {"labels": {**group.labels, **PART_OF}, "annotations": {CONFIG_CHECKSUM: checksum}},
                "spec": pod,
            },
        }
        if keeps_media:
            spec["volumeClaimTemplates"] = [_claim(MEDIA_STORE_SIZE)]
        metadata = _workload_meta(group.name, group.labels, self.spec.synapse_image, "CKV_K8S_35")
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

    def prometheus(self) -> str:
        """A Prometheus configuration scraping every Synapse pod at its name under the headless
        Service (``synapse-main-0.synapse.<namespace>.svc``), for a Prometheus in a namespace that
        ``metrics.kubernetes_scraper_namespace`` selects."""
        pods = worker_services(self.fleet)
        config = scrape_config(
            self.spec, lambda target: f"{pods[target.process]}.{SYNAPSE_HEADLESS}.{self.namespace}.svc"
        )
        return "# Rendered by synfleet from fleet.toml: the scrape config of its Synapse pods.\n" + yaml.safe_dump(
            config, sort_keys=False
        )

    def prometheus_rule(self) -> dict[str, Any]:
        """The fleet's alert rules as a PrometheusRule in the fleet's namespace. nginx is not scraped
        here (its pods have no stable address of their own), so its rule is left out."""
        return {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "synfleet", "namespace": self.namespace, "labels": dict(PART_OF)},
            "spec": {"groups": rule_groups(self.spec, nginx=False)},
        }

    # -- nginx ----------------------------------------------------------------------------------

    @property
    def nginx_ports(self) -> dict[str, int]:
        """nginx's container ports by name: "http", and "https" with TLS (above 1024: it is not root)."""
        tls = self.nginx_layout.tls
        ports = {"http": int(self.nginx_layout.listen[0])}
        if tls is not None:
            ports["https"] = int(tls.listen[0])
        return ports

    def nginx_pod(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """nginx's container, and its pod's volumes: the config, a cache for bodies, scratch for its
        pid file, with TLS the certificate. Its logs go to the image's links to the container's output."""
        tls = self.nginx_layout.tls
        health = nginx(self.context).health  # up when it accepts connections; /health would pass through to main
        cache, cache_mount = _scratch("cache", COMPOSE_NGINX_TEMP_DIR)
        scratch, scratch_mount = _scratch("tmp", SCRATCH_DIR, memory=True)
        mounts: list[dict[str, Any]] = [
            {"name": "config", "mountPath": COMPOSE_NGINX_CONFIG_DIR, "readOnly": True},
            cache_mount,
            scratch_mount,
        ]
        volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": NGINX_CONFIG_NAME}}, cache, scratch]
        if tls is not None:
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
            "ports": [_port(name, number) for name, number in self.nginx_ports.items()],
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
        # Replicas on different nodes where there are several: a node loss leaves one.
        spread = {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": labels},
        }
        pod = _pod_spec(SERVICE_ACCOUNTS[Service.NGINX], container, volumes, topologySpreadConstraints=[spread])
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _workload_meta("nginx", labels, self.spec.images.nginx),
            "spec": {
                "replicas": NGINX_REPLICAS,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**labels, **PART_OF}, "annotations": {CONFIG_CHECKSUM: checksum}},
                    "spec": pod,
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
        # Its socket and lock file, and what its first start's tools write.
        sockets, sockets_mount = _scratch("sockets", POSTGRES_IMAGE_SOCKETS, memory=True)
        scratch, scratch_mount = _scratch("tmp", SCRATCH_DIR, memory=True)
        volumes = [_config_volume("hba", hba_file.name), _config_volume("initdb", script), sockets, scratch]
        mounts = [
            {"name": "data", "mountPath": POSTGRES_IMAGE_DATA},
            {"name": "hba", "mountPath": str(hba_file.parent), "readOnly": True},
            {"name": "initdb", "mountPath": CONTAINER_INITDB_DIR, "readOnly": True},
            sockets_mount,
            scratch_mount,
        ]
        image = self.spec.images.postgres
        container = self._trial_container(Service.POSTGRES, image, POSTGRES_PORT, env=environment, volumeMounts=mounts)
        claim = _claim(TRIAL_POSTGRES_SIZE)
        return [config, *self._trial(Service.POSTGRES, image, container, db.port, POSTGRES_PORT, claim, volumes)]

    def trial_redis(self) -> list[dict[str, Any]]:
        image = self.spec.images.redis
        workdir, workdir_mount = _scratch("data", REDIS_IMAGE_WORKDIR, memory=True)
        container = self._trial_container(Service.REDIS, image, REDIS_PORT, volumeMounts=[workdir_mount])
        return self._trial(Service.REDIS, image, container, self.spec.redis.port, REDIS_PORT, None, [workdir])

    def _trial(
        self,
        service: Service,
        image: str,
        container: dict[str, Any],
        port: int,
        target: int,
        claim: dict[str, Any] | None,
        volumes: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        name = service.value
        labels = {NAME_LABEL: name}
        # PostgreSQL's first start reads both passwords from its environment.
        skipped = ["CKV_K8S_35"] if service is Service.POSTGRES else []
        spec: dict[str, Any] = {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, **PART_OF}},
                "spec": _pod_spec(SERVICE_ACCOUNTS[service], container, volumes),
            },
        }
        if claim:
            spec["volumeClaimTemplates"] = [claim]
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": _workload_meta(name, labels, image, *skipped),
                "spec": spec,
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(name, labels),
                "spec": {"type": "ClusterIP", "selector": labels, "ports": [_service_port(name, port, target)]},
            },
        ]

    # -- network policies -----------------------------------------------------------------------

    def network_policies(self) -> list[dict[str, Any]]:
        """Nothing in or out of the namespace's pods but: clients to nginx; nginx to Synapse's
        inbound port; Synapse to Synapse's replication port, to PostgreSQL and Redis (the trial
        pods, or the external ones' ports anywhere) and to :data:`OUTBOUND_PORTS` anywhere; nginx and
        Synapse to the cluster's DNS; with metrics, the scraper's namespace to the metrics ports."""
        synapse_pods, nginx_pods = {NAME_LABEL: "synapse"}, {NAME_LABEL: "nginx"}
        resolvers = {"matchExpressions": [{"key": NAME_LABEL, "operator": "In", "values": ["nginx", "synapse"]}]}
        dns = [{"protocol": protocol, "port": DNS_PORT} for protocol in ("UDP", "TCP")]
        policies = [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta("default-deny", {}),
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            },
            _allow("dns", resolvers, "Egress", [KUBE_DNS], dns),
            _allow("nginx-from-anywhere", _selector(nginx_pods), "Ingress", [], _tcp(*self.nginx_ports.values())),
            *_link("nginx", nginx_pods, "synapse-http", synapse_pods, POD_INBOUND_PORT),
            *_link("synapse", synapse_pods, "synapse-replication", synapse_pods, POD_REPLICATION_PORT),
            _allow("synapse-to-federation", _selector(synapse_pods), "Egress", [], _tcp(*OUTBOUND_PORTS)),
        ]
        for service, pod_port, external_port in (
            (Service.POSTGRES, POSTGRES_PORT, self.spec.database.port),
            (Service.REDIS, REDIS_PORT, self.spec.redis.port),
        ):
            if self.trial_services:
                policies += _link("synapse", synapse_pods, service.value, {NAME_LABEL: service.value}, pod_port)
            else:
                name = f"synapse-to-{service.value}"
                policies.append(_allow(name, _selector(synapse_pods), "Egress", [], _tcp(external_port)))
        metrics = self.spec.metrics
        if metrics.enabled:
            scraper = [{"namespaceSelector": _selector(metrics.scraper_namespace_labels)}]
            ports = sorted(w.metrics_port for w in self.fleet.workers if w.metrics_port is not None)
            policies += [
                _allow("synapse-metrics-from-scraper", _selector(synapse_pods), "Ingress", scraper, _tcp(*ports)),
                _allow(
                    "nginx-status-from-scraper",
                    _selector(nginx_pods),
                    "Ingress",
                    scraper,
                    _tcp(metrics.nginx_status_port),
                ),
            ]
        return policies

    # -- the whole tree -------------------------------------------------------------------------

    @property
    def secret_names(self) -> tuple[Secret, ...]:
        """The secrets some pod is given: Synapse's files, the database password, and with the
        trial services PostgreSQL's superuser's (never Grafana's, which no pod runs)."""
        files = {name for group in synapse_groups(self.fleet) for name in self.group_secrets(group)}
        wanted = {*files, Secret.POSTGRES_PASSWORD}
        if self.trial_services:
            wanted.add(Secret.POSTGRES_SUPERUSER_PASSWORD)
        return tuple(name for name in Secret if name in wanted)

    def secret(self) -> dict[str, Any]:
        data = {str(name): base64.b64encode(self.secrets[name].encode()).decode() for name in sorted(self.secret_names)}
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
        """Every manifest file's objects, by file name, in the order ``kubectl`` applies them; each
        object but the namespace names it (kustomize would set it too; checkov reads only this)."""
        synapse_files = self.synapse_files
        nginx_files = self.nginx_files
        synapse_labels = {NAME_LABEL: "synapse"}
        files: dict[str, list[dict[str, Any]]] = {
            "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(self.namespace, {})}],
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
        files["network-policies.yaml"] = self.network_policies()
        if self.trial_services:
            files["trial-postgres.yaml"] = self.trial_postgres()
            files["trial-redis.yaml"] = self.trial_redis()
        for objects in files.values():
            for document in objects:
                if document["kind"] != "Namespace":
                    metadata = document["metadata"]
                    document["metadata"] = {"name": metadata.pop("name"), "namespace": self.namespace, **metadata}
        return files


def render_kubernetes(
    spec: FleetSpec, secrets: Mapping[str, str], nginx_layout: NginxLayout, trial_services: bool = False
) -> dict[str, str]:
    """Every file of ``deploy/kubernetes`` by name: the manifests, ``kustomization.yaml``, and with
    metrics :data:`PROMETHEUS_FILE` and :data:`PROMETHEUS_RULE_FILE`. nginx keeps its pid file in its scratch volume."""
    layout = replace(nginx_layout, pid_file=NGINX_PID_FILE)
    render = KubernetesRender(kubernetes_spec(spec, trial_services), secrets, layout, trial_services)
    manifests = render.manifests()
    files = {name: _dump_all(objects) for name, objects in manifests.items()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": render.namespace,
        "resources": list(manifests),
    }
    files["kustomization.yaml"] = _dump_all([kustomization])
    if spec.metrics.enabled:
        files[PROMETHEUS_FILE] = render.prometheus()
        files[PROMETHEUS_RULE_FILE] = _dump_all([render.prometheus_rule()])
    return files
