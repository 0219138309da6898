"""The fleet's alert rules: one typed record per alert, rendered per fleet into a Prometheus rules
file (natively and in compose) and a ``PrometheusRule`` (Kubernetes).

Every expression selects the fleet's own series by the labels :mod:`synfleet.metrics.targets` gives
them: ``server`` (the homeserver), ``job`` (the fleet's Synapse groups, or ``nginx``) and
``instance`` (the process). Only metrics Synapse exports are used; no exporter runs beside the
fleet, so there is no rule on PostgreSQL's own connection count or on a disk's free space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synfleet.metrics.targets import NGINX_JOB, targets
from synfleet.model.schema import FleetSpec

#: The group every rule is in.
GROUP = "synfleet"
#: ``{synapse}`` in an expression: the label matchers of the fleet's Synapse processes; ``{nginx}``: nginx's.
SYNAPSE, NGINX = "{synapse}", "{nginx}"


@dataclass(frozen=True)
class AlertRule:
    """One alert: its PromQL (with :data:`SYNAPSE` / :data:`NGINX` for the fleet's matchers), how long
    it must hold before it fires, its severity, a summary with ``{{ $labels.instance }}`` and the
    like, and the first thing to do (the README's runbook has the same line)."""

    name: str
    expr: str
    duration: str
    severity: str
    summary: str
    runbook: str

    @property
    def nginx(self) -> bool:
        """Whether the rule is about nginx (left out where nginx is not scraped)."""
        return NGINX in self.expr


_RESPONSES = "synapse_http_server_responses_total"
_POSITION = "synapse_storage_stream_current_position{" + SYNAPSE + ', stream_name="events"}'
_DB_THREADS = "{" + SYNAPSE + ', name=~"database.*"}'

RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "SynapseProcessDown",
        "up{" + SYNAPSE + "} == 0",
        "1m",
        "critical",
        "Synapse process {{ $labels.instance }} ({{ $labels.job }}) does not answer its metrics scrape",
        "`synfleet status` and `synfleet logs PROCESS` (in compose `docker compose ps` and `logs`); "
        "natively the supervisor restarts a process that exits, up to 5 quick failures in a row. "
        "While a room worker is down nginx sends its rooms to the next one.",
    ),
    AlertRule(
        "NginxDown",
        "up{" + NGINX + "} == 0",
        "1m",
        "critical",
        "nginx of {{ $labels.server }} does not answer on its status port: no client reaches the fleet",
        "`synfleet logs nginx` (in compose `docker compose logs nginx`); `synfleet check` runs "
        "`nginx -t` on the rendered config.",
    ),
    AlertRule(
        "SynapseReplicationLag",
        "(max by (server) (" + _POSITION + ") - on (server) group_right " + _POSITION + ") > 100",
        "5m",
        "warning",
        "{{ $labels.instance }} is {{ $value }} events behind the furthest process of {{ $labels.server }}",
        "Its log for replication errors (Redis, the replication listener of main or the stream "
        "writer); restart a process that stays behind (`kill PID` from `synfleet status`: the "
        "supervisor starts it again; in compose `docker compose restart SERVICE`).",
    ),
    AlertRule(
        "SynapseHighServerErrorRate",
        "sum by (server, job, instance) (rate(" + _RESPONSES + "{" + SYNAPSE + ', code=~"5.."}[5m])) > 0.05'
        " and sum by (server, job, instance) (rate(" + _RESPONSES + "{" + SYNAPSE + ', code=~"5.."}[5m]))'
        " / sum by (server, job, instance) (rate(" + _RESPONSES + "{" + SYNAPSE + "}[5m])) > 0.05",
        "5m",
        "warning",
        "{{ $labels.instance }} answers more than 5% of its requests with 5xx",
        "Its log for tracebacks; then PostgreSQL and Redis (a 5xx on every worker at once usually is the database).",
    ),
    AlertRule(
        "SynapseFederationQueueGrowing",
        "sum by (server, job, instance) (synapse_federation_transaction_queue_pending_pdus{" + SYNAPSE + "}) > 500",
        "15m",
        "warning",
        "{{ $labels.instance }} holds {{ $value }} PDUs it has not sent to other servers",
        "The sender's log for the destinations that fail; its outbound federation (443 and 8448) "
        "and DNS. Destinations that are down go to catch-up and do not queue.",
    ),
    AlertRule(
        "SynapseDatabasePoolExhausted",
        "max by (server, job, instance, name) (synapse_threadpool_working_threads" + _DB_THREADS + ")"
        " >= 0.9 * max by (server, job, instance, name) (synapse_threadpool_max_threads" + _DB_THREADS + ")",
        "5m",
        "warning",
        "{{ $labels.instance }} uses at least 90% of its database connections ({{ $labels.name }})",
        "Slow queries on PostgreSQL (`pg_stat_activity`); raise `cp_max` only if PostgreSQL's "
        "`max_connections` leaves room for every process's pool.",
    ),
)


def _matchers(spec: FleetSpec) -> dict[str, str]:
    """The label matchers of the fleet's Synapse processes and of its nginx."""
    server = f'server="{spec.server_name}"'
    jobs = "|".join(sorted({target.job for target in targets(spec)}))
    return {SYNAPSE: f'{server}, job=~"{jobs}"', NGINX: f'{server}, job="{NGINX_JOB}"'}


def rule_groups(spec: FleetSpec, nginx: bool = True) -> list[dict[str, Any]]:
    """The rule groups of the fleet (Prometheus's ``groups`` list), the nginx rule only when ``nginx``
    is scraped; empty when metrics are off."""
    if not spec.metrics.enabled:
        return []
    matchers = _matchers(spec)
    rules = []
    for rule in RULES:
        if rule.nginx and not nginx:
            continue
        expr = rule.expr
        for placeholder, matcher in matchers.items():
            expr = expr.replace(placeholder, matcher)
        rules.append(
            {
                "alert": rule.name,
                "expr": expr,
                "for": rule.duration,
                "labels": {"severity": rule.severity},
                "annotations": {"summary": rule.summary, "runbook": rule.runbook},
            }
        )
    return [{"name": GROUP, "rules": rules}]
