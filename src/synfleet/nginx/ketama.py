"""nginx's ``hash $key consistent`` (ketama over CRC32), reproduced exactly.

nginx places 160 points per unit of weight on a ring for every ``server`` of an upstream. A point's
hash is ``crc32(host "\\0" port prev)`` where ``prev`` is the previous point's hash as 4 little-endian
bytes (0 for the first point); for ``unix:`` servers the host is the socket path and the port is
empty. Points are sorted, equal hashes keep the first one. A request's key is hashed with plain
``crc32``; it goes to the server of the first point whose hash is >= the key's, wrapping around.
With one server, or an empty key, nginx uses round robin instead.
"""

from __future__ import annotations

import bisect
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

POINTS_PER_WEIGHT = 160


def _host_and_port(server: str) -> tuple[bytes, bytes]:
    raw = server.encode()
    if raw[:5].lower() == b"unix:":
        return raw[5:], b""
    host, sep, port = raw.rpartition(b":")
    if sep and port.isdigit():
        return host, port
    return raw, b""


@dataclass(frozen=True)
class Ring:
    """The sorted points of one upstream. ``servers`` are the ``server`` directive arguments."""

    servers: tuple[str, ...]
    hashes: tuple[int, ...]
    owners: tuple[int, ...]

    @classmethod
    def build(cls, servers: Sequence[str], weights: Sequence[int] | None = None) -> Ring:
        points: list[tuple[int, int]] = []
        for index, server in enumerate(servers):
            host, port = _host_and_port(server)
            base = host + b"\0" + port
            previous = 0
            for _ in range(POINTS_PER_WEIGHT * (weights[index] if weights else 1)):
                point = zlib.crc32(base + previous.to_bytes(4, "little"))
                points.append((point, index))
                previous = point
        # nginx's qsort is not stable: among equal hashes it keeps whichever sorts first. Equal
        # 32-bit hashes between servers are rare enough that the first server wins here too.
        points.sort()
        hashes: list[int] = []
        owners: list[int] = []
        for point, index in points:
            if hashes and hashes[-1] == point:
                continue
            hashes.append(point)
            owners.append(index)
        return cls(tuple(servers), tuple(hashes), tuple(owners))

    def pick(self, key: str | bytes) -> int:
        """Index in :attr:`servers` of the server that owns ``key``."""
        data = key.encode() if isinstance(key, str) else key
        position = bisect.bisect_left(self.hashes, zlib.crc32(data))
        return self.owners[position % len(self.hashes)]

    def server_for(self, key: str | bytes) -> str:
        return self.servers[self.pick(key)]


def spread(ring: Ring, keys: Iterable[str]) -> Counter[str]:
    """How many of ``keys`` each server of ``ring`` owns."""
    counts: Counter[str] = Counter({server: 0 for server in ring.servers})
    counts.update(ring.server_for(key) for key in keys)
    return counts


def moved(before: Ring, after: Ring, keys: Iterable[str]) -> tuple[int, int]:
    """(keys whose server changes from ``before`` to ``after``, keys looked at)."""
    changed = total = 0
    for key in keys:
        total += 1
        changed += before.server_for(key) != after.server_for(key)
    return changed, total
