"""Prometheus metrics of the fleet's processes."""

from __future__ import annotations

import re

from pydantic import field_validator

from synfleet.model.schema.values import Port, Section

#: A Kubernetes label key (an optional DNS-subdomain prefix and "/", then a name) and label value.
_LABEL_KEY = re.compile(r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def label_selector(text: str) -> dict[str, str]:
    """``key=value[,key=value...]`` as a label selector's ``matchLabels``; ValueError naming the
    text that is no such list (an empty selector would select every namespace)."""
    labels: dict[str, str] = {}
    for pair in text.split(","):
        key, equals, value = pair.strip().partition("=")
        if not equals or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(
                f"must be Kubernetes labels such as kubernetes.io/metadata.name=monitoring (key=value, "
                f"comma-separated), got {text!r}"
            )
        labels[key] = value
    return labels


class Metrics(Section):
    """Prometheus metrics: each Synapse process listens on <base_port + its index> (127.0.0.1 in the
    native run, the service network in compose) and nginx reports its status on ``nginx_status_port``;
    compose's ``metrics`` profile adds Prometheus and Grafana, Grafana published on ``grafana_port``.
    In Kubernetes, the metrics ports take connections only from the namespaces whose labels match
    ``kubernetes_scraper_namespace``."""

    enabled: bool = False
    base_port: Port = 19100
    nginx_status_port: Port = 19099
    grafana_port: Port = 3000
    kubernetes_scraper_namespace: str = "kubernetes.io/metadata.name=monitoring"

    @field_validator("kubernetes_scraper_namespace")
    @classmethod
    def _selector(cls, value: str) -> str:
        label_selector(value)
        return value

    @property
    def scraper_namespace_labels(self) -> dict[str, str]:
        """``kubernetes_scraper_namespace`` as a namespace selector's ``matchLabels``."""
        return label_selector(self.kubernetes_scraper_namespace)

    def check_ports(self, processes: int) -> None:
        """The Synapse processes' metrics ports fit below 65536 and do not take nginx's status port."""
        last = self.base_port + processes - 1
        if last > 65535:
            raise ValueError(
                f"metrics: base_port {self.base_port} leaves no room for {processes} "
                f"processes' ports (the last would be {last}; ports end at 65535)"
            )
        if self.base_port <= self.nginx_status_port <= last:
            raise ValueError(
                f"metrics: nginx_status_port {self.nginx_status_port} is one of the Synapse processes' "
                f"ports ({self.base_port}-{last}); pick one outside that range"
            )
