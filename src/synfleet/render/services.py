"""How each of the fleet's services starts, on every target: the one table of them.

A row per service (PostgreSQL, Redis, each Synapse process, nginx) gives, for the target at hand
(the native run, a compose project, one host's project of a fleet on several hosts, Kubernetes),
its command line, its health check and the files it needs, as a :class:`Start`. The native run's
supervisor, the compose file and the Kubernetes manifests are rendered from these rows; what a
service needs is written here once (its options, how it is checked), and each target only says
how it runs a command and asks a health check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from synfleet.layout import (
    COMPOSE,
    COMPOSE_CONFIG_SOURCE,
    COMPOSE_HTTP_PORT,
    COMPOSE_HTTPS_PORT,
    COMPOSE_SECRETS_SOURCE,
    COMPOSE_TLS_SOURCE,
    DEPLOY_POSTGRES_ENV,
    KUBERNETES,
    SECRETS_DIR,
    Layout,
)
from synfleet.model.fleet import Role, Service, Worker, host_port
from synfleet.model.ports import POSTGRES_PORT, REDIS_PORT
from synfleet.model.schema import FleetSpec
from synfleet.model.schema.storage import POSTGRES_SUPERUSER, Database
from synfleet.model.schema.turn import listen_address, public_address, realm
from synfleet.model.synapse import MAIN_MODULE, WORKER_MODULE
from synfleet.pki.fleet import TLS_DIR, Installed
from synfleet.render.hosts import AUTH_METHOD, DATABASE_OPTIONS, SYNAPSE_ROLE_OPTIONS, hba
from synfleet.render.secrets import SYNAPSE_FILES, Secret, synapse_secrets

#: main's docker compose service keeps the seed's name.
MAIN_SERVICE = "synapse"
#: Redis keeps nothing on disk: Synapse keeps nothing there that outlives a restart.
REDIS_EPHEMERAL = ("--save", "", "--appendonly", "no")
#: initdb's arguments for Synapse's database: Synapse refuses a collation other than C.
C_COLLATION = "--encoding=UTF8 --lc-collate=C --lc-ctype=C"
#: Where PostgreSQL's official image keeps its cluster.
POSTGRES_IMAGE_DATA = "/var/lib/postgresql/data"
#: Where the official image's own clients (its first-start setup) find the server's socket.
POSTGRES_IMAGE_SOCKETS = "/var/run/postgresql"


#: What a Synapse process (and nginx, in front of main) answers 200 on when it serves.
HEALTH_PATH = "/health"


class HealthKind(StrEnum):
    HTTP = "http"  # GET /health answers 200: on a UNIX socket (no port), an address and port, a pod's "http" port
    POSTGRES = "postgres"  # PostgreSQL accepts a connection (pg_isready)
    REDIS = "redis"  # PING answers PONG (or asks for the password, which shows it serves)
    LISTENER = "listener"  # something listens on an address and port, or a UNIX socket (no port)
    STUN = "stun"  # a STUN binding request over UDP to an address and port is answered (coturn)
    RUNNING = "running"  # the process runs: it serves nobody (synfleet's own housekeeping, natively)


@dataclass(frozen=True)
class Health:
    """How to tell a service is ready: ``target`` is a socket, a socket directory or an address
    (none in a pod, whose probes ask the pod itself)."""

    kind: HealthKind
    target: str
    port: int = 0
    user: str = ""
    database: str = ""
    password: str = ""  # Redis's, as the check's shell reads it


@dataclass(frozen=True)
class Start:
    """How one service starts on one target. In a container, ``command`` is the image's command
    (after ``entrypoint``, when the image's own is replaced); natively, the whole command line."""

    name: str
    command: tuple[str, ...]
    health: Health
    socket: str = ""  # where it listens, for status
    entrypoint: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Files it needs beside the rendered configs, by path relative to the deployment tree.
    files: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = "TERM"
    stop_wait: int = 20


@dataclass(frozen=True)
class Native:
    """What only the native run has: its programs and the paths outside the processes' layout."""

    programs: Mapping[str, str]  # binary by name: python, postgres, redis-server, nginx, turnserver
    run_dir: str
    postgres_data: str
    redis_config: str  # relative to run_dir
    nginx_command: tuple[str, ...]


@dataclass(frozen=True)
class Context:
    """What every row reads: the fleet, the target's layout, and on several hosts the host whose
    share is rendered (with its private address)."""

    spec: FleetSpec
    layout: Layout
    host: str = ""
    native: Native | None = None
    #: The deployment's secrets, for the files that hold one (none: the rows without their files).
    secrets: Mapping[str, str] = field(default_factory=dict)

    @property
    def private(self) -> str:
        """This host's private address, where the other hosts reach it ("" on one host)."""
        return self.spec.fleet.host(self.host).address if self.host else ""

    @property
    def target(self) -> str:
        return self.layout.name


# -- PostgreSQL ---------------------------------------------------------------------------------


def postgres_ready(host: str, spec: FleetSpec) -> Health:
    return Health(HealthKind.POSTGRES, host, user=spec.database.user, database=spec.database.name)


def postgres(context: Context) -> Start:
    """The fleet's own PostgreSQL: on its socket (and, on several hosts, its private address), with
    the pg_hba.conf that admits Synapse's role only (natively written by `up`, see
    :mod:`synfleet.run.postgres`); a trial pod on Kubernetes."""
    spec, layout = context.spec, context.layout
    socket_dir = layout.socket_dir
    if context.native is not None:
        options = {
            "listen_addresses": context.private,
            "unix_socket_directories": socket_dir,
            "unix_socket_permissions": "0700",
            "max_connections": "500",
            **_postgres_tls(context),
            **spec.database.server_settings(),
        }
        command = (context.native.programs["postgres"], "-D", context.native.postgres_data, *_settings(options))
        return Start(
            Service.POSTGRES.value,
            command,
            postgres_ready(socket_dir, spec),
            f"{socket_dir}/.s.PGSQL.{POSTGRES_PORT}",
            stop_signal="INT",  # fast shutdown
            stop_wait=60,
        )
    if context.target == KUBERNETES:
        # Every Synapse process may open pool_max connections, and psql needs a few more.
        connections = max(100, len(spec.fleet.workers) * spec.database.pool_max + 10)
        options = {"max_connections": str(connections), "hba_file": CONTAINER_HBA_FILE}
        command = tuple(_settings({**options, **_expanded_literally(spec.database.server_settings())}))
        return Start(Service.POSTGRES.value, command, postgres_ready("127.0.0.1", spec))
    # The image's own socket too: its first-start setup connects there (in the container only).
    sockets = f"{socket_dir},{POSTGRES_IMAGE_SOCKETS}"
    options = {
        "unix_socket_directories": sockets,
        "listen_addresses": context.private,
        "hba_file": CONTAINER_HBA_FILE,
        **_postgres_tls(context),
        **_expanded_literally(spec.database.server_settings()),
    }
    command = ("postgres", *_settings(options))
    # On several hosts its TLS files are copied, as root, for the image's account; then the image's
    # entrypoint starts as ever.
    entrypoint: tuple[str, ...] = ()
    if context.private:
        script = f'{compose_tls_copy(HOST_TLS, POSTGRES_IMAGE_ACCOUNT)} && exec docker-entrypoint.sh "$$@"'
        entrypoint = ("sh", "-c", script, "postgres")
    health = postgres_ready(socket_dir, spec)
    return Start(Service.POSTGRES.value, command, health, entrypoint=entrypoint, files=_postgres_files(context))


#: The TLS files of a server of the links between hosts (PostgreSQL, Redis): the CAs it trusts
#: and its host's certificate and key.
HOST_TLS = (Installed.TRUST.certificate, Installed.HOST.certificate, Installed.HOST.key)


def _postgres_tls(context: Context) -> dict[str, str]:
    """On its host's private address (a fleet on several hosts), PostgreSQL takes TLS only
    (pg_hba.conf's ``hostssl``), with this host's certificate, and checks its clients' by the
    fleet's CA."""
    if not context.private:
        return {}
    layout = context.layout
    return {
        "ssl": "on",
        "ssl_cert_file": layout.secret(Installed.HOST.certificate),
        "ssl_key_file": layout.secret(Installed.HOST.key),
        "ssl_ca_file": layout.secret(Installed.TRUST.certificate),
        "ssl_min_protocol_version": "TLSv1.3",
    }


def _postgres_files(context: Context) -> dict[str, str]:
    """The official image's settings for its first start (its superuser's password, Synapse's
    password for :func:`initdb_script`, the C collation), that script, and the pg_hba.conf that
    admits Synapse's role (on several hosts, from the fleet's hosts) and keeps the superuser to the
    image's own account (see :func:`~synfleet.render.hosts.hba`)."""
    if not context.secrets:
        return {}
    database = context.spec.database
    environment = {
        "POSTGRES_USER": POSTGRES_SUPERUSER,
        "POSTGRES_PASSWORD": context.secrets[Secret.POSTGRES_SUPERUSER_PASSWORD],
        DATABASE_PASSWORD_VARIABLE: context.secrets[Secret.POSTGRES_PASSWORD],
        "POSTGRES_INITDB_ARGS": C_COLLATION,
    }
    return {
        DEPLOY_POSTGRES_ENV: "".join(f"{name}={value}\n" for name, value in environment.items()),
        HBA_FILE: hba(database, context.spec.fleet.host_addresses if context.host else ()),
        INITDB_SCRIPT: initdb_script(database),
    }


def initdb_script(database: Database) -> str:
    """What the official image runs on its first start, as its superuser, after creating the
    cluster: Synapse's role, with its password from :data:`DATABASE_PASSWORD_VARIABLE` (psql 15's
    ``\\getenv``: the script holds no secret, and no command line shows it) and no privilege beyond
    logging in, and Synapse's database, owned by it."""
    return (
        "-- Rendered by synfleet: Synapse's role and its database, owned by it; nothing more.\n"
        "\\set ON_ERROR_STOP on\n"
        f"\\getenv synapse_password {DATABASE_PASSWORD_VARIABLE}\n"
        f"SET password_encryption = '{AUTH_METHOD}';\n"
        f"CREATE ROLE \"{database.user}\" {SYNAPSE_ROLE_OPTIONS} PASSWORD :'synapse_password';\n"
        f'CREATE DATABASE "{database.name}" OWNER "{database.user}" {DATABASE_OPTIONS};\n'
    )


#: The pg_hba.conf of a project, in it and in the PostgreSQL container.
HBA_FILE = "postgres/pg_hba.conf"
CONTAINER_HBA_FILE = "/etc/synfleet/pg_hba.conf"
#: :func:`initdb_script`, in the project and where the official image runs it on its first start.
INITDB_SCRIPT = "postgres/synfleet-initdb.sql"
CONTAINER_INITDB_DIR = "/docker-entrypoint-initdb.d"
#: Synapse's password, in the PostgreSQL container's environment (for :func:`initdb_script`).
DATABASE_PASSWORD_VARIABLE = "SYNFLEET_DATABASE_PASSWORD"


def _expanded_literally(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings for a command that compose and Kubernetes expand ("$NAME", "$(NAME)"): in both,
    "$$" is a literal "$"."""
    return {name: value.replace("$", "$$") for name, value in settings.items()}


def _settings(options: Mapping[str, str]) -> list[str]:
    return [argument for name, value in options.items() for argument in ("-c", f"{name}={value}")]


# -- Redis --------------------------------------------------------------------------------------


def redis(context: Context) -> Start:
    """The fleet's own Redis: on its socket only, or on several hosts also on its private address
    with the generated password (natively from a settings file, in a container on standard input,
    never on a command line); a trial pod on Kubernetes."""
    layout, private = context.layout, context.private
    socket = layout.redis_socket
    if context.target == KUBERNETES:
        # Without a password Redis answers only loopback unless told; the NetworkPolicy guards it.
        command = ("redis-server", *REDIS_EPHEMERAL, "--protected-mode", "no")
        return Start(Service.REDIS.value, command, Health(HealthKind.LISTENER, "", REDIS_PORT))
    # On several hosts, TLS only on the private address, from clients with the fleet's certificates.
    network = ["--port", "0"]
    if private:
        network += ["--bind", private, "--tls-port", str(context.spec.redis.port), *_redis_tls(layout)]
    if context.native is not None:
        native = context.native
        shared = [f"{native.run_dir}/{native.redis_config}", *network] if private else network
        program = native.programs["redis-server"]
        arguments = (*shared, *_redis_socket(socket, "700"), "--dir", native.run_dir)
        files = {}
        if private and context.secrets:  # readable by the fleet's account only, like the other secrets
            files[native.redis_config] = f"requirepass {context.secrets[Secret.REDIS_PASSWORD]}\n"
        return Start(Service.REDIS.value, (program, *arguments), Health(HealthKind.REDIS, socket), socket, files=files)
    options = _redis_socket(socket, "666")
    if not private:
        health = Health(HealthKind.REDIS, socket)
        return Start(Service.REDIS.value, ("redis-server", *network, *options), health)
    # Its password read and its TLS files copied as root (the secrets are their owner's only), then the
    # image's entrypoint drops to its own account; "-" (the settings on standard input) comes last,
    # after the options that entrypoint adds.
    password = f"$$(cat {COMPOSE_SECRETS_SOURCE}/{Secret.REDIS_PASSWORD})"
    copy = compose_tls_copy(HOST_TLS, REDIS_IMAGE_ACCOUNT)
    script = f'{copy} && exec docker-entrypoint.sh redis-server "$$@" - <<EOF\nrequirepass {password}\nEOF\n'
    entrypoint = ("sh", "-c", script, "redis-server")
    health = Health(HealthKind.REDIS, socket, password=password)
    return Start(Service.REDIS.value, (*network, *options), health, entrypoint=entrypoint)


def _redis_tls(layout: Layout) -> list[str]:
    return [
        *("--tls-cert-file", layout.secret(Installed.HOST.certificate)),
        *("--tls-key-file", layout.secret(Installed.HOST.key)),
        *("--tls-ca-cert-file", layout.secret(Installed.TRUST.certificate)),
        *("--tls-auth-clients", "yes", "--tls-protocols", "TLSv1.3"),
    ]


def _redis_socket(socket: str, mode: str) -> list[str]:
    return ["--unixsocket", socket, "--unixsocketperm", mode, *REDIS_EPHEMERAL]


# -- coturn -------------------------------------------------------------------------------------

#: coturn's settings file, in the secrets directory: the shared secret, which no command line shows.
TURN_CONFIG = "turnserver.conf"
#: The account coturn's image runs as: started as root to read the secret, coturn drops to it itself.
TURN_IMAGE_ACCOUNT = ("nobody", "nogroup")
#: Peers coturn never relays to, so that a TURN account reaches no private or special network
#: (Synapse's recommended coturn settings); the TURN server's own public address stays allowed, for
#: calls whose two ends both relay through it.
DENIED_PEERS = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.0.2.0-192.0.2.255",
    "192.88.99.0-192.88.99.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "240.0.0.0-255.255.255.255",
    "::1",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "100::-100::ffff:ffff:ffff:ffff",
    "2001::-2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
    "2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)


def turn_settings(secret: str) -> str:
    """coturn's settings file: the TURN REST API's credentials, checked with ``secret``."""
    return f"use-auth-secret\nstatic-auth-secret={secret}\n"


def turn_options(spec: FleetSpec, bridged: bool) -> list[str]:
    """coturn's options besides its secret: where it listens and relays (in a container on a
    bridged network, on the container's addresses, which it maps to the public one), its realm,
    and what it refuses: TLS (no certificate), its admin console, TCP relays (calls' media is UDP)
    and the peers of :data:`DENIED_PEERS`, except loopback ones when clients reach it on loopback."""
    turn, listen, public = spec.turn, listen_address(spec), public_address(spec)
    specific = not bridged and not ipaddress.ip_address(listen).is_unspecified
    options = [f"--listening-port={turn.port}"]
    if specific:
        options.append(f"--listening-ip={listen}")
    if not specific or public != listen:
        options.append(f"--external-ip={public}")
    options += [
        f"--min-port={turn.relay_min_port}",
        f"--max-port={turn.relay_max_port}",
        f"--realm={realm(spec)}",
        *("--fingerprint", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--no-multicast-peers"),
        *(f"--denied-peer-ip={peers}" for peers in DENIED_PEERS),
        f"--allowed-peer-ip={public}",
        *("--user-quota=12", "--total-quota=1200"),
        *("--log-file=stdout", "--simple-log", "--pidfile="),  # logs to its supervisor; no pid file
    ]
    if ipaddress.ip_address(public).is_loopback:
        options.append("--allow-loopback-peers")
    return options


def turn(context: Context) -> Start:
    """coturn: natively as the fleet's account, its settings file (with the secret) in the run
    directory's secrets; in a container started as root, which writes that file from the secret into
    the container's memory, and coturn drops to the image's account once it has read it."""
    spec, layout = context.spec, context.layout
    port, listen = spec.turn.port, listen_address(spec)
    settings = layout.secret(TURN_CONFIG)
    if context.native is not None:
        target = "127.0.0.1" if ipaddress.ip_address(listen).is_unspecified else listen
        native = context.native
        command = (native.programs["turnserver"], "-c", settings, *turn_options(spec, bridged=False))
        # Its user database (unused: the shared secret is the only credential) where the account can write.
        command += (f"--userdb={layout.data_dir}/turndb",)
        files = {}
        if context.secrets:
            files[f"{SECRETS_DIR}/{TURN_CONFIG}"] = turn_settings(context.secrets[Secret.TURN_SHARED_SECRET])
        health = Health(HealthKind.LISTENER, target, port)
        return Start(Service.TURN.value, command, health, host_port(listen, port), files=files)
    bridged = not context.host
    target = "127.0.0.1" if bridged or ipaddress.ip_address(listen).is_unspecified else listen
    user, group = TURN_IMAGE_ACCOUNT
    # printf is the shell's own: the secret is on no command line. $$ is compose's escape for $.
    template = turn_settings("%s").replace("\n", "\\n")
    secret = f"{COMPOSE_SECRETS_SOURCE}/{Secret.TURN_SHARED_SECRET}"
    script = (
        f"umask 077 && printf '{template}' \"$$(cat {secret})\" > {settings} && "
        f'exec turnserver -c {settings} --proc-user={user} --proc-group={group} "$$@"'
    )
    health = Health(HealthKind.STUN, target, port)
    return Start(
        Service.TURN.value, tuple(turn_options(spec, bridged)), health, entrypoint=("sh", "-c", script, "turn")
    )


# -- Synapse ------------------------------------------------------------------------------------


def synapse_arguments(worker: Worker, layout: Layout) -> tuple[str, ...]:
    """``python -m`` arguments: main's module on the shared config; a worker's on the shared config
    and its own."""
    if worker.role is Role.MAIN:
        return (MAIN_MODULE, "--config-path", layout.shared_config)
    config = ("--config-path", layout.shared_config, "--config-path", layout.worker_config(worker.name))
    return (WORKER_MODULE, *config)


def synapse_sockets(worker: Worker, layout: Layout) -> tuple[str, ...]:
    """Every socket a Synapse process listens on, the inbound one (where /health answers) first."""
    sockets = (layout.inbound_socket(worker.name),)
    return (*sockets, layout.replication_socket(worker.name)) if worker.in_instance_map else sockets


def compose_service(worker: Worker) -> str:
    """A Synapse process's docker compose service."""
    return MAIN_SERVICE if worker.role is Role.MAIN else worker.name


def synapse(context: Context, worker: Worker, owner: bool = False) -> Start:
    """A Synapse process. In a container, its entrypoint removes what a crash left of its sockets;
    the ``owner`` (see :func:`synapse_entrypoint`) gives the data volume to Synapse's account."""
    layout = context.layout
    arguments = synapse_arguments(worker, layout)
    if context.target == KUBERNETES:
        return Start(worker.name, ("python", "-m", *arguments), Health(HealthKind.HTTP, ""))
    socket = layout.inbound_socket(worker.name)
    health = Health(HealthKind.HTTP, socket)
    if context.native is not None:
        environment = {"PYTHONUNBUFFERED": "1"}
        command = (context.native.programs["python"], "-m", *arguments)
        return Start(worker.name, command, health, socket, environment=environment)
    sockets = synapse_sockets(worker, layout)
    secrets = synapse_secrets(context.spec)
    entrypoint = synapse_entrypoint(sockets, compose_service(worker), owner, synapse_tls(context), secrets)
    return Start(compose_service(worker), arguments, health, socket, entrypoint=entrypoint)


def synapse_tls(context: Context) -> tuple[str, ...]:
    """The TLS files Synapse's processes read on the context's host: the database client's, when the
    fleet's PostgreSQL runs on another host (see :func:`synfleet.render.synapse.database_config`)."""
    spec = context.spec
    if not context.host or not spec.database.local or spec.fleet.host_of(Service.POSTGRES) == context.host:
        return ()
    return (Installed.TRUST.certificate, Installed.DATABASE.certificate, Installed.DATABASE.key)


#: The account Synapse's official image runs as.
SYNAPSE_IMAGE_UID = SYNAPSE_IMAGE_GID = 991


def synapse_entrypoint(
    sockets: tuple[str, ...],
    service: str,
    owner: bool,
    tls: tuple[str, ...] = (),
    secrets: tuple[str, ...] = SYNAPSE_FILES,
) -> tuple[str, ...]:
    """A Synapse container's entrypoint, started as root: ``python -m <command>`` as the image's
    account (with the image's gosu, as the image's own entrypoint does), after

    - removing its sockets and their lock files. Twisted keeps a lock beside each socket naming
      the listener's pid; a container restarted after a crash runs Synapse with the same pid, finds
      the lock "held" and cannot listen. Only this service makes these sockets, so what is left of
      them is stale;
    - copying the Synapse config and the ``secrets`` (the fleet's of :data:`SYNAPSE_FILES`), which
      on the host are readable by their owner only (mounted read-only at
      :data:`COMPOSE_CONFIG_SOURCE` and :data:`COMPOSE_SECRETS_SOURCE`), into the container's memory
      for the image's account alone: no account of the host is given them, whoever it is there;
      likewise the ``tls`` files (see :func:`compose_tls_copy`);
    - for the ``owner`` (main; on a host without main, that host's first Synapse process), giving
      Synapse's data volume to the image's account. That is not a one-shot service before it:
      podman-compose makes a dependency of every ``depends_on``, and podman restarts no container
      whose dependency has exited."""
    user = f"{SYNAPSE_IMAGE_UID}:{SYNAPSE_IMAGE_GID}"
    private = f"{COMPOSE.config_dir} {COMPOSE.secrets_dir}"
    steps = [
        f"rm -f {' '.join(f'{path} {path}.lock' for path in sockets)}",
        f"chmod 700 {private}",
        f"cp -R {COMPOSE_CONFIG_SOURCE}/. {COMPOSE.config_dir}",
        f"cp {' '.join(f'{COMPOSE_SECRETS_SOURCE}/{name}' for name in secrets)} {COMPOSE.secrets_dir}/",
        f"chown -R {user} {private}",
    ]
    if tls:
        steps.append(compose_tls_copy(tls, user))
    if owner:
        steps.append(f"chown {user} {COMPOSE.data_dir}")
    run = f'exec gosu {user} python -m "$$@"'  # $$ is compose's escape for a literal $
    return ("sh", "-c", " && ".join([*steps, run]), service)


#: The accounts PostgreSQL's and Redis's images run their programs as (by name: uids differ between
#: the images' variants).
POSTGRES_IMAGE_ACCOUNT = "postgres:postgres"
REDIS_IMAGE_ACCOUNT = "redis:redis"


def compose_tls_copy(names: tuple[str, ...], account: str) -> str:
    """A shell step, run as root in a container of a host of a fleet on several hosts, that copies
    ``names`` (relative to the secrets directory, e.g. ``tls/host.key``) from the project's
    ``secrets/tls`` (mounted read-only at :data:`COMPOSE_TLS_SOURCE`, their owner's only) into the
    container's memory at the secrets directory, owned by ``account`` (``user:group``) with mode
    0600: PostgreSQL and libpq refuse a key that others may read."""
    user, group = account.split(":")
    owned = f"-o {user} -g {group}"
    folder = COMPOSE.secret(TLS_DIR)
    sources = " ".join(f"{COMPOSE_TLS_SOURCE}/{PurePosixPath(name).name}" for name in names)
    return f"install -d -m 700 {owned} {folder} && install -m 600 {owned} {sources} {folder}/"


# -- nginx --------------------------------------------------------------------------------------


def nginx(context: Context, link: str = "") -> Start:
    """nginx: ready when it listens on the front's HTTP port, or on a host that only carries links
    between hosts, on its first (``link``: address:port, or a relay's UNIX socket)."""
    spec = context.spec
    listen = spec.listen
    if context.target == KUBERNETES:
        return Start(Service.NGINX.value, (), Health(HealthKind.LISTENER, "", COMPOSE_HTTP_PORT))
    # A host that only carries links between hosts: its first link, on this host's private address,
    # or its first relay's socket.
    first = None
    if link.startswith("/"):
        first = Health(HealthKind.LISTENER, link)
    elif link:
        first = Health(HealthKind.LISTENER, context.private, int(link.rsplit(":", 1)[1]))
    if context.native is not None:
        health = first or Health(HealthKind.LISTENER, listen.bind, listen.http_port)
        socket = link or f"{listen.bind}:{listen.http_port}"
        return Start(Service.NGINX.value, context.native.nginx_command, health, socket, stop_signal="QUIT")
    if first:
        return Start(Service.NGINX.value, (), first)
    scheme_port = COMPOSE_HTTPS_PORT if spec.tls.enabled else COMPOSE_HTTP_PORT
    if not context.host:
        return Start(Service.NGINX.value, (), Health(HealthKind.HTTP, "127.0.0.1", scheme_port))
    bind = listen.bind
    address = "127.0.0.1" if bind in ("0.0.0.0", "::") else publish_address(bind)
    port = listen.https_port if spec.tls.enabled else listen.http_port
    return Start(Service.NGINX.value, (), Health(HealthKind.HTTP, address, port))


def publish_address(bind: str) -> str:
    """listen.bind as a compose port mapping takes it (IPv6 in brackets)."""
    return f"[{bind}]" if ":" in bind else bind


# -- each target's way of asking a health check ---------------------------------------------------


def compose_test(health: Health, tls: bool = False) -> list[str]:
    """A compose healthcheck's ``test``, with the tools each image has (the slim nginx image has
    wget, not curl)."""
    match health.kind:
        case HealthKind.HTTP if not health.port:
            return ["CMD", "curl", "-fsS", "--unix-socket", health.target, f"http://localhost{HEALTH_PATH}"]
        case HealthKind.HTTP:
            scheme = "https" if tls else "http"
            insecure = ["--no-check-certificate"] if tls else []
            url = f"{scheme}://{health.target}:{health.port}{HEALTH_PATH}"
            return ["CMD", "wget", "-q", "-O", "/dev/null", *insecure, url]
        case HealthKind.POSTGRES:
            return ["CMD", *_pg_isready(health)]
        case HealthKind.REDIS if health.password:
            return ["CMD-SHELL", f'REDISCLI_AUTH="{health.password}" redis-cli -s {health.target} ping | grep -q PONG']
        case HealthKind.REDIS:
            return ["CMD", "redis-cli", "-s", health.target, "ping"]
        case HealthKind.LISTENER if not health.port:
            # A relay's socket, made by this nginx when it starts (no tool of the image connects to one).
            return ["CMD-SHELL", f"test -S {health.target}"]
        case HealthKind.STUN:  # coturn's own STUN client, in its image
            return ["CMD", "turnutils_stunclient", "-p", str(health.port), health.target]
        case HealthKind.LISTENER:
            # Any answer of a link (which refuses this host's own requests) shows that nginx serves.
            url = f"http://{host_port(health.target, health.port)}/"
            return ["CMD-SHELL", f"wget -S -O /dev/null {url} 2>&1 | grep -q 'HTTP/1.1 '"]
        case HealthKind.RUNNING:
            return ["CMD", "true"]


def _pg_isready(health: Health) -> list[str]:
    """PostgreSQL's own readiness check."""
    return ["pg_isready", "-h", health.target, "-U", health.user, "-d", health.database]


def kubernetes_probes(health: Health, **probes: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """A pod's probes, by name (``readinessProbe=...``) with their timing: GET /health on the "http"
    port, a TCP connection to a port, or a command (one list, which the probes share)."""
    command = _pg_isready(health) if health.kind is HealthKind.POSTGRES else []
    found = {}
    for name, timing in probes.items():
        action: dict[str, Any]
        match health.kind:
            case HealthKind.HTTP:
                action = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
            case HealthKind.POSTGRES:
                action = {"exec": {"command": command}}
            case _:
                action = {"tcpSocket": {"port": health.port}}
        found[name] = {**action, "timeoutSeconds": 5, **timing}
    return found


def service_table(context: Context, front: bool, link: str = "") -> dict[str, Start]:
    """The services the fleet runs itself on the context's host (every one on one host), by process
    name, in start order: infrastructure, main (it migrates the schema), the workers, nginx when
    it is the ``front`` or carries links between hosts (``link``, its first), and coturn."""
    fleet = context.spec.fleet
    here = set(fleet.processes_on(context.host))
    rows = {}
    for service, row in ((Service.POSTGRES, postgres), (Service.REDIS, redis)):
        if service in here:
            rows[service.value] = row(context)
    workers = [worker for worker in fleet.workers if worker.name in here]
    for worker in workers:
        rows[worker.name] = synapse(context, worker, owner=worker is workers[0])
    if front or link:
        rows[Service.NGINX.value] = nginx(context, "" if front else link)
    if Service.TURN in here:
        rows[Service.TURN.value] = turn(context)
    return rows
