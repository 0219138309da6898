"""Which Synapse processes the fleet has: worker counts per role, stream writers, and how nginx
balances room workers."""

from __future__ import annotations

from typing import Literal

from synfleet.model.fleet import (
    HTTP_ROLES,
    MEDIA_REPOSITORY_STREAMS,
    SEED_COUNTS,
    SINGLE_WRITER_STREAMS,
    Fleet,
    Role,
    Stream,
)
from synfleet.model.schema.values import NAME_PATTERN, Count, Section

#: Group names the fleet file once took, and the name to write instead ([workers], [placement] and
#: [resources] name a group of workers by its role).
OLD_GROUP_NAMES = {"senders": Role.SENDER.value}


class Workers(Section):
    """How many workers of each role, keyed by the role's name; 0 leaves that work to main. The
    defaults are the seed's."""

    client_sync: Count = SEED_COUNTS[Role.CLIENT_SYNC]
    #: Initial syncs (GET /sync without since) on a pool of their own, so that a burst of them does
    #: not hold up live sync; 0: they stay with client_sync.
    initial_sync: Count = 0
    rooms: Count = SEED_COUNTS[Role.ROOMS]
    client_reader: Count = SEED_COUNTS[Role.CLIENT_READER]
    federation_reader: Count = SEED_COUNTS[Role.FEDERATION_READER]
    media: Count = SEED_COUNTS[Role.MEDIA]
    tasks: Count = SEED_COUNTS[Role.TASKS]
    sender: Count = SEED_COUNTS[Role.SENDER]

    def counts(self) -> dict[Role, int]:
        return {
            Role.CLIENT_SYNC: self.client_sync,
            Role.INITIAL_SYNC: self.initial_sync,
            Role.ROOMS: self.rooms,
            Role.CLIENT_READER: self.client_reader,
            Role.FEDERATION_READER: self.federation_reader,
            Role.MEDIA: self.media,
            Role.TASKS: self.tasks,
            Role.SENDER: self.sender,
        }


class Routing(Section):
    """How nginx balances room workers. Room-blind balancing exists to measure what hashing buys."""

    room_balancing: Literal["consistent_hash", "round_robin", "least_conn"] = "consistent_hash"


def check_stream_writers(value: dict[Stream, list[str]]) -> dict[Stream, list[str]]:
    """Each stream names one or more workers (one for the streams Synapse writes from one process)."""
    for stream, names in value.items():
        if not names:
            raise ValueError(f"{stream.value}: needs at least one worker name (or remove the key)")
        for name in names:
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{stream.value}: worker name {name!r} may only use a-z, 0-9 and _")
        if len(set(names)) != len(names):
            raise ValueError(f"{stream.value}: {names} names a worker twice")
        if stream in SINGLE_WRITER_STREAMS and len(names) > 1:
            allowed = ", ".join(sorted(s.value for s in Stream if s not in SINGLE_WRITER_STREAMS))
            raise ValueError(
                f"{stream.value}: Synapse allows a single writer for this stream, got {len(names)} "
                f"({', '.join(names)}); streams with several writers: {allowed}"
            )
    return value


def check_writers_serve_http(fleet: Fleet, writers: dict[Stream, list[str]]) -> None:
    """Writers of streams with HTTP endpoints are processes nginx routes to (or dedicated writers)."""
    for stream, names in writers.items():
        if stream is Stream.EVENTS:
            continue
        for name in names:
            worker = fleet.worker(name)
            if not worker.serves_http:
                raise ValueError(
                    f"stream_writers.{stream.value}: {name} is a {worker.role.value} worker, which serves no "
                    "HTTP requests; use a new name for a dedicated writer, or a worker of role "
                    + ", ".join(sorted(r.value for r in HTTP_ROLES))
                )


def check_media_writers(fleet: Fleet, writers: dict[Stream, list[str]]) -> None:
    """A media repository stream's writers include main (Synapse's background update there writes
    it) and every process the media admin API's quarantine endpoints reach (they write it where
    they run, else answer 500)."""
    for stream in sorted(MEDIA_REPOSITORY_STREAMS & writers.keys()):
        if missing := [name for name in fleet.media_stream_writers if name not in writers[stream]]:
            raise ValueError(
                f"stream_writers.{stream.value}: leaves out {', '.join(missing)}; the quarantine admin "
                "endpoints write this stream on every media worker (on main without one) and main's "
                f"background updates write it too: list at least {', '.join(fleet.media_stream_writers)}"
            )
