"""Facts about Synapse that every layer shares: the programs its processes run and the resources
their listeners serve. It imports nothing of synfleet, so the fork start can read it before
Synapse is imported."""

from __future__ import annotations

from enum import StrEnum

#: The modules Synapse's processes run: main, and every worker (as ``worker_app``).
MAIN_MODULE = "synapse.app.homeserver"
WORKER_MODULE = "synapse.app.generic_worker"
APP_MODULES = (MAIN_MODULE, WORKER_MODULE)


class Resource(StrEnum):
    """What an HTTP listener of Synapse serves (its ``resources: [{names: [...]}]``)."""

    CLIENT = "client"
    FEDERATION = "federation"
    MEDIA = "media"
    REPLICATION = "replication"
    HEALTH = "health"
    KEYS = "keys"
    METRICS = "metrics"


#: Main in Synapse's lists of instances (``stream_writers``, ``run_background_tasks_on``, ...):
#: Synapse calls the main process ``master``, and renames its ``instance_map`` entry ``main`` so.
MAIN_INSTANCE = "master"


def instance_name(process: str) -> str:
    """A process (``main`` or a worker's name) as Synapse's lists of instances name it."""
    return MAIN_INSTANCE if process == "main" else process


def process_name(instance: str) -> str:
    """The process an entry of Synapse's lists of instances names (``master``: main)."""
    return "main" if instance == MAIN_INSTANCE else instance
