"""Which Synapse role each upstream server of an existing config plays.

From ``--fleet D`` when given; otherwise from the worker and upstream names (``rooms3``,
``synapse_inbound_client_sync1.sock``, ``synapse_inbound_room_workers``, ...). Stream writers then
follow synfleet's defaults, which are the seed's: the first sync worker writes typing, to_device,
account_data, receipts and presence; everything else stays on main.
"""

from __future__ import annotations

import re

from synfleet.model.fleet import SYNC_WRITER_STREAMS, Fleet, Role, Worker
from synfleet.nginx.config import NginxModel

# (pattern on a worker or upstream name, role); the first match wins.
NAME_ROLES: tuple[tuple[str, Role], ...] = (
    (r"(^|_)(main|master|homeserver)(\d*|s)?$|^synapse$", Role.MAIN),
    (r"room", Role.ROOMS),
    (r"sync", Role.CLIENT_SYNC),
    (r"federation|fed_?reader|inbound_fed", Role.FEDERATION_READER),
    (r"media", Role.MEDIA),
    (r"writer|persister|typing|to_device|receipt|presence|account_data", Role.STREAM_WRITER),
    (r"reader|client|generic|worker", Role.CLIENT_READER),
)


def role_from_name(name: str) -> Role | None:
    lowered = name.lower()
    return next((role for pattern, role in NAME_ROLES if re.search(pattern, lowered)), None)


def infer_fleet(model: NginxModel, server_name: str = "localhost") -> Fleet:
    """A fleet whose workers are the config's upstream servers, with roles from their names."""
    roles: dict[str, Role] = {}
    for upstream in model.upstreams.values():
        group_role = role_from_name(upstream.name)
        for worker in upstream.workers:
            role = role_from_name(worker) or group_role or Role.CLIENT_READER
            roles.setdefault(worker, role)
    if Role.MAIN not in roles.values():
        roles["main"] = Role.MAIN
    names = sorted(roles, key=lambda n: (roles[n] is not Role.MAIN, n))
    first_sync = next((n for n in names if roles[n] is Role.CLIENT_SYNC), None)
    workers = tuple(
        Worker(name, roles[name], SYNC_WRITER_STREAMS if name == first_sync else frozenset()) for name in names
    )
    return Fleet(server_name, workers)
