"""Where things live, as the processes see them: every socket, config, data, log and secret path.

Each name is decided here once. Only the layout differs between targets (docker compose, the
native run, tests); templates and routing are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from synfleet.model.ports import CLIENT_PORT, FEDERATION_PORT

#: Where Synapse's configuration goes in a rendered tree (``D/deploy``, ``D/run``).
SYNAPSE_DIR = "synapse"
#: Where nginx's configuration and logs go in the compose tree (``D/deploy``).
DEPLOY_NGINX_CONFIG = "nginx/config"
DEPLOY_NGINX_LOGS = "nginx/logs"
#: The PostgreSQL container's environment file (its password among it), in a compose project.
DEPLOY_POSTGRES_ENV = "env/postgres.env"
#: The configuration every Synapse process loads first, relative to the config directory.
SHARED_CONFIG = "homeserver.yaml"
#: The CA bundle Synapse trusts for outbound federation (fleet.toml federation.trusted_ca), relative
#: to the config directory.
FEDERATION_CA = "federation_ca.pem"
#: Each worker's own configuration, relative to the config directory.
WORKER_CONFIG_DIR = "workers"
LOG_CONFIG_DIR = "log"
#: The generated secrets: ``D/secrets``, and the native run's copy ``D/run/secrets``.
SECRETS_DIR = "secrets"
#: The Prometheus scrape config and Grafana dashboard (``D/deploy/metrics``, ``D/run/metrics``).
METRICS_DIR = "metrics"
#: The native run's logs: supervisord's and nginx's (written by root when run as root), and in it
#: the directory where the fleet's own processes (Synapse, PostgreSQL, Redis) write theirs.
RUN_LOGS = "logs"
FLEET_LOGS = "fleet"
#: nginx's prefix in the native run directory, and in it the directories of its relays to other
#: hosts: one the fleet's account reaches, one only nginx's workers reach.
NGINX_DIR = "nginx"
RELAY_DIR = "links"
INBOUND_RELAY_DIR = "inbound"
#: Synapse's media store, in the data directory.
MEDIA_STORE = "media_store"
#: The start of every inbound socket's name (and of every nginx upstream's).
INBOUND_PREFIX = "synapse_inbound_"


def worker_config_file(worker: str) -> str:
    return f"{WORKER_CONFIG_DIR}/{worker}.yaml"


def log_config_file(worker: str) -> str:
    return f"{LOG_CONFIG_DIR}/{worker}.log.yaml"


def inbound_socket(socket_dir: str, worker: str) -> str:
    """The socket on which a Synapse process takes requests from nginx (and answers /health)."""
    return f"{socket_dir}/{INBOUND_PREFIX}{worker}.sock"


def worker_of_server(server: str) -> str:
    """A readable name for an nginx upstream ``server``: the worker of an inbound socket, another
    socket's stem, or host:port."""
    if server.startswith("unix:"):
        stem = PurePosixPath(server[5:]).name.removesuffix(".sock")
        return stem.removeprefix(INBOUND_PREFIX)
    return server


@dataclass(frozen=True)
class TcpLinks:
    """Synapse's processes linked by TCP instead of UNIX sockets (one process per pod): each listens
    on ``inbound_port`` (requests from nginx, /health) and, if others call it, on
    ``replication_port``, at ``bind``; the others reach it by its name in ``hosts``."""

    hosts: Mapping[str, str] = field(hash=False)
    inbound_port: int
    replication_port: int
    bind: tuple[str, ...] = ("0.0.0.0",)


@dataclass(frozen=True)
class Layout:
    """Paths inside the processes' view of the world.

    ``config_dir`` holds homeserver.yaml, ``workers/`` and ``log/``; ``data_dir`` Synapse's media
    store; ``secrets_dir`` the generated secrets; ``socket_dir`` every UNIX socket (Synapse, Redis,
    PostgreSQL); ``log_dir`` Synapse's log files (None: log to the console, as containers do);
    ``nginx_log_dir`` nginx's access and error logs; ``tls_certificate`` and ``tls_key`` where nginx
    reads the TLS files (empty: the fleet file's own paths); ``inbound_socket_mode`` the mode of the
    sockets nginx connects to. With ``tcp``, Synapse's processes listen and reach each other on TCP
    instead of sockets (``socket_dir`` is then unused); without ``database_password_inline`` the
    database password is not written into the config (libpq takes it from ``PGPASSWORD``).
    """

    name: str
    config_dir: str
    data_dir: str
    secrets_dir: str
    socket_dir: str
    log_dir: str | None
    nginx_log_dir: str
    tls_certificate: str = ""
    tls_key: str = ""
    inbound_socket_mode: int = 0o660
    #: Replication sockets: Synapse's own; on a host of a fleet on several, nginx's too (its gateway
    #: carries the other hosts' replication requests).
    replication_socket_mode: int = 0o600
    metrics_bind: str = "127.0.0.1"  # where Synapse's metrics listeners bind (fleet.toml [metrics])
    tcp: TcpLinks | None = None
    database_password_inline: bool = True
    #: On a fleet on several hosts, where nginx's relays to the other hosts listen: those Synapse's
    #: processes call (replication, Redis), and those only nginx calls (inbound requests from the front).
    relay_dir: str = ""
    inbound_relay_dir: str = ""

    def inbound_socket(self, worker: str) -> str:
        return inbound_socket(self.socket_dir, worker)

    def replication_socket(self, worker: str) -> str:
        return f"{self.socket_dir}/synapse_replication_{worker}.sock"

    @property
    def media_store(self) -> str:
        return f"{self.data_dir}/{MEDIA_STORE}"

    @property
    def redis_socket(self) -> str:
        return f"{self.socket_dir}/redis.sock"

    def replication_relay(self, worker: str) -> str:
        """Where this host's processes reach ``worker``'s replication listener on another host."""
        return f"{self.relay_dir}/replication_{worker}.sock"

    @property
    def redis_relay(self) -> str:
        """Where this host's processes reach Redis on another host."""
        return f"{self.relay_dir}/redis.sock"

    def inbound_relay(self, worker: str) -> str:
        """Where the front's nginx reaches ``worker``'s inbound listener on another host."""
        return f"{self.inbound_relay_dir}/{INBOUND_PREFIX}{worker}.sock"

    def secret(self, name: str) -> str:
        return f"{self.secrets_dir}/{name}"

    @property
    def shared_config(self) -> str:
        return f"{self.config_dir}/{SHARED_CONFIG}"

    def worker_config(self, worker: str) -> str:
        return f"{self.config_dir}/{worker_config_file(worker)}"

    def log_config(self, worker: str) -> str:
        return f"{self.config_dir}/{log_config_file(worker)}"

    def log_file(self, process: str) -> str:
        """Where a process writes its log when the layout has a log directory."""
        return f"{self.log_dir}/{process}.log"


#: Inside docker compose containers.
COMPOSE = Layout(
    name="compose",
    config_dir="/config",
    data_dir="/data",
    secrets_dir="/secrets",
    socket_dir="/sockets",
    log_dir=None,
    nginx_log_dir="/var/log/nginx",
    tls_certificate="/etc/ssl/synfleet/fullchain.pem",
    tls_key="/etc/ssl/synfleet/privkey.pem",
    # nginx's workers run as another user than Synapse; the sockets volume is mounted by the fleet's
    # containers only.
    inbound_socket_mode=0o666,
    # Prometheus scrapes each container over the compose network; nothing publishes these ports.
    metrics_bind="0.0.0.0",
)
#: Where nginx keeps request and response bodies that do not fit in memory: a tmpfs of its container.
COMPOSE_NGINX_TEMP_DIR = "/var/cache/nginx"
#: Inside the docker compose containers of one host of a fleet on several hosts: every container is
#: on the host's network (nginx, PostgreSQL and Redis listen on its private address), so Synapse's
#: metrics listeners bind the loopback only; nginx's gateways connect to replication sockets too.
COMPOSE_HOST = replace(
    COMPOSE,
    name="compose-host",
    replication_socket_mode=0o666,
    metrics_bind="127.0.0.1",
    relay_dir=COMPOSE.socket_dir,
    # The front's relays only nginx calls: in its own memory, out of Synapse's containers' reach.
    inbound_relay_dir=COMPOSE_NGINX_TEMP_DIR,
)
#: The ports nginx listens on inside its container; compose publishes listen.http_port and
#: listen.https_port on them.
COMPOSE_HTTP_PORT = CLIENT_PORT
COMPOSE_HTTPS_PORT = FEDERATION_PORT
#: Where the nginx container reads its configuration.
COMPOSE_NGINX_CONFIG_DIR = "/etc/nginx"
#: Where a Synapse container finds the rendered Synapse config and the secrets as they are on the
#: host: mounted read-only, and readable by their owner only. Its entrypoint, as root, copies them
#: into the container's memory at the layout's config and secrets directories, for Synapse's account.
COMPOSE_CONFIG_SOURCE = "/synfleet/config"
COMPOSE_SECRETS_SOURCE = "/synfleet/secrets"
#: Likewise, on a host of a fleet on several hosts, the files of its links to the other hosts (the
#: project's ``secrets/tls``): each container that reads some copies them, as root, into its memory
#: at the layout's secrets directory for the account its program runs as.
COMPOSE_TLS_SOURCE = "/synfleet/tls"


#: The layout's name in Kubernetes' pods.
KUBERNETES = "kubernetes"
#: Every Synapse process's inbound HTTP (nginx, /health) and replication ports in its pod.
POD_INBOUND_PORT = 8080
POD_REPLICATION_PORT = 9093


def kubernetes_layout(services: Mapping[str, str]) -> Layout:
    """In Kubernetes' pods: the compose paths, without sockets; processes linked by TCP, each
    reached at its own Service (``services``, by worker name); the database password from the
    environment, never in a ConfigMap."""
    return Layout(
        name=KUBERNETES,
        config_dir=COMPOSE.config_dir,
        data_dir=COMPOSE.data_dir,
        secrets_dir=COMPOSE.secrets_dir,
        socket_dir="",
        log_dir=None,
        nginx_log_dir=COMPOSE.nginx_log_dir,
        tls_certificate=COMPOSE.tls_certificate,
        tls_key=COMPOSE.tls_key,
        metrics_bind="0.0.0.0",
        tcp=TcpLinks(services, POD_INBOUND_PORT, POD_REPLICATION_PORT),
        database_password_inline=False,
    )


def native_layout(run_dir: str, gateway: bool = False) -> Layout:
    """On this machine, everything under ``run_dir`` (``synfleet up``). The sockets directory is
    reachable only by the fleet's accounts; nginx's workers connect by group (with ``gateway``, to
    the replication sockets too)."""
    return Layout(
        replication_socket_mode=0o660 if gateway else 0o600,
        name="native",
        config_dir=f"{run_dir}/{SYNAPSE_DIR}",
        data_dir=f"{run_dir}/data",
        secrets_dir=f"{run_dir}/{SECRETS_DIR}",
        socket_dir=f"{run_dir}/sockets",
        log_dir=f"{run_dir}/{RUN_LOGS}/{FLEET_LOGS}",
        nginx_log_dir=f"{run_dir}/{RUN_LOGS}",
        relay_dir=f"{run_dir}/{NGINX_DIR}/{RELAY_DIR}",
        inbound_relay_dir=f"{run_dir}/{NGINX_DIR}/{INBOUND_RELAY_DIR}",
    )
