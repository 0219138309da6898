"""`synfleet check`: prove a rendered deployment with the real tools, then with synfleet's own checks.

1. ``nginx -t`` on the nginx config, in a temp prefix, with the container paths remapped.
2. Every process's Synapse config loaded by Synapse's config classes (main; main + each worker).
3. Consistency: stream writers reachable over replication, every upstream socket served by a
   listener with the resources its routes need, every route pointing at an existing upstream, a
   compose service with a healthcheck for every process.
4. The route table against Synapse's own registrations (:mod:`synfleet.check.endpoints`): every
   endpoint a process registers is routed to a process that registers it.
5. With TURN on, coturn's compose service listens on and publishes its ports, and Synapse's
   turn_uris name them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synfleet.audit.synapse_config import MAIN, SynapseConfig, read_synapse_config
from synfleet.check.child import json_lines
from synfleet.check.endpoints import Proof, load_registrations, prove, rendered_writers
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
from synfleet.model.fleet import Fleet, Role, Service, host_port
from synfleet.model.load import load_spec
from synfleet.model.pem import check_files
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.turn import public_address
from synfleet.model.synapse import Resource, process_name
from synfleet.nginx.binary.command import stream_module, test_config, world_readable_tempdir
from synfleet.nginx.config import NginxModel, socket_gateways, socket_relays
from synfleet.nginx.upstream import Upstream
from synfleet.nginx.variables import Map
from synfleet.pki.fleet import TLS_DIR, problems
from synfleet.render.compose import turn_ports
from synfleet.render.deploy import DEPLOY_DIR, HOSTS_DIR
from synfleet.render.files import PRIVATE, write_file
from synfleet.render.services import MAIN_SERVICE, publish_address
from synfleet.routing.plan import RoutingPlan, Variable
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
    addresses of a fleet's hosts, which this machine may not have) on the loopback instead. The
    stream module, built into the official image, is loaded when this machine's nginx has it as a
    dynamic module."""
    copy = scratch / "nginx"
    copy.mkdir()
    loopback = re.compile(rf"\blisten ({'|'.join(re.escape(publish_address(a)) for a in addresses) or '(?!)'}):")
    for path in conf_dir.iterdir():
        text = loopback.sub("listen 127.0.0.1:", remap_text(path.read_text(), mapping))
        if path.name == "nginx.conf" and re.search(r"(?m)^stream \{", text) and "load_module" not in text:
            text = "".join(f"load_module {module};\n" for module in filter(None, [stream_module()])) + text
        (copy / path.name).write_text(text)
    for directory in mapping.values():
        if not Path(directory).suffix:
            Path(directory).mkdir(parents=True, exist_ok=True)
    result = test_config(copy, copy / "nginx.conf", scratch / "nginx-error.log", scratch / "nginx.pid")
    output = (result.stdout + result.stderr).strip().replace(str(copy) + "/", "")
    return CheckResult(
        "nginx -t", result.returncode == 0, output.splitlines()[0] if output and result.returncode else ""
    )


def synapse_copy(config_dir: Path, mapping: Mapping[str, str], scratch: Path) -> Path:
    """A copy of ``config_dir`` in ``scratch`` with paths remapped, for Synapse to load. The copies
    are private (the database password is in them), though ``scratch`` is not."""
    copy = scratch / SYNAPSE_DIR
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file()):
        target = copy / path.relative_to(config_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".yaml":
            text = yaml.safe_dump(remap_value(yaml.safe_load(path.read_text()), mapping), sort_keys=False)
        else:  # files the yaml names (the federation CA bundle)
            text = path.read_text()
        write_file(target, text, PRIVATE)
    return copy


def synapse_load(config_dir: Path, mapping: Mapping[str, str], scratch: Path) -> Iterator[CheckResult]:
    """Load main's and each worker's config with Synapse, from a remapped copy."""
    copy = synapse_copy(config_dir, mapping, scratch)
    workers = sorted(str(p) for p in (copy / WORKER_CONFIG_DIR).glob("*.yaml"))
    lines, error = json_lines("synfleet.check.synapse_loader", str(copy / SHARED_CONFIG), *workers)
    if not lines:
        yield CheckResult("synapse config", False, error)
    for line in lines:
        if line["process"] == "*":
            yield CheckResult("synapse config", False, line["error"] + ": pip install 'synfleet[synapse]'")
        else:
            yield CheckResult(f"synapse config: {line['process']}", line["ok"], line["error"])


def resources_needed(rule: Rule) -> set[str]:
    """The Synapse listener resources a rule's requests need."""
    if rule.target is Role.MEDIA:
        return {Resource.MEDIA}
    needed: set[str] = set()
    if "/_matrix/federation" in rule.path or "/_matrix/key" in rule.path:
        needed.add(Resource.FEDERATION)
    if "/_matrix/client" in rule.path or "/_synapse" in rule.path or not needed:
        needed.add(Resource.CLIENT)
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


@dataclass(frozen=True)
class Deployment:
    """What synfleet's own checks read from every project, with the audit's readers: each host's
    Synapse and nginx configs, which process listens on each socket, and where each gateway from
    another host leads."""

    projects: tuple[Project, ...]
    synapse: dict[str, SynapseConfig]  # by host
    nginx: dict[str, NginxModel]  # by host, of the hosts that run nginx
    served: dict[tuple[str, str], tuple[str, frozenset[str]]]  # (host, socket) -> process, resources
    links: dict[str, tuple[str, str]]  # gateway address -> (host, socket)
    relays: dict[tuple[str, str], str]  # (host, relay socket) -> the gateway address it carries to

    @property
    def front(self) -> str:
        return next(project.host for project in self.projects if project.front)

    def describe(self, host: str, location: str) -> str:
        """``location`` as a message names it: with the address a relay of ``host`` carries it to."""
        relayed = self.relays.get((host, location))
        return f"{location} (relayed to {relayed})" if relayed else location

    def serving(self, host: str, location: str) -> tuple[str | None, frozenset[str]]:
        """The process, and its resources, that a socket path (a process's, or nginx's relay to
        another host), or an address:port of another host, leads to from ``host``; (None, none) if
        no process listens there."""
        location = self.relays.get((host, location), location)
        reached = (host, location) if location.startswith("/") else self.links.get(location)
        return self.served.get(reached, (None, frozenset())) if reached else (None, frozenset())


def _served(project: Project, synapse: SynapseConfig) -> dict[tuple[str, str], tuple[str, frozenset[str]]]:
    """(host, socket path) -> the process listening there and its resources. Every host's
    homeserver.yaml has main's listeners; they count on main's host only. A process that loads the
    media repository (its own setting, else homeserver.yaml's, as Synapse merges the two) serves
    media on its client and federation resources too."""
    shared_media = bool(synapse.shared.get("enable_media_repo", True))
    served = {}
    for process in synapse.processes:
        if process.name == MAIN and MAIN not in project.processes:
            continue
        media = shared_media if process.enable_media_repo is None else process.enable_media_repo
        for socket, names in process.socket_resources.items():
            with_media = names | {Resource.MEDIA} if media and names & {Resource.CLIENT, Resource.FEDERATION} else names
            served[(project.host, socket)] = (process.name, with_media)
    return served


def read_deployment(projects: Sequence[Project]) -> Deployment:
    """Every project's Synapse config (homeserver.yaml and its workers' files) and nginx config."""
    synapse, nginx, served, links, relays = {}, {}, {}, {}, {}
    for project in projects:
        synapse_dir = project.path / SYNAPSE_DIR
        workers = sorted((synapse_dir / WORKER_CONFIG_DIR).glob("*.yaml"))
        synapse[project.host] = read_synapse_config([synapse_dir / SHARED_CONFIG, *workers])
        served.update(_served(project, synapse[project.host]))
        if project.nginx_conf.exists():  # a host that no other host reaches runs no nginx
            nginx[project.host] = NginxModel.load(project.nginx_conf)
            for address, socket in socket_gateways(nginx[project.host].http).items():
                links[address] = (project.host, socket)
            for socket, address in socket_relays(nginx[project.host].stream).items():
                relays[(project.host, socket)] = address
    return Deployment(tuple(projects), synapse, nginx, served, links, relays)


def _writer_problems(deployment: Deployment, host: str, config: dict[str, Any]) -> Iterator[str]:
    instance_map = config.get("instance_map") or {}
    for stream, writers in (config.get("stream_writers") or {}).items():
        for writer in writers if isinstance(writers, list) else [writers]:
            entry = instance_map.get(process_name(writer), {})
            location = entry.get("path") or (f"{entry['host']}:{entry['port']}" if "host" in entry else None)
            if location is None:
                yield f"{stream} writer {writer} is not in instance_map"
                continue
            process, names = deployment.serving(host, location)
            if process != process_name(writer) or Resource.REPLICATION not in names:
                yield f"{stream} writer {writer} has no replication listener at {deployment.describe(host, location)}"


def stream_writers_reachable(deployment: Deployment) -> CheckResult:
    """Every stream writer is in instance_map, with a replication listener where it points."""
    problems = {
        p for host, config in deployment.synapse.items() for p in _writer_problems(deployment, host, config.shared)
    }
    return CheckResult("stream writers reachable over replication", not problems, "; ".join(sorted(problems)))


RULES = {rule.name: rule for rule in (*ROUTES, DEFAULT_RULE)}


def _nginx_map(model: NginxModel | None, variable: str) -> Map | None:
    return next((m for m in reversed(model.maps) if m.variable == variable), None) if model else None


def _routes(model: NginxModel | None) -> dict[str, str | None]:
    """Each route the front nginx's ``$synfleet_route`` map gives -> the upstream its
    ``$synfleet_upstream`` map sends it to (None if neither an entry nor a default does)."""
    route_map, upstream_map = _nginx_map(model, Variable.ROUTE), _nginx_map(model, Variable.UPSTREAM)
    if route_map is None:
        return {}
    upstreams = {entry.match: entry.value for entry in upstream_map.entries} if upstream_map else {}
    default = (upstream_map.default if upstream_map else "") or None
    routes = [entry.value for entry in route_map.entries] + ([route_map.default] if route_map.default else [])
    return {route: upstreams.get(route, default) for route in routes}


def _route_problems(
    deployment: Deployment, upstreams: Mapping[str, Upstream], route: str, upstream: str | None
) -> list[str]:
    if route not in RULES:
        return [f"route {route} is not in synfleet's route table"]
    if upstream is None or upstream not in upstreams:
        return [f"route {route} goes to {upstream}, which is not an upstream"]
    problems = []
    for server in (s.removeprefix("unix:") for s in upstreams[upstream].servers):
        process, names = deployment.serving(deployment.front, server)
        missing = resources_needed(RULES[route]) - names
        where = deployment.describe(deployment.front, server)
        if process is None:
            problems.append(f"{upstream}: no Synapse listener at {where}")
        elif missing:
            problems.append(f"route {route}: {process} at {where} lacks resource(s) {', '.join(sorted(missing))}")
    return problems


def routes_reach_listeners(deployment: Deployment) -> CheckResult:
    """In the front nginx, every route names an upstream, and every server of that upstream is a
    Synapse listener with the resources the route needs."""
    model = deployment.nginx.get(deployment.front)
    upstreams = model.upstreams if model else {}
    problems = {
        problem
        for route, upstream in _routes(model).items()
        for problem in _route_problems(deployment, upstreams, route, upstream)
    }
    return CheckResult("every route reaches a listener that serves it", not problems, "; ".join(sorted(problems)))


def _compose_problems(project: Project) -> list[str]:
    compose = yaml.safe_load((project.path / "docker-compose.yml").read_text())
    services = compose.get("services") or {}
    expected = {MAIN_SERVICE if name == MAIN else name for name in project.processes}
    problems = [project.label(f"no service for {name}") for name in sorted(expected - set(services))]
    return problems + [
        project.label(f"{name} has no healthcheck")
        for name in sorted(expected & set(services))
        if "healthcheck" not in services[name]
    ]


def compose_healthchecks(deployment: Deployment) -> CheckResult:
    """docker compose: a service with a healthcheck per process."""
    problems = [problem for project in deployment.projects for problem in _compose_problems(project)]
    return CheckResult("compose: a healthy-checked service per process", not problems, "; ".join(problems))


#: synfleet's own checks, in the order `synfleet check` reports them.
CHECKS: tuple[Callable[[Deployment], CheckResult], ...] = (
    stream_writers_reachable,
    routes_reach_listeners,
    compose_healthchecks,
)


def consistency(projects: list[Project]) -> Iterator[CheckResult]:
    """synfleet's own checks across nginx, Synapse and compose files; on several hosts across every
    host's project, following each TCP address to the gateway that carries it to a socket."""
    deployment = read_deployment(projects)
    for check in CHECKS:
        yield check(deployment)


def scratch_mapping(spec: FleetSpec, directory: Path, root: Path, project: Path | None = None) -> dict[str, str]:
    """The container paths of a rendered deployment -> where a check's copies use them, in ``root``
    (a host's certificates for the links between hosts: in its ``project``)."""
    project_tls = (project or directory) / SECRETS_DIR / TLS_DIR
    mapping = {
        COMPOSE.socket_dir: str(root / "sockets"),
        COMPOSE.data_dir: str(root / "data"),
        COMPOSE.config_dir: str(root / SYNAPSE_DIR),
        COMPOSE.secrets_dir: str((directory / SECRETS_DIR).resolve()),
        f"{COMPOSE.secrets_dir}/{TLS_DIR}": str(project_tls),
        COMPOSE.nginx_log_dir: str(root / "nginx-logs"),
        COMPOSE_NGINX_TEMP_DIR: str(root / "nginx-temp"),
    }
    if spec.tls.enabled:
        mapping[COMPOSE.tls_certificate] = spec.tls.certificate
        mapping[COMPOSE.tls_key] = spec.tls.key
    return mapping


TURN_CHECK = "TURN: coturn listens on turn.port (UDP, TCP) and the relay ports, where turn_uris say"


def _turn_problems(spec: FleetSpec, projects: Sequence[Project]) -> Iterator[str]:
    turn = spec.turn
    host = spec.fleet.host_of(Service.TURN)
    project = next(project for project in projects if project.host == host)
    services = yaml.safe_load((project.path / "docker-compose.yml").read_text()).get("services") or {}
    service = services.get(Service.TURN.value)
    if service is None:
        yield project.label("no service for coturn (turn)")
        return
    command = service.get("command") or []
    for option in (
        f"--listening-port={turn.port}",
        f"--min-port={turn.relay_min_port}",
        f"--max-port={turn.relay_max_port}",
    ):
        if option not in command:
            yield project.label(f"coturn is not started with {option}")
    if service.get("network_mode") != "host":
        published = set(service.get("ports") or [])
        for mapping in turn_ports(spec):
            if mapping not in published:
                yield project.label(f"coturn does not publish {mapping}")
    if "healthcheck" not in service:
        yield project.label("coturn has no healthcheck")
    main = next(project for project in projects if MAIN in project.processes)
    uris = yaml.safe_load((main.path / SYNAPSE_DIR / SHARED_CONFIG).read_text()).get("turn_uris") or []
    at = host_port(public_address(spec), turn.port)
    for transport in ("udp", "tcp"):
        if f"turn:{at}?transport={transport}" not in uris:
            yield main.label(f"homeserver.yaml's turn_uris lack turn:{at}?transport={transport}")


def turn_listens(spec: FleetSpec, projects: Sequence[Project]) -> CheckResult:
    """With TURN on: the compose project of coturn's host runs it on turn.port and the relay ports,
    publishing them (UDP; its port TCP too) unless it is on the host's network, with a
    healthcheck; and Synapse hands out URIs of that port at turn.public_address."""
    problems = list(_turn_problems(spec, projects))
    return CheckResult(TURN_CHECK, not problems, "; ".join(problems))


CERTIFICATES_CHECK = "the links' certificates: the fleet CA's, naming what the fleet file says, 30 days left"
ENDPOINTS_CHECK = "every endpoint Synapse registers is routed to a process that serves it"


def endpoint_proof(
    fleet: Fleet, copies: Sequence[Path], extra: Sequence[Path] = (), rules: tuple[Rule, ...] = ROUTES
) -> Proof:
    """The route table (``rules``) proven on remapped copies of the rendered Synapse files (the
    first holds main's homeserver.yaml; on several hosts, one per host), with ``extra`` settings
    loaded last."""
    shared = copies[0] / SHARED_CONFIG
    workers = sorted(path for copy in copies for path in (copy / WORKER_CONFIG_DIR).glob("*.yaml"))
    registrations = load_registrations(shared, workers, extra)
    return prove(RoutingPlan(fleet, rules=rules), registrations, rendered_writers(shared))


def endpoints_served(fleet: Fleet, copies: Sequence[Path], rules: tuple[Rule, ...] = ROUTES) -> CheckResult:
    """:func:`endpoint_proof` as a check: one line naming every endpoint sent where it cannot be
    served. Endpoints that main serves though a worker could are counted, not failed (a newer
    Synapse may let workers serve more)."""
    try:
        proof = endpoint_proof(fleet, copies, rules=rules)
    except UsageError as exc:
        return CheckResult(ENDPOINTS_CHECK, False, str(exc))
    return CheckResult(ENDPOINTS_CHECK, not proof.failures, "; ".join(proof.failures) or proof.summary())


def check_deployment(directory: Path) -> Iterator[CheckResult]:
    """Every check of ``directory/deploy`` (each host's project on several hosts), as results
    (failures included, never raised)."""
    spec = load_spec(directory)
    check_files(spec)
    deploy = directory / DEPLOY_DIR
    workers = tuple(w.name for w in spec.fleet.workers)
    front = spec.fleet.front
    projects = [
        Project(
            host,
            deploy / HOSTS_DIR / host,
            tuple(p for p in spec.fleet.processes_on(host) if p in workers),
            host == front,
        )
        for host in spec.hosts
    ]
    projects = projects or [Project("", deploy, workers, front=True)]
    if not all((project.path / "docker-compose.yml").exists() for project in projects):
        raise UsageError(f"{deploy}: nothing rendered; run `synfleet render --dir {directory}` first")
    copies: list[Path] = []
    with world_readable_tempdir("synfleet-check-") as scratch:
        for project in projects:
            root = scratch / project.host  # each project's own copies
            mapping = scratch_mapping(spec, directory, root, project.path)
            root.mkdir(exist_ok=True)
            results = []
            if project.nginx_conf.exists():  # a host that no other host reaches runs no nginx
                conf = project.path / DEPLOY_NGINX_CONFIG
                results.append(nginx_test(conf, mapping, root, spec.fleet.host_addresses))
            results += synapse_load(project.path / SYNAPSE_DIR, mapping, root)
            yield from (CheckResult(project.label(r.name), r.ok, r.detail) for r in results)
            copy = root / SYNAPSE_DIR
            if MAIN in project.processes:  # main's homeserver.yaml first
                copies.insert(0, copy)
            else:
                copies.append(copy)
        yield from consistency(projects)
        yield endpoints_served(spec.fleet, copies)
    if spec.turn.enabled:
        yield turn_listens(spec, projects)
    if spec.hosts:
        wrong = problems(directory, spec)
        yield CheckResult(
            "the links' certificates: the fleet's, as the fleet file names them, 30 days left",
            not wrong,
            "; ".join(wrong),
        )
