"""An nginx ``upstream`` and the server it picks for a request, as nginx's balancers do.

Deterministic when all servers are up: one server; ``hash KEY consistent`` (ketama, see
:mod:`synfleet.nginx.ketama`); ``hash KEY`` (first try of ``ngx_http_upstream_get_hash_peer``);
``ip_hash``. Round robin, ``least_conn`` and ``random`` depend on state, so no single server is named.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from synfleet.nginx.ketama import Ring


class Balancing(StrEnum):
    """An upstream's balancing method (the value names the fleet file's spelling where there is one)."""

    ROUND_ROBIN = "round_robin"
    LEAST_CONN = "least_conn"
    RANDOM = "random"
    HASH = "hash"
    CONSISTENT_HASH = "consistent_hash"
    IP_HASH = "ip_hash"


@dataclass(frozen=True)
class Upstream:
    """``upstream NAME { ... }``: its ``server`` arguments in order with their weights, a readable
    worker name for each, the balancing method and, for ``hash``, the key expression."""

    name: str
    servers: tuple[str, ...]
    workers: tuple[str, ...]
    weights: tuple[int, ...]
    balancing: Balancing = Balancing.ROUND_ROBIN
    key: str = ""
    keepalive: int = 0
    line: str = ""  # file:line of a parsed config

    @property
    def hashed(self) -> bool:
        """Requests are placed by consistent hash over more than one server."""
        return self.balancing is Balancing.CONSISTENT_HASH and len(self.servers) > 1

    @cached_property
    def ring(self) -> Ring:
        return Ring.build(self.servers, self.weights)

    def worker_for(self, key: str, client: str = "") -> str | None:
        """The worker nginx picks for a request with balancing ``key`` from ``client`` (all servers
        up); None when nginx balances without a key (round robin), so no single worker is named."""
        if len(self.servers) == 1:
            return self.workers[0]
        if self.balancing is Balancing.CONSISTENT_HASH and key:
            return self.workers[self.ring.pick(key)]
        if self.balancing is Balancing.HASH and key:
            # First try of ngx_http_upstream_get_hash_peer: ((crc32(key) >> 16) & 0x7fff) % total weight.
            return self._by_weight(((zlib.crc32(key.encode()) >> 16) & 0x7FFF) % sum(self.weights))
        if self.balancing is Balancing.IP_HASH:
            try:
                octets = ipaddress.ip_address(client).packed
            except ValueError:
                return None
            value = 89
            for octet in octets[:3] if len(octets) == 4 else octets:
                value = (value * 113 + octet) % 6271
            return self._by_weight(value % sum(self.weights))
        return None

    def _by_weight(self, point: int) -> str:
        for worker, weight in zip(self.workers, self.weights, strict=True):
            if point < weight:
                return worker
            point -= weight
        return self.workers[-1]
