"""Where things live, as the processes see them. Only the layout differs between targets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Paths inside the processes' view of the world.

    ``config_dir`` holds homeserver.yaml, ``workers/`` and ``log/``; ``data_dir`` Synapse's media
    store; ``secrets_dir`` the generated secrets; ``socket_dir`` every UNIX socket (Synapse, Redis,
    PostgreSQL); ``log_dir`` Synapse's log files (None: log to the console, as containers do).
    """

    name: str
    config_dir: str
    data_dir: str
    secrets_dir: str
    socket_dir: str
    log_dir: str | None

    def inbound_socket(self, worker: str) -> str:
        return f"{self.socket_dir}/synapse_inbound_{worker}.sock"

    def replication_socket(self, worker: str) -> str:
        return f"{self.socket_dir}/synapse_replication_{worker}.sock"

    @property
    def redis_socket(self) -> str:
        return f"{self.socket_dir}/redis.sock"

    def secret(self, name: str) -> str:
        return f"{self.secrets_dir}/{name}"


#: Inside docker compose containers.
COMPOSE = Layout(
    name="compose",
    config_dir="/config",
    data_dir="/data",
    secrets_dir="/secrets",
    socket_dir="/sockets",
    log_dir=None,
)


def native_layout(run_dir: str, secrets_dir: str) -> Layout:
    """On this machine, everything under ``run_dir`` (``synfleet up``)."""
    return Layout(
        name="native",
        config_dir=f"{run_dir}/synapse",
        data_dir=f"{run_dir}/data",
        secrets_dir=secrets_dir,
        socket_dir=f"{run_dir}/sockets",
        log_dir=f"{run_dir}/logs",
    )
