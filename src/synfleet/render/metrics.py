"""Monitoring files, when ``[metrics]`` is on: the Prometheus scrape config, its alert rules and the
dashboard, and for compose's ``metrics`` profile Grafana's provisioning (the Prometheus data source and the
dashboard folder)."""

from __future__ import annotations

import json
from collections.abc import Callable

import yaml

from synfleet.layout import METRICS_DIR
from synfleet.metrics.alerts import rule_groups
from synfleet.metrics.dashboard import DATASOURCE_UID, dashboard
from synfleet.metrics.targets import RULES_FILE, Target, scrape_config
from synfleet.model.schema import FleetSpec

PROMETHEUS_CONFIG = f"{METRICS_DIR}/prometheus.yml"
PROMETHEUS_RULES = f"{METRICS_DIR}/{RULES_FILE}"
#: Where the Prometheus container reads its configuration; the rules file is beside it.
PROMETHEUS_CONFIG_DIR = "/etc/prometheus"
DASHBOARD_FILE = f"{METRICS_DIR}/grafana/dashboards/synfleet.json"
GRAFANA_PROVISIONING = f"{METRICS_DIR}/grafana/provisioning"
#: Where the Grafana container reads the dashboards and provisioning it is given.
GRAFANA_DASHBOARDS_DIR = "/etc/grafana/dashboards"
GRAFANA_PROVISIONING_DIR = "/etc/grafana/provisioning"
#: Prometheus's port on the compose network.
PROMETHEUS_PORT = 9090


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def metrics_files(
    spec: FleetSpec, host: Callable[[Target], str | None], grafana: bool, nginx: str | None = None
) -> dict[str, str]:
    """The scrape config (each target at ``host(target)``, None: not scraped; nginx at ``nginx``, when
    given), the alert rules it loads, the dashboard, and Grafana's provisioning when ``grafana``;
    nothing when metrics are off."""
    if not spec.metrics.enabled:
        return {}
    config = scrape_config(spec, host, nginx, rules=True)
    rules = {"groups": rule_groups(spec, nginx=nginx is not None)}
    files = {
        PROMETHEUS_CONFIG: "# Rendered by synfleet from fleet.toml.\n" + _yaml(config),
        PROMETHEUS_RULES: "# Rendered by synfleet from fleet.toml: see the README's runbook.\n" + _yaml(rules),
        DASHBOARD_FILE: json.dumps(dashboard(spec.server_name), indent=2) + "\n",
    }
    if grafana:
        datasource = {
            "apiVersion": 1,
            "datasources": [
                {
                    "name": "Prometheus",
                    "uid": DATASOURCE_UID,
                    "type": "prometheus",
                    "access": "proxy",
                    "url": f"http://prometheus:{PROMETHEUS_PORT}",
                    "isDefault": True,
                    "editable": False,
                }
            ],
        }
        provider = {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "synfleet",
                    "type": "file",
                    "disableDeletion": True,
                    "allowUiUpdates": False,
                    "options": {"path": GRAFANA_DASHBOARDS_DIR},
                }
            ],
        }
        files[f"{GRAFANA_PROVISIONING}/datasources/prometheus.yml"] = _yaml(datasource)
        files[f"{GRAFANA_PROVISIONING}/dashboards/synfleet.yml"] = _yaml(provider)
    return files
