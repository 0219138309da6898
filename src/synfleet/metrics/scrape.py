"""Reading metrics: one Prometheus text scrape of a Synapse process, and nginx's status page."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from synfleet.metrics.targets import METRICS_PATH, NGINX_STATUS_PATH


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape, by sample name: (labels, value) pairs."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def total(self, name: str, **labels: str) -> float:
        """The sum of a sample's values over every series whose labels include ``labels``."""
        return sum(
            value
            for series, value in self.samples.get(name, [])
            if all(series.get(key) == wanted for key, wanted in labels.items())
        )

    @property
    def names(self) -> set[str]:
        return set(self.samples)


def parse(text: str) -> Scrape:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return Scrape(samples)


def _get(host: str, port: int, path: str, timeout: float) -> str | None:
    """The text of a GET of ``path``; None when the listener does not answer, or not with 2xx."""
    try:
        response = httpx.get(f"http://{host}:{port}{path}", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return response.text


def scrape(host: str, port: int, timeout: float = 5.0) -> Scrape | None:
    """One scrape of a Synapse process's metrics listener; None when it does not answer."""
    text = _get(host, port, METRICS_PATH, timeout)
    return None if text is None else parse(text)


@dataclass(frozen=True)
class NginxStatus:
    """nginx's stub_status: open client connections and requests served since it started."""

    active: int
    requests: int


_STATUS = re.compile(r"Active connections:\s*(\d+).*?\n\s*\d+\s+\d+\s+(\d+)", re.S)


def nginx_status(host: str, port: int, timeout: float = 5.0) -> NginxStatus | None:
    text = _get(host, port, NGINX_STATUS_PATH, timeout)
    match = _STATUS.search(text) if text is not None else None
    return NginxStatus(int(match[1]), int(match[2])) if match else None
