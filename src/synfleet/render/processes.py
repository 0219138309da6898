"""The process plan: which Synapse processes run, how each is started, where its health is.

docker compose and the native supervisor start the same processes from this plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from synfleet.layout import Layout
from synfleet.model.fleet import Fleet, Role

#: The modules Synapse processes run: main, and every worker (as ``worker_app``).
MAIN_MODULE = "synapse.app.homeserver"
WORKER_MODULE = "synapse.app.generic_worker"
#: main's docker compose service keeps the seed's name.
MAIN_SERVICE = "synapse"


@dataclass(frozen=True)
class SynapseProcess:
    name: str
    role: Role
    module: str
    config_paths: tuple[str, ...]
    sockets: tuple[str, ...]  # every socket it listens on, the inbound one first

    @property
    def socket(self) -> str:
        """The inbound socket: /health answers here."""
        return self.sockets[0]

    @property
    def service(self) -> str:
        """The docker compose service name."""
        return MAIN_SERVICE if self.role is Role.MAIN else self.name

    @property
    def arguments(self) -> list[str]:
        """``python -m`` arguments."""
        args = [self.module]
        for path in self.config_paths:
            args += ["--config-path", path]
        return args


def synapse_processes(fleet: Fleet, layout: Layout) -> list[SynapseProcess]:
    """Main first (it migrates the schema), then every worker."""
    processes = []
    paths: tuple[str, ...]
    for worker in fleet.workers:
        if worker.role is Role.MAIN:
            module, paths = MAIN_MODULE, (layout.shared_config,)
        else:
            module, paths = WORKER_MODULE, (layout.shared_config, layout.worker_config(worker.name))
        sockets: tuple[str, ...] = (layout.inbound_socket(worker.name),)
        if worker.in_instance_map:
            sockets += (layout.replication_socket(worker.name),)
        processes.append(SynapseProcess(worker.name, worker.role, module, paths, sockets))
    return processes
