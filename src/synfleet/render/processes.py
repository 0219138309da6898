"""The process plan: which Synapse processes run, how each is started, where its health is.

docker compose and the native supervisor start the same processes from this plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from synfleet.render.layout import Layout
from synfleet.spec.fleet import Fleet, Role

MAIN_MODULE = "synapse.app.homeserver"
WORKER_MODULE = "synapse.app.generic_worker"


@dataclass(frozen=True)
class SynapseProcess:
    name: str
    role: Role
    module: str
    config_paths: tuple[str, ...]
    socket: str  # the inbound socket: /health answers here

    @property
    def service(self) -> str:
        """The docker compose service name (main keeps the seed's name, ``synapse``)."""
        return "synapse" if self.role is Role.MAIN else self.name

    @property
    def arguments(self) -> list[str]:
        """``python -m`` arguments."""
        args = [self.module]
        for path in self.config_paths:
            args += ["--config-path", path]
        return args


def synapse_processes(fleet: Fleet, layout: Layout) -> list[SynapseProcess]:
    """Main first (it migrates the schema), then every worker."""
    shared = f"{layout.config_dir}/homeserver.yaml"
    processes = []
    paths: tuple[str, ...]
    for worker in fleet.workers:
        if worker.role is Role.MAIN:
            module, paths = MAIN_MODULE, (shared,)
        else:
            module, paths = WORKER_MODULE, (shared, f"{layout.config_dir}/workers/{worker.name}.yaml")
        processes.append(SynapseProcess(worker.name, worker.role, module, paths, layout.inbound_socket(worker.name)))
    return processes
