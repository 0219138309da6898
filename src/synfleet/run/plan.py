"""The native run's plan: every process `synfleet up` supervises, how each starts and is checked,
and the run directory's files (nginx and Synapse from the same templates as docker compose, with
the native layout, plus supervisord's)."""

from __future__ import annotations

import importlib.util
import os
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import NGINX_DIR, SECRETS_DIR
from synfleet.model.fleet import Service
from synfleet.model.schema import FleetSpec, parse_fleet
from synfleet.model.schema.values import parse_size
from synfleet.nginx.binary.command import command_line, http2_directive_supported, nginx_version, stream_module
from synfleet.pki.fleet import host_files
from synfleet.render.deploy import nginx_tls, render_files
from synfleet.render.files import Rendered
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.hosts import gateways, link_tls, local_metrics, local_nginx, relays
from synfleet.render.metrics import metrics_files
from synfleet.render.nginx import NginxLayout, first_link
from synfleet.render.secrets import SYNAPSE_FILES
from synfleet.render.services import Context, Health, HealthKind, Native, Start, service_table
from synfleet.run.accounts import FLEET_ACCOUNT, NGINX_ACCOUNT, as_root
from synfleet.run.media import MEDIA_CACHE, media_store
from synfleet.run.ownership import Running, fleet_processes
from synfleet.run.paths import RunPaths, blocked_parent
from synfleet.run.supervised import NativeProcess, Tier
from synfleet.run.supervisor import supervisor_config
from synfleet.system import find_binary, fleet_python, require_binary

#: Redis's settings file on a fleet of several hosts (its password: readable by the fleet's account only).
REDIS_CONFIG = f"{SECRETS_DIR}/redis.conf"
#: nginx's configuration in its prefix.
NGINX_CONF = "nginx.conf"
#: The fleet file the run directory was last rendered from (by `up` or `apply`).
APPLIED_FLEET_FILE = "fleet.toml"


@dataclass(frozen=True)
class Plan:
    spec: FleetSpec
    paths: RunPaths
    processes: list[NativeProcess]
    native: Native


def native_table(spec: FleetSpec, paths: RunPaths, native: Native, secrets: dict[str, str]) -> dict[str, Start]:
    """The service table's rows for this machine's share of the fleet (with ``secrets``, their files)."""
    nginx_layout = native_nginx_layout(spec, paths)
    return service_table(
        Context(spec, paths.layout, paths.host, native, secrets), nginx_layout.front, first_link(nginx_layout)
    )


def check_host(paths: RunPaths, spec: FleetSpec) -> None:
    """A fleet on several hosts runs one host's share per `up --host`; a fleet on one, no host."""
    if spec.hosts and not paths.host:
        raise UsageError(
            f"this fleet runs on the hosts {', '.join(spec.hosts)}: give the host whose share runs here (--host NAME)"
        )
    if paths.host and not spec.hosts:
        raise UsageError(f"--host {paths.host}: fleet.toml has no [hosts]; the whole fleet runs here")
    if paths.host and paths.host not in spec.hosts:
        raise UsageError(f"--host {paths.host}: no such host in fleet.toml; hosts: {', '.join(spec.hosts)}")


def one_host(spec: FleetSpec, instead: str) -> None:
    """Refuse a command made for a fleet on one host, saying what to do ``instead``."""
    if spec.hosts:
        raise UsageError(f"this fleet runs on the hosts {', '.join(spec.hosts)}: {instead}")


def plan_for(paths: RunPaths, spec: FleetSpec) -> Plan:
    """Find every binary and check the directories before anything is written or started."""
    check_host(paths, spec)
    synapse = importlib.util.find_spec("synapse")
    if synapse is None or synapse.origin is None:
        raise SynfleetError(
            "Synapse is not installed in this Python: pip install 'synfleet[synapse]' (or run scripts/setup.sh)"
        )
    here = spec.fleet.processes_on(paths.host)  # every process on one host
    names = ["nginx"]
    if Service.POSTGRES in here:
        names += ["postgres", "initdb"]
    if Service.REDIS in here:
        names.append("redis-server")
    if Service.TURN in here:
        names.append("turnserver")
    binaries = {name: require_binary(name) for name in names}
    if as_root():
        _check_reachable(paths.run)
        python = Path(fleet_python())
        for path in (python, python.resolve(), Path(sysconfig.get_paths()["stdlib"]), Path(synapse.origin).parent):
            _check_python_reachable(Path(os.path.realpath(path.parent)) / path.name)
    nginx = command_line(paths.nginx_dir, paths.nginx_dir / NGINX_CONF, paths.nginx_error_log, binary=binaries["nginx"])
    programs = {**binaries, "python": fleet_python()}
    native = Native(programs, str(paths.run), str(paths.postgres_data), REDIS_CONFIG, tuple(nginx))
    return Plan(spec, paths, native_processes(spec, paths, native), native)


def running_spec(paths: RunPaths) -> FleetSpec:
    """The fleet file the running fleet was rendered from."""
    path = paths.run / APPLIED_FLEET_FILE
    try:
        return parse_fleet(path.read_text(), str(path))
    except OSError:
        raise UsageError(
            f"{path} is missing: this fleet was started by an older synfleet; `synfleet down` and `up` once"
        ) from None


def _check_reachable(run: Path) -> None:
    """Run as root, every process but nginx's master drops root; they must reach the run directory."""
    if parent := blocked_parent(run):
        raise UsageError(
            f"{parent} is not reachable by other users (mode {stat.S_IMODE(parent.stat().st_mode):o}); the "
            f"fleet's accounts ({FLEET_ACCOUNT}, {NGINX_ACCOUNT}) need it: use a directory elsewhere (e.g. "
            f"/srv/fleet) or chmod o+x {parent}"
        )


def _check_python_reachable(path: Path) -> None:
    """Run as root, Synapse runs as the fleet's account, from this Python and these packages."""
    parent = blocked_parent(path)
    if parent is None and path.stat().st_mode & stat.S_IROTH:
        return
    blocked = parent or path
    raise UsageError(
        f"Synapse runs as the account {FLEET_ACCOUNT}, which cannot reach {path} ({blocked} is mode "
        f"{stat.S_IMODE(blocked.stat().st_mode):o}): install synfleet in a virtualenv made from a Python that "
        "every user can run, e.g. `/usr/bin/python3 -m venv /opt/synfleet` (scripts/setup.sh does so)"
    )


def native_nginx_layout(spec: FleetSpec, paths: RunPaths) -> NginxLayout:
    host = _host(spec.listen.bind)
    front = not paths.host or spec.fleet.front == paths.host
    links = relays(spec, paths.host, paths.layout)
    return NginxLayout(
        log_dir=str(paths.logs),
        listen=(f"{host}:{spec.listen.http_port}",) if front else (),
        gateways=gateways(spec, paths.host, paths.layout),
        relays=links,
        links=link_tls(spec, paths.layout),
        stream_module=stream_module() if links else "",
        front=front,
        tls=nginx_tls(
            spec,
            f"{host}:{spec.listen.https_port}",
            spec.tls.certificate,
            spec.tls.key,
            http2_on=http2_directive_supported(nginx_version()),
        ),
        user=NGINX_ACCOUNT if as_root() else None,
        pid_file=str(paths.nginx_dir / "nginx.pid"),
        temp_dir=str(paths.nginx_dir / "tmp"),
        access_log_buffer="",
        status_listen=f"127.0.0.1:{spec.metrics.nginx_status_port}" if spec.metrics.enabled else None,
    )


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def launched(paths: RunPaths, account: str | None, *command: str, sockets: tuple[str, ...] = ()) -> list[str]:
    """``command`` started by :mod:`synfleet.run.launch`, which first stops what an earlier run of the
    same program left behind (nginx workers, PostgreSQL backends) and removes the sockets it alone
    listens on in the directories ``sockets``, then becomes it, as ``account``."""
    user = ["--user", account] if account else []
    cleared = [argument for directory in sockets for argument in ("--sockets", directory)]
    return [fleet_python(), "-m", "synfleet.run.launch", "--run", str(paths.run), *user, *cleared, "--", *command]


#: The fleet's programs, in the order their processes stop: front first, PostgreSQL last.
PROGRAMS = ("nginx", "turnserver", "python", "redis-server", "postgres")


def running_processes(paths: RunPaths) -> list[Running]:
    """The fleet's processes that are running, whoever started them, front to back."""
    programs = {name: find_binary(name) if name != "python" else fleet_python() for name in PROGRAMS}
    paths_of = {os.path.realpath(path): rank for rank, path in enumerate(programs.values()) if path}
    found = fleet_processes(paths.run, paths_of, interpreter=fleet_python())
    return sorted(found, key=lambda p: (paths_of[p.executable], p.pid))


#: The supervisor's start tier of each service; Synapse's processes go by role.
TIERS = {
    Service.POSTGRES: Tier.INFRASTRUCTURE,
    Service.REDIS: Tier.INFRASTRUCTURE,
    Service.NGINX: Tier.FRONT,
    Service.TURN: Tier.FRONT,  # clients' too; it needs nothing else of the fleet
}
#: Services that start through :mod:`synfleet.run.launch` (which clears what an earlier run left).
LAUNCHED = frozenset({Service.POSTGRES, Service.NGINX})


def native_processes(spec: FleetSpec, paths: RunPaths, native: Native) -> list[NativeProcess]:
    """Every process `synfleet up` supervises, in start order, from the service table. Run as
    root, all but nginx run as the fleet's account."""
    account = FLEET_ACCOUNT if as_root() else None
    processes = []
    for name, start in native_table(spec, paths, native, {}).items():
        service = Service(name) if name in tuple(Service) else None
        tier = TIERS[service] if service else Tier.MAIN if name == spec.fleet.main.name else Tier.WORKERS
        launch = service in LAUNCHED
        nginx = service is Service.NGINX
        relays = (paths.layout.relay_dir, paths.layout.inbound_relay_dir) if nginx and paths.host else ()
        processes.append(
            NativeProcess(
                name,
                tier,
                launched(paths, None if nginx else account, *start.command, sockets=relays)
                if launch
                else list(start.command),
                start.health,
                str(paths.nginx_error_log if nginx else paths.log(name)),
                start.socket,
                user=None if launch else account,
                stop_signal=start.stop_signal,
                stop_wait=start.stop_wait,
                environment=dict(start.environment),
            )
        )
    return processes + media_cache(spec, paths, account)


def media_cache(spec: FleetSpec, paths: RunPaths, account: str | None) -> list[NativeProcess]:
    """With media in a bucket, on a host that runs the media repository: the process that keeps
    the media store's disk under media.cache_size (see :mod:`synfleet.run.media`)."""
    serving = spec.fleet.media_repository
    if not spec.media.in_bucket or not any(not paths.host or w.host == paths.host for w in serving):
        return []
    command = [fleet_python(), "-m", "synfleet.run.media", "--config", str(paths.config)]
    command += ["--store", str(media_store(paths)), "--keep", str(parse_size(spec.media.cache_size))]
    health = Health(HealthKind.RUNNING, "")
    return [NativeProcess(MEDIA_CACHE, Tier.WORKERS, command, health, str(paths.log(MEDIA_CACHE)), "", user=account)]


def run_files(plan: Plan, secrets: dict[str, str]) -> Rendered:
    """The run directory's files, by path relative to it: nginx, Synapse, supervisord, and a copy of
    the deployment's secrets (for the fleet's account to read)."""
    paths = plan.paths
    files = render_files(plan.spec, paths.layout, native_nginx_layout(plan.spec, paths), secrets, NGINX_DIR, paths.host)
    for start in native_table(plan.spec, paths, plan.native, secrets).values():
        files.update(start.files)
    files["supervisord.conf"] = supervisor_config(paths, plan.processes)
    metrics = metrics_files(
        plan.spec, local_metrics(plan.spec, paths.host), grafana=False, nginx=local_nginx(plan.spec, paths.host)
    )
    files.update(metrics)
    files[APPLIED_FLEET_FILE] = fleet_toml(plan.spec)
    files.update({f"{SECRETS_DIR}/{name}": f"{secrets[name]}\n" for name in SYNAPSE_FILES if name in secrets})
    if plan.spec.hosts and secrets:  # this host's certificates for the links between hosts
        tls = host_files(paths.directory, plan.spec, paths.host)
        files.update({f"{SECRETS_DIR}/{name}": text for name, text in tls.items()})
    return Rendered(files, secrets)
