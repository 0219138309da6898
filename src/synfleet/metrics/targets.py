"""What Prometheus scrapes: every Synapse process's metrics listener, with the labels Synapse's
dashboards and alerts expect, and the scrape config that names them.

The labels are decided here once: ``job`` is the process's group (``main``, a worker role such as
``rooms``, or a dedicated writer's role), ``index`` its 1-based place in that group, ``instance``
the process's name, and ``server`` the homeserver's name. nginx is scraped as job and instance
``nginx``, from its status port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synfleet.model.schema import FleetSpec

#: Where Synapse serves its metrics.
METRICS_PATH = "/_synapse/metrics"
#: Where nginx serves its own status (stub_status) on the status port.
NGINX_STATUS_PATH = "/nginx_status"
#: Where nginx serves the same counters in Prometheus's text format, on the status port.
NGINX_METRICS_PATH = "/metrics"
#: nginx's ``job`` and ``instance`` label.
NGINX_JOB = "nginx"
#: The rules file Prometheus loads, beside its configuration.
RULES_FILE = "alerts.yml"
#: The scrape interval; Grafana's ``$__rate_interval`` takes four of these.
SCRAPE_INTERVAL = "15s"


@dataclass(frozen=True)
class Target:
    """One Synapse process as Prometheus sees it."""

    process: str
    job: str
    index: int
    port: int

    def labels(self, server_name: str) -> dict[str, str]:
        return {"job": self.job, "index": str(self.index), "instance": self.process, "server": server_name}


def targets(spec: FleetSpec) -> list[Target]:
    """Every Synapse process's metrics target, main first; empty when metrics are off."""
    result: list[Target] = []
    seen: dict[str, int] = {}
    for worker in spec.fleet.workers:
        port = worker.metrics_port
        if port is None:
            continue
        job = spec.fleet.group(worker.name)
        seen[job] = seen.get(job, 0) + 1
        result.append(Target(worker.name, job, seen[job], port))
    return result


def scrape_config(
    spec: FleetSpec, host: Callable[[Target], str | None], nginx: str | None = None, rules: bool = False
) -> dict[str, Any]:
    """A Prometheus configuration scraping every process, each at ``host(target):port`` (127.0.0.1
    natively, the compose service's name in containers); a process whose host is None is left out
    (on a fleet of several hosts, each host's Prometheus scrapes its own processes). With ``nginx``
    (its host), nginx's status port too; with ``rules``, it loads :data:`RULES_FILE` beside it."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        **({"rule_files": [RULES_FILE]} if rules else {}),
        "scrape_configs": [
            {
                "job_name": "synapse",
                "metrics_path": METRICS_PATH,
                "static_configs": [
                    {"targets": [f"{address}:{t.port}"], "labels": t.labels(spec.server_name)}
                    for t in targets(spec)
                    if (address := host(t)) is not None
                ],
            }
        ],
    }
    if nginx is not None:
        labels = {"job": NGINX_JOB, "instance": NGINX_JOB, "server": spec.server_name}
        config["scrape_configs"].append(
            {
                "job_name": NGINX_JOB,
                "metrics_path": NGINX_METRICS_PATH,
                "static_configs": [{"targets": [f"{nginx}:{spec.metrics.nginx_status_port}"], "labels": labels}],
            }
        )
    return config
