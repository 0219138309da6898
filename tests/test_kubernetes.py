"""`synfleet render --target kubernetes`: manifests the API server's schemas accept and checkov
passes, pods that run unprivileged with only their own secrets, NetworkPolicies that admit exactly
the fleet's links, an nginx config real nginx accepts, worker names from pod ordinals, and rooms
that stay on their worker."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import helpers
from conftest import synfleet
from synfleet.lab import CertificateAuthority
from synfleet.layout import POD_INBOUND_PORT, POD_REPLICATION_PORT
from synfleet.model.fleet import Role
from synfleet.model.profiles import profile_spec
from synfleet.model.schema import FleetSpec, read_fleet
from synfleet.nginx.config import NginxModel
from synfleet.nginx.ketama import moved
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.kubernetes import (
    CHECKOV_SKIPS,
    PROMETHEUS_FILE,
    SCRATCH_DIR,
    namespace_name,
    routing_plan,
    worker_services,
)
from synfleet.render.secrets import Secret
from synfleet.routing.corpus import room_keys
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import upstream_name

#: The Kubernetes release whose schemas the manifests must satisfy.
KUBERNETES_VERSION = "1.33"
EXTERNAL = {"database": {"host": "postgres.db.svc.cluster.local"}, "redis": {"host": "redis.db.svc.cluster.local"}}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


#: checkov in a virtualenv of its own beside the project's (scripts/setup.sh makes it): it pins
#: versions of packages Synapse needs too.
CHECKOV = Path(__file__).parents[1] / ".venv-checkov" / "bin" / "checkov"
CHECKOV_MISSING = None if CHECKOV.exists() else f"checkov is not installed at {CHECKOV} (scripts/setup.sh installs it)"
#: Each pod's image's own account (uid, gid), by its app.kubernetes.io/name.
ACCOUNTS = {"synapse": (991, 991), "nginx": (101, 101), "postgres": (70, 70), "redis": (999, 1000)}
#: What each pod writes: every other path is its image's, read-only.
WRITABLE = {
    "synapse": {"/data", "/tmp"},
    "nginx": {"/var/cache/nginx", "/tmp"},
    "postgres": {"/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"},
    "redis": {"/data"},
}
PINNED = "@sha256:" + "0" * 64


def spec_of(profile: str, **sections: dict[str, Any]) -> FleetSpec:
    data = profile_spec("example.org", profile).model_dump(mode="json")
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return FleetSpec.model_validate(data)


#: Fleets on several hosts (ignored by Kubernetes, which places pods itself), with dedicated stream
#: writers and metrics.
HOSTS_FLEET = {
    "hosts": {"a": {"address": "10.0.0.2"}, "b": {"address": "10.0.0.3"}},
    "placement": {"default": "a", "rooms": ["a", "b"]},
    "workers": {"rooms": 3, "client_sync": 2},
    "stream_writers": {"typing": ["typing1"], "events": ["tasks1", "persister2"], "receipts": ["client_sync2"]},
    "metrics": {"enabled": True},
    "resources": {"rooms": {"memory": "2g", "cpus": 1.5}, "nginx": {"memory": "256m", "cpus": 0.5}},
}

CASES: dict[str, tuple[FleetSpec, bool]] = {
    "seed": (spec_of("seed", **EXTERNAL), False),
    "small": (spec_of("small", **EXTERNAL), False),
    "hosts": (spec_of("seed", **EXTERNAL, **HOSTS_FLEET), False),
    "seed-trial": (spec_of("seed"), True),
    "monolith-trial": (spec_of("monolith"), True),
    # Images pinned by digest, metrics scraped from a namespace of another label.
    "pinned-trial": (
        spec_of(
            "small",
            images={
                name: f"registry.example.org/{name}:1{PINNED}" for name in ("synapse", "nginx", "postgres", "redis")
            },
            metrics={"enabled": True, "kubernetes_scraper_namespace": "team=observability"},
        ),
        True,
    ),
}


def render(directory: Path, spec: FleetSpec, trial: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fleet.toml").write_text(fleet_toml(spec))
    args = ["render", "--dir", str(directory), "--target", "kubernetes"] + (["--trial-services"] if trial else [])
    result = synfleet(*args)
    assert result.returncode == 0, result.stderr
    return directory / "deploy" / "kubernetes"


def documents(tree: Path) -> list[dict[str, Any]]:
    """Every object of the manifests kustomization.yaml lists, in its order."""
    kustomization = yaml.safe_load((tree / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((tree / name).read_text())]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config_map_files(docs: list[dict[str, Any]], name: str, directory: Path) -> Path:
    """Write a ConfigMap's files as its pods see them (with the items' paths) under ``directory``."""
    data = of_kind(docs, "ConfigMap")[name]["data"]
    items = {}
    for statefulset in of_kind(docs, "StatefulSet").values():
        for volume in statefulset["spec"]["template"]["spec"].get("volumes", []):
            if volume.get("configMap", {}).get("name") == name:
                items.update({i["key"]: i["path"] for i in volume["configMap"].get("items", [])})
    for key, text in data.items():
        path = directory / items.get(key, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def nginx_model(docs: list[dict[str, Any]], directory: Path) -> NginxModel:
    return NginxModel.load(config_map_files(docs, "nginx-config", directory) / "nginx.conf")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[FleetSpec, Path]]:
    """Every case rendered into a directory of its own under one root (which checkov reads)."""
    root = tmp_path_factory.mktemp("fleets")
    return {name: (spec, render(root / name, spec, trial)) for name, (spec, trial) in CASES.items()}


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each workload's pod template, with its app.kubernetes.io/name."""
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            template = doc["spec"]["template"]
            yield template["metadata"]["labels"]["app.kubernetes.io/name"], template


@pytest.mark.parametrize("case", list(CASES))
def test_every_manifest_validates_against_the_api_schemas(
    rendered: dict[str, tuple[FleetSpec, Path]], case: str
) -> None:
    spec, tree = rendered[case]
    kustomization = yaml.safe_load((tree / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in tree.iterdir() if p.is_file() and p.name != "kustomization.yaml"
    )
    assert kustomization["namespace"] == namespace_name(spec.server_name) == "synfleet-example-org"
    docs = documents(tree)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == kustomization["namespace"]
        name = doc["metadata"]["name"]
        assert DNS_LABEL.fullmatch(name), name
        if doc["kind"] == "Service":
            assert DNS_1035.fullmatch(name), name
        if doc["kind"] == "StatefulSet":  # with "-" and a 10-character revision hash, a label value
            assert len(name) <= 52, name
    assert stat.S_IMODE((tree / "secrets.yaml").stat().st_mode) == 0o600


@pytest.mark.parametrize("case", list(CASES))
def test_each_worker_runs_in_one_pod_named_by_its_ordinal(
    rendered: dict[str, tuple[FleetSpec, Path]], case: str, tmp_path: Path
) -> None:
    spec, tree = rendered[case]
    docs = documents(tree)
    config = config_map_files(docs, "synapse-config", tmp_path)
    services = of_kind(docs, "Service")
    pods: dict[str, str] = {}  # pod -> the worker its command starts
    for name, statefulset in of_kind(docs, "StatefulSet").items():
        template = statefulset["spec"]["template"]
        container = template["spec"]["containers"][0]
        if template["metadata"]["labels"]["app.kubernetes.io/name"] != "synapse":
            continue
        assert statefulset["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
        assert {"name": "http", "containerPort": POD_INBOUND_PORT, "protocol": "TCP"} in container["ports"]
        for ordinal in range(statefulset["spec"]["replicas"]):
            pod = f"{name}-{ordinal}"
            # Kubernetes turns "$$" into "$"; the shell does the rest.
            command = [part.replace("$$", "$") for part in container["command"]]
            if command[0] == "sh":
                command[2] = command[2].replace("exec python -m", "echo")
            else:
                command = ["echo", *command[2:]]
            shown = subprocess.run(command, env={"POD_NAME": pod, "PATH": os.environ["PATH"]}, capture_output=True)
            arguments = shown.stdout.decode().split()
            worker_files = [a.strip('"') for a in arguments if a.startswith("/config/workers/")]
            if not worker_files:
                assert arguments[0] == "synapse.app.homeserver", arguments
                pods[pod] = "main"
                continue
            assert (config / worker_files[0].removeprefix("/config/")).exists(), (pod, worker_files)
            pods[pod] = Path(worker_files[0]).stem
    assert sorted(pods.values()) == sorted(w.name for w in spec.fleet.workers), "every worker in exactly one pod"
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert all(budgets[name]["spec"]["maxUnavailable"] == 1 for name in of_kind(docs, "StatefulSet") if name in pods)

    # Everything that reaches a worker reaches it at the Service of its own pod.
    homeserver = yaml.safe_load((config / "homeserver.yaml").read_text())
    for worker, where in homeserver["instance_map"].items():
        service = services[where["host"]]
        assert where["port"] == POD_REPLICATION_PORT
        assert pods[service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]] == worker
        assert POD_REPLICATION_PORT in [p["port"] for p in service["spec"]["ports"]]
    model = nginx_model(docs, tmp_path / "nginx")
    for upstream in model.upstreams.values():
        for server in upstream.servers:
            host, _, port = server.rpartition(":")
            pod = services[host]["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]
            assert port == str(POD_INBOUND_PORT) and pod == host, server

    # The database password is in the Secret, never in a ConfigMap. The Secret holds what some pod
    # is given: never Grafana's password, PostgreSQL's superuser's only for the trial pod.
    secrets = of_kind(docs, "Secret")["synfleet-secrets"]["data"]
    directory = tree.parent.parent
    for name, value in secrets.items():
        assert base64.b64decode(value).decode() == (directory / "secrets" / name).read_text().strip()
    trial = "postgres" in of_kind(docs, "StatefulSet")
    assert set(secrets) == {
        Secret.SIGNING_KEY,
        Secret.MACAROON_SECRET_KEY,
        Secret.FORM_SECRET,
        Secret.REGISTRATION_SHARED_SECRET,
        Secret.WORKER_REPLICATION_SECRET,
        Secret.POSTGRES_PASSWORD,
        *([Secret.POSTGRES_SUPERUSER_PASSWORD] if trial else []),
    }
    password = base64.b64decode(secrets["postgres_password"]).decode()
    assert all(password not in text for cm in of_kind(docs, "ConfigMap").values() for text in cm["data"].values())
    assert "password" not in homeserver["database"]["args"]


def test_synapse_talks_tcp_to_external_services(rendered: dict[str, tuple[FleetSpec, Path]], tmp_path: Path) -> None:
    _, tree = rendered["hosts"]
    docs = documents(tree)
    config = config_map_files(docs, "synapse-config", tmp_path)
    homeserver = yaml.safe_load((config / "homeserver.yaml").read_text())
    assert homeserver["database"]["args"]["host"] == "postgres.db.svc.cluster.local"
    assert homeserver["redis"] == {"enabled": True, "host": "redis.db.svc.cluster.local", "port": 6379, "dbid": 0}
    assert homeserver["worker_replication_secret_path"] == "/secrets/worker_replication_secret"
    assert homeserver["instance_map"]["persister2"] == {
        "host": "synapse-writer-persister2-0",
        "port": POD_REPLICATION_PORT,
    }
    rooms2 = yaml.safe_load((config / "workers" / "rooms2.yaml").read_text())
    inbound, *rest = rooms2["worker_listeners"]
    assert inbound == {
        "port": POD_INBOUND_PORT,
        "bind_addresses": ["0.0.0.0"],
        "type": "http",
        "x_forwarded": True,
        "resources": [{"names": ["client", "federation"], "compress": False}],
    }
    assert [listener["type"] for listener in rest] == ["metrics"]
    typing = yaml.safe_load((config / "workers" / "typing1.yaml").read_text())
    assert typing["worker_listeners"][1]["port"] == POD_REPLICATION_PORT
    statefulsets = of_kind(docs, "StatefulSet")
    rooms = statefulsets["synapse-rooms"]
    assert rooms["spec"]["replicas"] == 3
    assert rooms["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "1500m",
        "memory": "2Gi",
    }
    # Only the media worker keeps a volume; nothing runs PostgreSQL or Redis.
    assert [n for n, s in statefulsets.items() if "volumeClaimTemplates" in s["spec"]] == ["synapse-media"]
    assert not {"postgres", "redis"} & set(statefulsets)
    nginx = of_kind(docs, "Deployment")["nginx"]
    assert nginx["spec"]["replicas"] == 2
    service = of_kind(docs, "Service")["nginx"]["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["port"] == 80
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy").values()}
    assert policies["synapse-http-from-nginx"]["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nginx"}}}],
            "ports": [{"protocol": "TCP", "port": POD_INBOUND_PORT}],
        }
    ]
    assert policies["synapse-replication-from-synapse"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": POD_REPLICATION_PORT}
    ]


def test_trial_services_run_in_the_namespace(rendered: dict[str, tuple[FleetSpec, Path]], tmp_path: Path) -> None:
    _, tree = rendered["seed-trial"]
    docs = documents(tree)
    homeserver = yaml.safe_load((config_map_files(docs, "synapse-config", tmp_path) / "homeserver.yaml").read_text())
    assert (homeserver["database"]["args"]["host"], homeserver["redis"]["host"]) == ("postgres", "redis")
    statefulsets = of_kind(docs, "StatefulSet")
    postgres = statefulsets["postgres"]["spec"]
    assert postgres["replicas"] == 1 and postgres["volumeClaimTemplates"]
    env = {e["name"]: e for e in postgres["template"]["spec"]["containers"][0]["env"]}
    # The image's superuser is postgres (its password, which the image wants, is a secret of its
    # own); Synapse's role is made by the first start's script, with Synapse's password.
    assert env["POSTGRES_USER"] == {"name": "POSTGRES_USER", "value": "postgres"} and "POSTGRES_DB" not in env
    secret_keys = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert secret_keys == {
        "POSTGRES_PASSWORD": {"name": "synfleet-secrets", "key": "postgres_superuser_password"},
        "SYNFLEET_DATABASE_PASSWORD": {"name": "synfleet-secrets", "key": "postgres_password"},
    }
    assert "--lc-collate=C" in env["POSTGRES_INITDB_ARGS"]["value"]
    config = of_kind(docs, "ConfigMap")["postgres-config"]["data"]
    rules = [line.split() for line in config["pg_hba.conf"].splitlines() if not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["local", "synapse", "synapse", "scram-sha-256"],
        ["host", "synapse", "synapse", "all", "scram-sha-256"],
    ]
    assert 'CREATE ROLE "synapse" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE' in config["synfleet-initdb.sql"]
    assert 'CREATE DATABASE "synapse" OWNER "synapse"' in config["synfleet-initdb.sql"]
    container = postgres["template"]["spec"]["containers"][0]
    assert "hba_file=/etc/synfleet/pg_hba.conf" in container["args"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/synfleet", "/docker-entrypoint-initdb.d"} <= mounts
    assert statefulsets["redis"]["spec"]["replicas"] == 1
    services = of_kind(docs, "Service")
    assert (
        services["postgres"]["spec"]["ports"][0]["port"] == 5432
        and services["redis"]["spec"]["ports"][0]["port"] == 6379
    )
    # The monolith keeps its media store on main.
    _, monolith = rendered["monolith-trial"]
    volumes = [n for n, s in of_kind(documents(monolith), "StatefulSet").items() if "volumeClaimTemplates" in s["spec"]]
    assert sorted(volumes) == ["postgres", "synapse-main"]


def pod_secrets(template: dict[str, Any]) -> set[str]:
    """The secrets a pod is given: its secret volume's items and the secret keys of its environment."""
    spec = template["spec"]
    items = {i["key"] for v in spec.get("volumes", []) if "secret" in v for i in v["secret"].get("items", [])}
    env = [e for c in spec["containers"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    return items | {e["valueFrom"]["secretKeyRef"]["key"] for e in env}


def pod_view(docs: list[dict[str, Any]], statefulset: str, directory: Path) -> Path:
    """``directory`` as a pod of ``statefulset`` sees /config and /secrets (its secret volume's
    items only), with the configs' paths moved there."""
    template = of_kind(docs, "StatefulSet")[statefulset]["spec"]["template"]
    config = config_map_files(docs, "synapse-config", directory / "config")
    (directory / "secrets").mkdir()
    data = of_kind(docs, "Secret")["synfleet-secrets"]["data"]
    for volume in template["spec"]["volumes"]:
        for item in volume.get("secret", {}).get("items", []):
            (directory / "secrets" / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
    for path in config.rglob("*.yaml"):
        text = path.read_text()
        for mount in ("config", "secrets", "data"):
            text = text.replace(f" /{mount}/", f" {directory}/{mount}/")
        path.write_text(text)
    return config


def load_synapse(config: Path, *workers: Path) -> dict[str, dict[str, Any]]:
    """Synapse's own config classes on main's config and each worker's: each process's result."""
    result = subprocess.run(
        [sys.executable, "-m", "synfleet.check.synapse_loader", str(config / "homeserver.yaml"), *map(str, workers)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "Synapse is not installed" in result.stdout:
        helpers.require("Synapse is not installed")
    loaded = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(loaded) == len(workers) + 1, result.stdout + result.stderr
    return {entry["process"]: entry for entry in loaded}


@pytest.mark.parametrize("case", ["hosts", "seed-trial"])
def test_each_synapse_pod_has_only_the_secrets_its_process_reads(
    rendered: dict[str, tuple[FleetSpec, Path]], case: str, tmp_path: Path
) -> None:
    """Main's pod has the registration shared secret and the form secret, which workers' files
    unset; no Synapse pod has PostgreSQL's superuser's password. Synapse's config classes load
    each process's config with only what its pod mounts, and main's not with a worker's."""
    _, tree = rendered[case]
    docs = documents(tree)
    statefulsets = of_kind(docs, "StatefulSet")
    shared = {Secret.SIGNING_KEY, Secret.MACAROON_SECRET_KEY, Secret.WORKER_REPLICATION_SECRET}
    for name, statefulset in statefulsets.items():
        if name in ("postgres", "redis"):
            continue
        main_only = {Secret.REGISTRATION_SHARED_SECRET, Secret.FORM_SECRET} if name == "synapse-main" else set()
        assert pod_secrets(statefulset["spec"]["template"]) == {*shared, *main_only, Secret.POSTGRES_PASSWORD}, name
    if "postgres" in statefulsets:
        assert pod_secrets(statefulsets["postgres"]["spec"]["template"]) == {
            Secret.POSTGRES_SUPERUSER_PASSWORD,
            Secret.POSTGRES_PASSWORD,
        }
        assert not pod_secrets(statefulsets["redis"]["spec"]["template"])
    assert not any(pod_secrets(template) for app, template in pod_templates(docs) if app == "nginx")

    main = pod_view(docs, "synapse-main", tmp_path / "main")
    assert load_synapse(main)["main"]["ok"]
    worker_group = next(name for name in statefulsets if name.startswith("synapse-") and name != "synapse-main")
    view = pod_view(docs, worker_group, tmp_path / "worker")
    workers = sorted((view / "workers").glob("*.yaml"))
    loaded = load_synapse(view, *workers)
    assert all(loaded[path.stem]["ok"] for path in workers), loaded
    assert not loaded["main"]["ok"] and "secret" in loaded["main"]["error"], loaded["main"]


def _nginx_t(conf_dir: Path, hosts: Path) -> subprocess.CompletedProcess[str]:
    """nginx -t on ``conf_dir`` as in the pod: Service names resolved by ``hosts``, the pod's
    paths (/var/log/nginx, /var/cache/nginx) and port, in namespaces of its own."""
    script = (
        f"mount --bind {hosts} /etc/hosts && "
        "mount -t tmpfs tmpfs /var/log && mkdir /var/log/nginx && "
        "mount -t tmpfs tmpfs /var/cache && mkdir /var/cache/nginx && "
        "(ip link set lo up 2>/dev/null || true) && "
        f"nginx -t -p {conf_dir} -c {conf_dir}/nginx.conf"
    )
    return subprocess.run(
        ["unshare", "--mount", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("case", ["seed", "hosts", "seed-trial"])
def test_nginx_config_passes_nginx_t(rendered: dict[str, tuple[FleetSpec, Path]], case: str, tmp_path: Path) -> None:
    if shutil.which("nginx") is None or shutil.which("unshare") is None:
        helpers.require("needs nginx and unshare")
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        helpers.require(f"cannot make mount and network namespaces here: {probe.stderr.decode().strip()}")
    _, tree = rendered[case]
    docs = documents(tree)
    conf = tmp_path / "conf"
    model = nginx_model(docs, conf)
    names = sorted({server.rpartition(":")[0] for u in model.upstreams.values() for server in u.servers})
    assert names, "the upstreams name Services"
    hosts = tmp_path / "hosts"
    lines = ["127.0.0.1 localhost"] + [f"127.0.1.{i} {name}" for i, name in enumerate(names, 1)]
    hosts.write_text("\n".join(lines) + "\n")
    result = _nginx_t(conf, hosts)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # Without the Services' names nginx refuses the config: the test resolves what it checks.
    hosts.write_text("127.0.0.1 localhost\n")
    assert _nginx_t(conf, hosts).returncode != 0


@pytest.mark.parametrize("case", list(CASES))
def test_every_pod_runs_unprivileged_with_a_read_only_root(
    rendered: dict[str, tuple[FleetSpec, Path]], case: str
) -> None:
    """Every pod: its image's own account, never root; the runtime's seccomp profile; no service
    account token; its container gains no privilege, keeps no capability, and writes only emptyDirs
    or its claim, at exactly the paths its process writes."""
    _, tree = rendered[case]
    docs = documents(tree)
    seen = set()
    for doc in docs:
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        template, claims = doc["spec"]["template"], doc["spec"].get("volumeClaimTemplates", [])
        app = template["metadata"]["labels"]["app.kubernetes.io/name"]
        seen.add(app)
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False
        uid, gid = ACCOUNTS[app]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "fsGroup": gid,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        writable_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v} | {
            c["metadata"]["name"] for c in claims
        }
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == WRITABLE[app], (doc["metadata"]["name"], writable)
        assert all(m["name"] in writable_volumes for m in container["volumeMounts"] if not m.get("readOnly"))
    assert {"synapse", "nginx"} <= seen

    # nginx, not root, listens above 1024; its Service keeps 80 (and 443) by the ports' names. Its
    # pid file and temporary files are in its writable volumes.
    nginx = of_kind(docs, "Deployment")["nginx"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in nginx["ports"]}
    assert all(number > 1024 for number in ports.values())
    service = {p["port"]: p["targetPort"] for p in of_kind(docs, "Service")["nginx"]["spec"]["ports"]}
    assert service.get(80) == "http" and set(service.values()) <= set(ports)
    conf = of_kind(docs, "ConfigMap")["nginx-config"]["data"]["nginx.conf"]
    written = re.findall(r"^\s*(?:pid|\w+_temp_path)\s+(\S+);", conf, re.MULTILINE)
    assert f"{SCRATCH_DIR}/nginx.pid" in written and len(written) == 6, written
    assert all(any(path.startswith(f"{d}/") for d in WRITABLE["nginx"]) for path in written), written


# -- NetworkPolicies: a small evaluator of the parts the manifests use ---------------------------


@dataclass(frozen=True)
class Peer:
    """A connection's end: a pod (its labels, its namespace's labels), or an address outside the
    cluster (no labels at all)."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: dict[str, str] = field(default_factory=dict)

    @property
    def pod(self) -> bool:
        return bool(self.labels)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    matched = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        matched = matched and labels.get(expression["key"]) in expression["values"]
    return matched


def peer_matches(entry: dict[str, Any], peer: Peer, namespace: dict[str, str]) -> bool:
    assert set(entry) <= {"podSelector", "namespaceSelector"}, entry  # no ipBlock
    if not peer.pod:
        return False
    if "namespaceSelector" in entry:
        in_namespace = selects(entry["namespaceSelector"], peer.namespace)
    else:
        in_namespace = peer.namespace == namespace
    return in_namespace and selects(entry.get("podSelector", {}), peer.labels)


def admits(policies: list[dict[str, Any]], pod: Peer, direction: str, other: Peer, protocol: str, port: int) -> bool:
    """Whether the policies let ``pod`` take (Ingress) or open (Egress) this connection with ``other``."""
    selecting = [p["spec"] for p in policies if selects(p["spec"]["podSelector"], pod.labels)]
    if not any(direction in spec["policyTypes"] for spec in selecting):
        return True  # not isolated
    for spec in selecting:
        for rule in spec.get(direction.lower(), []):
            peers = rule.get("from" if direction == "Ingress" else "to")
            if peers is not None and not any(peer_matches(e, other, pod.namespace) for e in peers):
                continue
            if any(p["protocol"] == protocol and p["port"] == port for p in rule["ports"]):
                return True
    return False


def connects(policies: list[dict[str, Any]], source: Peer, target: Peer, protocol: str, port: int) -> bool:
    """Both ends' policies admit the connection (an end outside the fleet's namespace has none)."""
    egress = (
        not source.pod
        or source.namespace != FLEET_NAMESPACE
        or admits(policies, source, "Egress", target, protocol, port)
    )
    ingress = (
        not target.pod
        or target.namespace != FLEET_NAMESPACE
        or admits(policies, target, "Ingress", source, protocol, port)
    )
    return egress and ingress


FLEET_NAMESPACE = {"kubernetes.io/metadata.name": "synfleet-example-org"}


@pytest.mark.parametrize("case", ["hosts", "seed-trial", "pinned-trial"])
def test_network_policies_admit_exactly_the_fleets_links(
    rendered: dict[str, tuple[FleetSpec, Path]], case: str
) -> None:
    """Every connection between the fleet's pods, the cluster's DNS, a scraper's namespace, another
    namespace and the internet, on every port that matters: the allowed ones are exactly those listed."""
    spec, tree = rendered[case]
    docs = documents(tree)
    policies = list(of_kind(docs, "NetworkPolicy").values())
    default_deny = of_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert default_deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    trial = CASES[case][1]
    metrics = spec.metrics.enabled
    scraper_namespace = spec.metrics.scraper_namespace_labels
    pods = {
        "nginx": Peer({"app.kubernetes.io/name": "nginx"}, FLEET_NAMESPACE),
        "synapse": Peer(
            {"app.kubernetes.io/name": "synapse", "app.kubernetes.io/component": "synapse-main"}, FLEET_NAMESPACE
        ),
        "postgres": Peer({"app.kubernetes.io/name": "postgres"}, FLEET_NAMESPACE),
        "redis": Peer({"app.kubernetes.io/name": "redis"}, FLEET_NAMESPACE),
        "dns": Peer({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"}),
        "scraper": Peer({"app": "prometheus"}, scraper_namespace),
        "other": Peer({"app": "prometheus"}, {"kubernetes.io/metadata.name": "default"}),
        "internet": Peer(),
    }
    metrics_ports = [w.metrics_port for w in spec.fleet.workers if w.metrics_port is not None]
    nginx_ports = [8008] + ([8448] if spec.tls.enabled else [])
    ports = {("UDP", 53), ("TCP", 53), ("TCP", 80), ("TCP", 443), ("TCP", 8448), ("TCP", 8008), ("TCP", 8080)}
    ports |= {("TCP", 9093), ("TCP", 5432), ("TCP", 6379), ("TCP", spec.metrics.nginx_status_port)}
    ports |= {("TCP", port) for port in metrics_ports}
    allowed = {
        (source, target, protocol, port)
        for source in pods
        for target in pods
        for protocol, port in ports
        if connects(policies, pods[source], pods[target], protocol, port)
        and (pods[source].namespace == FLEET_NAMESPACE or pods[target].namespace == FLEET_NAMESPACE)
    }
    expected = {("nginx", "synapse", "TCP", 8080), ("synapse", "synapse", "TCP", 9093)}
    expected |= {(s, "dns", protocol, 53) for s in ("nginx", "synapse") for protocol in ("UDP", "TCP")}
    expected |= {(s, "nginx", "TCP", port) for s in ("scraper", "other", "internet", "dns") for port in nginx_ports}
    # Federation and other outbound HTTPS: any address, even a pod elsewhere.
    expected |= {("synapse", t, "TCP", port) for t in ("internet", "dns", "scraper", "other") for port in (443, 8448)}
    if trial:
        expected |= {("synapse", "postgres", "TCP", 5432), ("synapse", "redis", "TCP", 6379)}
    else:  # external: their ports at any address
        expected |= {("synapse", t, "TCP", p) for t in ("internet", "dns", "scraper", "other") for p in (5432, 6379)}
    if metrics:
        expected |= {("scraper", "synapse", "TCP", port) for port in metrics_ports}
        expected |= {("scraper", "nginx", "TCP", spec.metrics.nginx_status_port)}
    assert allowed == expected, (sorted(allowed - expected), sorted(expected - allowed))


def test_metrics_are_scraped_from_the_named_namespace(
    rendered: dict[str, tuple[FleetSpec, Path]], tmp_path: Path
) -> None:
    """With [metrics], a Prometheus configuration beside the manifests scrapes every Synapse pod by
    its name under the headless Service, on the ports the policy opens to the scraper's namespace;
    promtool accepts it."""
    spec, tree = rendered["pinned-trial"]
    docs = documents(tree)
    policy = of_kind(docs, "NetworkPolicy")["synapse-metrics-from-scraper"]["spec"]["ingress"][0]
    assert policy["from"] == [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]
    config = yaml.safe_load((tree / PROMETHEUS_FILE).read_text())
    (job,) = config["scrape_configs"]
    targets = {t["labels"]["instance"]: t["targets"][0] for t in job["static_configs"]}
    services = worker_services(spec.fleet)
    assert sorted(targets) == sorted(w.name for w in spec.fleet.workers)
    for worker in spec.fleet.workers:
        assert targets[worker.name] == f"{services[worker.name]}.synapse.synfleet-example-org.svc:{worker.metrics_port}"
    assert sorted(p["port"] for p in policy["ports"]) == sorted(int(t.rpartition(":")[2]) for t in targets.values())
    assert not (rendered["seed"][1] / PROMETHEUS_FILE).exists()
    promtool = shutil.which("promtool", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if promtool is None:
        helpers.require("promtool is not installed (scripts/setup.sh puts it in .venv/bin)")
    check = subprocess.run([promtool, "check", "config", str(tree / PROMETHEUS_FILE)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="module")
def checkov(rendered: dict[str, tuple[FleetSpec, Path]]) -> dict[str, Any]:
    """checkov's results over every case's manifests, in one run."""
    root = next(iter(rendered.values()))[1].parents[2]
    command = [str(CHECKOV), "-d", str(root), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "LOG_LEVEL": "ERROR"}
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.prerequisite(CHECKOV_MISSING)
def test_checkov_passes_every_manifest(checkov: dict[str, Any], rendered: dict[str, tuple[FleetSpec, Path]]) -> None:
    """No check fails; a skipped one is skipped by the object's annotation, with its reason from
    CHECKOV_SKIPS; images pinned by digest need no skip for their pull policy and digest."""
    results = checkov["results"]
    failed = [(r["check_id"], r["resource"], r["file_path"]) for r in results.get("failed_checks", [])]
    assert not failed
    assert checkov["summary"]["passed"] > 1000 and checkov["summary"]["parsing_errors"] == 0
    assert {r["file_path"].split("/")[1] for r in results["passed_checks"]} == set(rendered)
    skipped = results.get("skipped_checks", [])
    for result in skipped:
        assert result["check_result"]["suppress_comment"] == CHECKOV_SKIPS[result["check_id"]], result["check_id"]
    pinned = {r["check_id"] for r in skipped if r["file_path"].startswith("/pinned-trial/")}
    assert pinned == {"CKV_K8S_40", "CKV_K8S_35"}


ROOMS = upstream_name(Role.ROOMS)


def room_owners(tree: Path, directory: Path, keys: list[str]) -> dict[str, str]:
    rooms = nginx_model(documents(tree), directory).upstreams[ROOMS]
    return {key: rooms.worker_for(key) or "" for key in keys}


def test_a_pod_restart_moves_no_room(tmp_path: Path) -> None:
    """nginx hashes its upstream server text: a Service name, which no pod restart changes. Two
    renders (new secrets, new directory: nothing shared but the fleet file) place every room alike,
    and alike with the plan `synfleet route` evaluates."""
    spec = spec_of("seed", **EXTERNAL)
    keys = room_keys(5000)
    first = render(tmp_path / "first", spec)
    second = render(tmp_path / "second", spec)
    owners = room_owners(first, tmp_path / "n1", keys)
    assert owners == room_owners(second, tmp_path / "n2", keys)
    assert len(set(owners.values())) == 4
    model = nginx_model(documents(first), tmp_path / "n3")
    planned = routing_plan(spec.fleet).upstreams
    for name, upstream in model.upstreams.items():
        assert upstream.servers == planned[name].servers
        for server in upstream.servers:
            host = server.rpartition(":")[0]
            with pytest.raises(ValueError):
                ipaddress.ip_address(host.strip("[]"))
    # `synfleet route`'s evaluator, on the plan of the render, names the worker behind each Service.
    services = worker_services(spec.fleet)
    for key in keys[:500]:
        decision = evaluate(routing_plan(spec.fleet), "GET", f"/_matrix/client/v3/rooms/!{key}/messages")
        assert decision.upstream == ROOMS and decision.worker is not None
        assert owners[key] == f"{services[decision.worker]}:{POD_INBOUND_PORT}"


def test_adding_a_room_worker_moves_about_a_third_of_rooms_from_two(tmp_path: Path) -> None:
    """What moves on a scale from 2 to 3 room workers: about 1/3 of the rooms, each to the new one."""
    keys = room_keys(20000)
    before = nginx_model(documents(render(tmp_path / "two", spec_of("small", **EXTERNAL))), tmp_path / "n2")
    grown = spec_of("small", **EXTERNAL, workers={"rooms": 3})
    after = nginx_model(documents(render(tmp_path / "three", grown)), tmp_path / "n3")
    old, new = before.upstreams[ROOMS], after.upstreams[ROOMS]
    assert new.servers[:2] == old.servers, "the existing workers keep their Services"
    changed, total = moved(old.ring, new.ring, keys)
    assert 0.25 < changed / total < 0.42, changed / total
    for key in keys:
        if old.worker_for(key) != new.worker_for(key):
            assert new.worker_for(key) == "synapse-rooms-2:8080"


def test_a_tls_fleet_gets_its_certificate_as_a_secret(tmp_path: Path) -> None:
    cert, key = CertificateAuthority.create(tmp_path / "ca").issue(["example.org"], tmp_path)
    spec = spec_of("small", **EXTERNAL, tls={"enabled": True, "certificate": str(cert), "key": str(key)})
    tree = render(tmp_path / "d", spec)
    docs = documents(tree)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    tls = of_kind(docs, "Secret")["nginx-tls"]
    assert tls["type"] == "kubernetes.io/tls"
    assert base64.b64decode(tls["data"]["tls.key"]) == Path(key).read_bytes()
    assert stat.S_IMODE((tree / "nginx-tls.yaml").stat().st_mode) == 0o600
    assert [p["port"] for p in of_kind(docs, "Service")["nginx"]["spec"]["ports"]] == [80, 443]
    front = of_kind(docs, "NetworkPolicy")["nginx-from-anywhere"]["spec"]["ingress"]
    assert front == [{"ports": [{"protocol": "TCP", "port": 8008}, {"protocol": "TCP", "port": 8448}]}]
    nginx_conf = of_kind(docs, "ConfigMap")["nginx-config"]["data"]["nginx.conf"]
    assert "ssl_certificate /etc/ssl/synfleet/fullchain.pem;" in nginx_conf


# -- bad input ---------------------------------------------------------------------------------


def test_without_an_external_database_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('server_name = "example.org"\n[redis]\nhost = "redis.internal"\n')
    result = synfleet("render", "--dir", str(tmp_path), "--target", "kubernetes")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "database.host" in result.stderr and "redis.host" not in result.stderr
    assert "--trial-services" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]
    both = synfleet("render", "--dir", str(tmp_path / "missing"), "--target", "kubernetes")
    assert both.returncode == 2 and "no such directory" in both.stderr


def test_two_media_workers_are_refused(tmp_path: Path) -> None:
    spec = spec_of("small", **EXTERNAL, workers={"media": 2})
    (tmp_path / "fleet.toml").write_text(fleet_toml(spec))
    for trial in ([], ["--trial-services"]):
        result = synfleet("render", "--dir", str(tmp_path), "--target", "kubernetes", *trial)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "workers.media" in result.stderr and "media store" in result.stderr
        assert not (tmp_path / "deploy").exists()


def test_unknown_target_and_misplaced_trial_flag(tmp_path: Path) -> None:
    result = synfleet("render", "--dir", str(tmp_path), "--target", "helm")
    assert result.returncode == 2 and "helm" in result.stderr and "compose" in result.stderr
    result = synfleet("render", "--dir", str(tmp_path), "--trial-services")
    assert result.returncode == 2 and "--target kubernetes" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_compose_and_kubernetes_trees_live_side_by_side(tmp_path: Path) -> None:
    spec = spec_of("small", **EXTERNAL)
    tree = render(tmp_path, spec)
    manifests = {p.name: p.read_bytes() for p in tree.iterdir()}
    assert synfleet("render", "--dir", str(tmp_path)).returncode == 0
    assert (tmp_path / "deploy" / "docker-compose.yml").exists()
    assert {p.name: p.read_bytes() for p in tree.iterdir()} == manifests, "compose's render kept the manifests"
    again = render(tmp_path, spec)
    assert {p.name: p.read_bytes() for p in again.iterdir()} == manifests, "re-rendering changed a manifest"
    assert (tmp_path / "deploy" / "docker-compose.yml").exists()
    assert read_fleet(tmp_path / "fleet.toml") == spec


def test_route_and_ring_evaluate_the_kubernetes_upstreams(tmp_path: Path) -> None:
    """`synfleet route --target kubernetes` names the worker whose Service the rendered nginx picks;
    `synfleet ring --target kubernetes` counts what a new room worker takes."""
    tree = render(tmp_path, spec_of("small", **EXTERNAL))
    rooms = nginx_model(documents(tree), tmp_path / "nginx").upstreams[ROOMS]
    services = worker_services(read_fleet(tmp_path / "fleet.toml").fleet)
    for key in ("abc", "Zx0-room", "4q3jkdf82"):
        url = f"/_matrix/client/v3/rooms/!{key}:example.org/messages"
        result = synfleet("route", "--dir", str(tmp_path), "--target", "kubernetes", "--json", "GET", url)
        assert result.returncode == 0, result.stderr
        worker = json.loads(result.stdout)["worker"]
        assert rooms.worker_for(key) == f"{services[worker]}:{POD_INBOUND_PORT}"
    ring = synfleet("ring", "--dir", str(tmp_path), "--target", "kubernetes", "--keys", "20000")
    assert ring.returncode == 0, ring.stderr
    share = re.search(r"growing 2 -> 3 moves (\d+) of 20000 keys", ring.stdout)
    assert share and 0.25 < int(share[1]) / 20000 < 0.42, ring.stdout
