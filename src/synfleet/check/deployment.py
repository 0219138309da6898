"""`synfleet check`: prove a rendered deployment with the real tools, then with synfleet's own checks.

1. ``nginx -t`` on the nginx config, in a temp prefix, with the container paths remapped.
2. Every process's Synapse config loaded by Synapse's config classes (main; main + each worker).
3. Consistency: stream writers reachable over replication, every upstream socket served by a
   listener with the resources its routes need, every route pointing at an existing upstream, a
   compose service with a healthcheck for every process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synfleet.errors import UsageError
from synfleet.layout import (
    COMPOSE,
    COMPOSE_NGINX_TEMP_DIR,
    DEPLOY_NGINX_CONFIG,
    SECRETS_DIR,
    SHARED_CONFIG,
    SYNAPSE_DIR,
    WORKER_CONFIG_DIR,
)
from synfleet.model.fleet import Role, Service
from synfleet.model.load import load_spec
from synfleet.model.pem import check_files
from synfleet.nginx.command import test_config, world_readable_tempdir
from synfleet.nginx.config import parse_config, walk
from synfleet.render.compose import publish_address
from synfleet.render.deploy import DEPLOY_DIR, HOSTS_DIR
from synfleet.render.hosts import fleet_addresses
from synfleet.render.processes import MAIN_SERVICE
from synfleet.routing.table import DEFAULT_RULE, ROUTES, Rule


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


def remap_text(text: str, mapping: Mapping[str, str]) -> str:
    """Replace path roots (``/sockets`` -> ``/tmp/x/sockets``) wherever they start a path."""
    for root, replacement in sorted(mapping.items(), key=lambda item: -len(item[0])):
        text = re.sub(rf"(?<![\w./-]){re.escape(root)}(?=/|\b|$)", replacement.replace("\\", "\\\\"), text)
    return text


def remap_value(value: Any, mapping: Mapping[str, str]) -> Any:
    """:func:`remap_text` applied to every string in a parsed YAML document."""
    if isinstance(value, str):
        return remap_text(value, mapping)
    if isinstance(value, list):
        return [remap_value(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: remap_value(v, mapping) for k, v in value.items()}
    return value


def nginx_test(
    conf_dir: Path, mapping: Mapping[str, str], scratch: Path, addresses: tuple[str, ...] = ()
) -> CheckResult:
    """``nginx -t`` on a remapped copy of ``conf_dir``; its listeners on ``addresses`` (the private
    addresses of a fleet's hosts, which this machine may not have) on the loopback instead."""
    copy = scratch / "nginx"
    copy.mkdir()
    loopback = re.compile(rf"\blisten ({'|'.join(re.escape(publish_address(a)) for a in addresses) or '(?!)'}):")
    for path in conf_dir.iterdir():
        text = remap_text(path.read_text(), mapping)
        (copy / path.name).write_text(loopback.sub("listen 127.0.0.1:", text))
    for directory in mapping.values():
        if not Path(directory).suffix:
            Path(directory).mkdir(parents=True, exist_ok=True)
    result = test_config(copy, copy / "nginx.conf", scratch / "nginx-error.log", scratch / "nginx.pid")
    output = (result.stdout + result.stderr).strip().replace(str(copy) + "/", "")
    return CheckResult(
        "nginx -t", result.returncode == 0, output.splitlines()[0] if output and result.returncode else ""
    )


def synapse_load(config_dir: Path, mapping: Mapping[str, str], scratch: Path) -> Iterator[CheckResult]:
    """Load main's and each worker's config with Synapse, from a remapped copy."""
    copy = scratch / SYNAPSE_DIR
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file()):
        target = copy / path.relative_to(config_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".yaml":
            target.write_text(yaml.safe_dump(remap_value(yaml.safe_load(path.read_text()), mapping), sort_keys=False))
        else:  # files the yaml names (the federation CA bundle)
            target.write_bytes(path.read_bytes())
    workers = sorted(str(p) for p in (copy / WORKER_CONFIG_DIR).glob("*.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "synfleet.check.synapse_loader", str(copy / SHARED_CONFIG), *workers],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        yield CheckResult("synapse config", False, (result.stderr.strip().splitlines() or ["no output"])[-1])
    for line in lines:
        if line["process"] == "*":
            yield CheckResult("synapse config", False, line["error"] + ": pip install 'synfleet[synapse]'")
        else:
            yield CheckResult(f"synapse config: {line['process']}", line["ok"], line["error"])


def _listeners(config: dict[str, Any], key: str, media_repo: bool) -> dict[str, set[str]]:
    """Socket path -> resource names of a process's HTTP listeners. A process that loads the media
    repository serves media on its client and federation resources too."""
    found = {}
    for listener in config.get(key) or []:
        if "path" in listener:
            names = {n for res in listener.get("resources", []) for n in res.get("names", [])}
            if media_repo and names & {"client", "federation"}:
                names.add("media")
            found[listener["path"]] = names
    return found


def resources_needed(rule: Rule) -> set[str]:
    """The Synapse listener resources a rule's requests need."""
    if rule.target is Role.MEDIA:
        return {"media"}
    needed = set()
    if "/_matrix/federation" in rule.path or "/_matrix/key" in rule.path:
        needed.add("federation")
    if "/_matrix/client" in rule.path or "/_synapse" in rule.path or not needed:
        needed.add("client")
    return needed


@dataclass(frozen=True)
class Project:
    """One rendered compose project: the deployment, or one host's share of a fleet on several."""

    host: str
    path: Path
    processes: tuple[str, ...]  # the Synapse processes it runs
    front: bool  # its nginx routes the clients' requests

    @property
    def nginx_conf(self) -> Path:
        return self.path / DEPLOY_NGINX_CONFIG / "nginx.conf"

    def label(self, name: str) -> str:
        return f"{self.host}: {name}" if self.host else name


def _gateways(blocks: list[Any]) -> dict[str, str]:
    """The links from other hosts in a host's nginx: each gateway's listen address -> its socket."""
    found = {}
    for block in blocks:
        if block["directive"] != "server":
            continue
        inner = walk(block.get("block", []))
        passes = [d["args"][0] for d in inner if d["directive"] == "proxy_pass"]
        if len(passes) == 1 and passes[0].startswith("http://unix:"):
            socket = passes[0].removeprefix("http://unix:").removesuffix(":")
            found.update({d["args"][0]: socket for d in block.get("block", []) if d["directive"] == "listen"})
    return found


def consistency(projects: list[Project]) -> Iterator[CheckResult]:
    """synfleet's own checks across nginx, Synapse and compose files; on several hosts across every
    host's project, following each TCP address to the gateway that carries it to a socket."""
    shared: dict[str, dict[str, Any]] = {}  # by host: its homeserver.yaml
    served: dict[tuple[str, str], tuple[str, set[str]]] = {}  # (host, socket) -> process, resources
    links: dict[str, tuple[str, str]] = {}  # gateway address -> (host, socket)
    blocks: dict[str, list[Any]] = {}
    for project in projects:
        synapse_dir = project.path / SYNAPSE_DIR
        shared[project.host] = yaml.safe_load((synapse_dir / SHARED_CONFIG).read_text())
        here = {"main": shared[project.host]} if "main" in project.processes else {}
        for path in sorted((synapse_dir / WORKER_CONFIG_DIR).glob("*.yaml")):
            here[path.stem] = yaml.safe_load(path.read_text())
        for name, cfg in here.items():
            media = bool(cfg.get("enable_media_repo", shared[project.host].get("enable_media_repo", True)))
            for socket, names in _listeners(cfg, "listeners" if name == "main" else "worker_listeners", media).items():
                served[(project.host, socket)] = (name, names)
        if project.nginx_conf.exists():
            blocks[project.host] = walk(parse_config(project.nginx_conf))
            for address, socket in _gateways(blocks[project.host]).items():
                links[address] = (project.host, socket)

    def reach(host: str, location: str) -> tuple[str, str] | None:
        """Where a socket path, or an address:port of another host, leads from ``host``."""
        return (host, location) if location.startswith("/") else links.get(location)

    # Stream writers: in instance_map, with a replication listener where it points.
    problems = []
    for host, config in shared.items():
        instance_map = config.get("instance_map") or {}
        for stream, writers in (config.get("stream_writers") or {}).items():
            for writer in writers if isinstance(writers, list) else [writers]:
                entry = instance_map.get(writer, {})
                location = entry.get("path") or (f"{entry['host']}:{entry['port']}" if "host" in entry else None)
                if location is None:
                    problems.append(f"{stream} writer {writer} is not in instance_map")
                    continue
                process, names = served.get(reach(host, location) or (host, ""), (None, set()))
                if process != writer or "replication" not in names:
                    problems.append(f"{stream} writer {writer} has no replication listener at {location}")
    yield CheckResult("stream writers reachable over replication", not problems, "; ".join(sorted(set(problems))))

    # nginx: every route names an upstream, every upstream server is a listener with the right resources.
    front = next(project.host for project in projects if project.front)
    found = blocks.get(front, [])
    upstreams = {
        b["args"][0]: [d["args"][0].removeprefix("unix:") for d in b.get("block", []) if d["directive"] == "server"]
        for b in found
        if b["directive"] == "upstream"
    }
    maps = {b["args"][1]: b.get("block", []) for b in found if b["directive"] == "map"}
    route_upstream = {d["directive"]: d["args"][0] for d in maps.get("$synfleet_upstream", [])}
    rules = {rule.name: rule for rule in (*ROUTES, DEFAULT_RULE)}
    routes = [d["args"][0] for d in maps.get("$synfleet_route", [])]
    problems = []
    for route in routes:
        upstream = route_upstream.get(route, route_upstream.get("default"))
        if route not in rules:
            problems.append(f"route {route} is not in synfleet's route table")
        elif upstream not in upstreams:
            problems.append(f"route {route} goes to {upstream}, which is not an upstream")
        else:
            for server in upstreams[upstream]:
                process, names = served.get(reach(front, server) or ("", ""), (None, set()))
                missing = resources_needed(rules[route]) - names
                if process is None:
                    problems.append(f"{upstream}: no Synapse listener at {server}")
                elif missing:
                    problems.append(
                        f"route {route}: {process} at {server} lacks resource(s) {', '.join(sorted(missing))}"
                    )
    yield CheckResult("every route reaches a listener that serves it", not problems, "; ".join(sorted(set(problems))))

    # docker compose: a service with a healthcheck per process.
    problems = []
    for project in projects:
        compose = yaml.safe_load((project.path / "docker-compose.yml").read_text())
        services = compose.get("services") or {}
        expected = {MAIN_SERVICE if name == "main" else name for name in project.processes}
        problems += [project.label(f"no service for {name}") for name in sorted(expected - set(services))]
        problems += [
            project.label(f"{name} has no healthcheck")
            for name in sorted(expected & set(services))
            if "healthcheck" not in services[name]
        ]
    yield CheckResult("compose: a healthy-checked service per process", not problems, "; ".join(problems))


def check_deployment(directory: Path) -> Iterator[CheckResult]:
    """Every check of ``directory/deploy`` (each host's project on several hosts), as results
    (failures included, never raised)."""
    spec = load_spec(directory)
    check_files(spec)
    deploy = directory / DEPLOY_DIR
    workers = tuple(w.name for w in spec.fleet.workers)
    front = spec.host_of(Service.NGINX)
    projects = [
        Project(
            host, deploy / HOSTS_DIR / host, tuple(p for p in spec.processes_on(host) if p in workers), host == front
        )
        for host in spec.hosts
    ]
    projects = projects or [Project("", deploy, workers, front=True)]
    if not all((project.path / "docker-compose.yml").exists() for project in projects):
        raise UsageError(f"{deploy}: nothing rendered; run `synfleet render --dir {directory}` first")
    with world_readable_tempdir("synfleet-check-") as scratch:
        for project in projects:
            root = scratch / project.host  # each project's own copies
            mapping = {
                COMPOSE.socket_dir: str(root / "sockets"),
                COMPOSE.data_dir: str(root / "data"),
                COMPOSE.config_dir: str(root / SYNAPSE_DIR),
                COMPOSE.secrets_dir: str((directory / SECRETS_DIR).resolve()),
                COMPOSE.nginx_log_dir: str(root / "nginx-logs"),
                COMPOSE_NGINX_TEMP_DIR: str(root / "nginx-temp"),
            }
            if spec.tls.enabled:
                mapping[COMPOSE.tls_certificate] = spec.tls.certificate
                mapping[COMPOSE.tls_key] = spec.tls.key
            root.mkdir(exist_ok=True)
            results = []
            if project.nginx_conf.exists():  # a host that no other host reaches runs no nginx
                conf = project.path / DEPLOY_NGINX_CONFIG
                results.append(nginx_test(conf, mapping, root, fleet_addresses(spec)))
            results += synapse_load(project.path / SYNAPSE_DIR, mapping, root)
            yield from (CheckResult(project.label(r.name), r.ok, r.detail) for r in results)
        yield from consistency(projects)
