"""The fleet model and the fleet file."""

from synfleet.spec.fleet import (
    SINGLE_WRITER_STREAMS,
    Fleet,
    Role,
    Stream,
    Worker,
    seed_fleet,
    standard_fleet,
)

__all__ = ["SINGLE_WRITER_STREAMS", "Fleet", "Role", "Stream", "Worker", "seed_fleet", "standard_fleet"]
