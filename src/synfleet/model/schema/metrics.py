"""Prometheus metrics of the fleet's processes."""

from __future__ import annotations

from synfleet.model.schema.values import Port, Section


class Metrics(Section):
    """Prometheus metrics: each Synapse process listens on <base_port + its index> (127.0.0.1 in the
    native run, the service network in compose) and nginx reports its status on ``nginx_status_port``;
    compose's ``metrics`` profile adds Prometheus and Grafana, Grafana published on ``grafana_port``."""

    enabled: bool = False
    base_port: Port = 19100
    nginx_status_port: Port = 19099
    grafana_port: Port = 3000

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
