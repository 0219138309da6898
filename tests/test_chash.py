"""nginx's consistent hash: even load and minimal movement, reproduced in Python."""

from __future__ import annotations

import zlib

from synfleet.model.fleet import Role, seed_fleet
from synfleet.nginx.ketama import POINTS_PER_WEIGHT, Ring, moved, spread
from synfleet.routing.corpus import room_keys
from synfleet.routing.plan import RoutingPlan


def test_ring_points_follow_nginx_formula() -> None:
    ring = Ring.build(["unix:/sockets/a.sock"])
    first = zlib.crc32(b"/sockets/a.sock\0" + (0).to_bytes(4, "little"))
    second = zlib.crc32(b"/sockets/a.sock\0" + first.to_bytes(4, "little"))
    assert first in ring.hashes and second in ring.hashes
    assert len(ring.hashes) == POINTS_PER_WEIGHT
    assert list(ring.hashes) == sorted(ring.hashes)


def test_tcp_servers_hash_host_and_port_separately() -> None:
    ring = Ring.build(["127.0.0.1:8008"])
    assert zlib.crc32(b"127.0.0.1\x008008" + (0).to_bytes(4, "little")) in ring.hashes


def test_key_past_the_last_point_wraps_to_the_first() -> None:
    ring = Ring.build(["unix:/a", "unix:/b"])
    key = next(k for k in (str(i) for i in range(100_000)) if zlib.crc32(k.encode()) > ring.hashes[-1])
    assert ring.pick(key) == ring.owners[0]


def test_four_room_workers_share_load_within_15_percent() -> None:
    upstream = RoutingPlan(seed_fleet()).upstreams["synapse_inbound_room_workers"]
    keys = room_keys(100_000, seed=3)
    counts = spread(upstream.ring, keys)
    mean = len(keys) / 4
    deviations = {server.rsplit("_", 1)[-1]: round(n / mean - 1, 4) for server, n in counts.items()}
    print(f"\nload vs mean over 4 room workers: {deviations}")
    assert all(abs(d) <= 0.15 for d in deviations.values())


def test_growing_four_to_five_moves_about_a_fifth() -> None:
    plan = RoutingPlan(seed_fleet())
    before = plan.upstreams["synapse_inbound_room_workers"]
    after = plan.grown(Role.ROOMS, 1).upstreams["synapse_inbound_room_workers"]
    keys = room_keys(100_000, seed=3)
    changed, total = moved(before.ring, after.ring, keys)
    print(f"\ngrowing 4 -> 5 room workers moves {changed}/{total} = {changed / total:.2%} of rooms (ideal 20%)")
    assert 0.16 <= changed / total <= 0.24
    # Keys only ever move to the new worker.
    for key in keys[:5000]:
        if before.worker_for(key) != after.worker_for(key):
            assert after.worker_for(key) == "rooms5"
