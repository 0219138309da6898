"""The panels of the Grafana dashboard, as data: which rows and panels, their PromQL queries and units.

Every panel is a time series, one line per process (``{{instance}}``), over the labels the scrape config
gives each target: ``job`` (the process's group), ``instance`` (its name) and ``server`` (the homeserver).
The queries are written once for every homeserver, with :data:`SELECTED` and :data:`SERVER` standing for
the matchers :mod:`synfleet.metrics.dashboard` fills in.
"""

from __future__ import annotations

from dataclasses import dataclass

from grafana_foundation_sdk.models import units

#: In :data:`ROWS`' expressions, replaced by the matchers for the processes the dashboard's variables select.
SELECTED = "<SELECTED>"
#: In :data:`ROWS`' expressions, replaced by the matcher for every process of the homeserver.
SERVER = "<SERVER>"


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and how its series are named in the legend."""

    expr: str
    legend: str = "{{instance}}"


@dataclass(frozen=True)
class Graph:
    """One time series panel: what it shows (``description``), in which unit, from which queries."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class Row:
    """A titled group of panels; a collapsed row's queries only run once it is opened."""

    title: str
    graphs: tuple[Graph, ...]
    collapsed: bool = True


def _selector(metric: str, matchers: str = "") -> str:
    """``metric`` of the selected processes, with extra ``matchers`` (``', name="x"'``) if given."""
    return f"{metric}{{{SELECTED}{matchers}}}"


def _rate(metric: str, matchers: str = "") -> str:
    """``rate`` of a counter of the selected processes, per second, over Grafana's rate interval."""
    return f"rate({_selector(metric, matchers)}[$__rate_interval])"


def _rate_by(labels: str, metric: str, matchers: str = "") -> str:
    """The per-second rate of a counter, summed into one series per value of ``labels``."""
    return f"sum by ({labels}) ({_rate(metric, matchers)})"


def _sum_by(labels: str, metric: str, matchers: str = "") -> str:
    """A gauge summed into one series per value of ``labels``."""
    return f"sum by ({labels}) ({_selector(metric, matchers)})"


def _ratio(numerator: str, denominator: str) -> str:
    """The rate of one counter over the rate of another, per process."""
    return f"{_rate_by('instance', numerator)} / {_rate_by('instance', denominator)}"


def _quantile(q: float, matchers: str = "") -> str:
    """The ``q`` quantile of the HTTP response time per process, from the histogram's buckets."""
    buckets = _rate_by("instance, le", "synapse_http_server_response_time_seconds_bucket", matchers)
    return f"histogram_quantile({q}, {buckets})"


def _events_position(matcher: str) -> str:
    """The events stream position of each process ``matcher`` selects."""
    return f'synapse_storage_stream_current_position{{{matcher}, stream_name="events"}}'


def _events_behind() -> str:
    """How far each selected process's events stream position is behind the furthest of the homeserver's.

    ``max`` keeps only the ``server`` label, so the subtraction matches on it, one maximum to many processes.
    """
    return f"max by (server) ({_events_position(SERVER)}) - on (server) group_right {_events_position(SELECTED)}"


_SYNC = ', servlet="SyncRestServlet"'

ROWS: tuple[Row, ...] = (
    Row(
        "Processes",
        collapsed=False,
        graphs=(
            Graph(
                "CPU",
                "CPU time per second of wall time; 100% is one core busy.",
                units.PercentUnit,
                (Query(_rate_by("instance", "process_cpu_seconds_total")),),
            ),
            Graph(
                "Memory (RSS)",
                "Resident memory of each process.",
                units.BytesIEC,
                (Query(_sum_by("instance", "process_resident_memory_bytes")),),
            ),
            Graph(
                "Reactor tick time",
                "Mean time of one Twisted reactor tick: long ticks mean the process is blocked or CPU-bound.",
                units.Seconds,
                (Query(_ratio("python_twisted_reactor_tick_time_sum", "python_twisted_reactor_tick_time_count")),),
            ),
        ),
    ),
    Row(
        "HTTP",
        collapsed=False,
        graphs=(
            Graph(
                "Requests by servlet",
                "Requests received per second, per process and servlet (the route group that handled them).",
                units.RequestsPerSecond,
                (
                    Query(
                        _rate_by("instance, servlet", "synapse_http_server_requests_received_total"),
                        "{{instance}} {{servlet}}",
                    ),
                ),
            ),
            Graph(
                "Response time",
                "Median and 99th percentile time to respond, per process, over all servlets.",
                units.Seconds,
                (Query(_quantile(0.5), "{{instance}} p50"), Query(_quantile(0.99), "{{instance}} p99")),
            ),
            Graph(
                "Sync response time",
                "Median and 99th percentile time to answer /sync; long polls wait up to their timeout, so "
                "high values with little traffic are normal.",
                units.Seconds,
                (Query(_quantile(0.5, _SYNC), "{{instance}} p50"), Query(_quantile(0.99, _SYNC), "{{instance}} p99")),
            ),
            Graph(
                "Server errors",
                "Responses with a 5xx status per second, per process.",
                units.RequestsPerSecond,
                (
                    Query(
                        _rate_by("instance, code", "synapse_http_server_responses_total", ', code=~"5.."'),
                        "{{instance}} {{code}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Replication",
        graphs=(
            Graph(
                "Events stream: events behind",
                "How far each process's position in the events stream is behind the furthest process of the "
                "homeserver; it should come back to 0 within moments.",
                units.Short,
                (Query(_events_behind()),),
            ),
            Graph(
                "Replication commands received",
                "Replication commands received per second, per process and command.",
                units.OpsPerSecond,
                (
                    Query(
                        _rate_by("instance, command", "synapse_replication_tcp_protocol_inbound_commands_total"),
                        "{{instance}} {{command}}",
                    ),
                ),
            ),
            Graph(
                "Replication commands sent",
                "Replication commands sent per second, per process and command.",
                units.OpsPerSecond,
                (
                    Query(
                        _rate_by("instance, command", "synapse_replication_tcp_protocol_outbound_commands_total"),
                        "{{instance}} {{command}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Events and caches",
        graphs=(
            Graph(
                "Events persisted",
                "Events written to the database per second, by the processes that persist events.",
                units.OpsPerSecond,
                (Query(_rate_by("instance", "synapse_storage_events_persisted_events_total")),),
            ),
            Graph(
                "Cache hit ratio",
                "Share of lookups answered by Synapse's in-memory caches, over all caches of a process.",
                units.PercentUnit,
                # Both are gauges that only grow (hits, and lookups in all), so their rates are meaningful.
                (Query(_ratio("synapse_util_caches_cache_hits", "synapse_util_caches_cache")),),
            ),
        ),
    ),
    Row(
        "Federation",
        graphs=(
            Graph(
                "Federation sender queue",
                "PDUs and EDUs waiting to be sent to other homeservers; only federation senders have any.",
                units.Short,
                (
                    Query(
                        _sum_by("instance", "synapse_federation_transaction_queue_pending_pdus"), "{{instance}} PDUs"
                    ),
                    Query(
                        _sum_by("instance", "synapse_federation_transaction_queue_pending_edus"), "{{instance}} EDUs"
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Database",
        graphs=(
            Graph(
                "Time in database transactions",
                "Seconds spent in database transactions per second, per process; above 1 means several "
                "connections busy at once.",
                units.Seconds,
                (Query(_rate_by("instance", "synapse_storage_transaction_time_sum_total")),),
            ),
            Graph(
                "Wait for a database connection",
                "Mean time a transaction waits for a free connection of the pool: above a few ms the pool is "
                "too small or the database too slow.",
                units.Seconds,
                (Query(_ratio("synapse_storage_schedule_time_sum", "synapse_storage_schedule_time_count")),),
            ),
            Graph(
                "Busy database threads",
                "Threads of each database pool running a transaction.",
                units.Short,
                (
                    Query(
                        _sum_by("instance, name", "synapse_threadpool_working_threads", ', name=~"database.*"'),
                        "{{instance}} {{name}}",
                    ),
                ),
            ),
        ),
    ),
)
