"""`synfleet top`: every process's CPU, memory, request rate and replication lag, from two scrapes
of each process's metrics an interval apart."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from synfleet.metrics.scrape import NginxStatus, Scrape, nginx_status, scrape
from synfleet.metrics.targets import targets
from synfleet.model.schema import FleetSpec

#: Where the native run's metrics listeners are.
HOST = "127.0.0.1"
EVENTS_POSITION = "synapse_storage_stream_current_position"


@dataclass(frozen=True)
class Sample:
    """Scrapes of every process (None: it did not answer) and nginx's status, at one moment."""

    at: float
    processes: dict[str, Scrape | None]
    nginx: NginxStatus | None


@dataclass(frozen=True)
class Row:
    process: str
    job: str
    up: bool
    cpu_percent: float = 0.0
    rss_mib: float = 0.0
    requests_per_s: float = 0.0
    events_behind: int = 0


def sample(spec: FleetSpec, host: str = "") -> Sample:
    """Every process's metrics (with ``host``, those of that host's processes), and nginx's status."""
    found = [t for t in targets(spec) if spec.fleet.host_of(t.process) == host]
    with ThreadPoolExecutor(max_workers=8) as pool:
        scrapes = list(pool.map(lambda t: scrape(HOST, t.port), found))
    status = nginx_status(HOST, spec.metrics.nginx_status_port)
    return Sample(time.monotonic(), {t.process: s for t, s in zip(found, scrapes, strict=True)}, status)


def _events_position(scraped: Scrape) -> float:
    return scraped.total(EVENTS_POSITION, stream_name="events")


def rows(spec: FleetSpec, before: Sample, after: Sample) -> list[Row]:
    """One row per process: rates between the two samples; replication lag as how many events
    this process's view of the events stream is behind the furthest process's."""
    seconds = max(after.at - before.at, 1e-6)
    live = {name: s for name, s in after.processes.items() if s is not None}
    furthest = max((_events_position(s) for s in live.values()), default=0.0)
    result = []
    for target in targets(spec):
        if target.process not in after.processes:
            continue  # on another host
        now, then = after.processes.get(target.process), before.processes.get(target.process)
        if now is None or then is None:
            result.append(Row(target.process, target.job, up=False))
            continue
        result.append(
            Row(
                target.process,
                target.job,
                up=True,
                cpu_percent=100
                * (now.total("process_cpu_seconds_total") - then.total("process_cpu_seconds_total"))
                / seconds,
                rss_mib=now.total("process_resident_memory_bytes") / 2**20,
                requests_per_s=(
                    now.total("synapse_http_server_requests_received_total")
                    - then.total("synapse_http_server_requests_received_total")
                )
                / seconds,
                events_behind=int(furthest - _events_position(now)),
            )
        )
    return result


def nginx_rate(before: Sample, after: Sample) -> tuple[int, float] | None:
    """nginx's open connections and requests/s between the two samples."""
    if before.nginx is None or after.nginx is None:
        return None
    return after.nginx.active, (after.nginx.requests - before.nginx.requests) / max(after.at - before.at, 1e-6)
