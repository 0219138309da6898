"""The fleet model and the fleet file."""

from synfleet.model.file import FleetSpec, parse_fleet, read_fleet
from synfleet.model.fleet import (
    SINGLE_WRITER_STREAMS,
    Fleet,
    Role,
    Service,
    Stream,
    Worker,
    build_fleet,
    seed_fleet,
    standard_fleet,
)

__all__ = [
    "SINGLE_WRITER_STREAMS",
    "Fleet",
    "FleetSpec",
    "Role",
    "Service",
    "Stream",
    "Worker",
    "build_fleet",
    "parse_fleet",
    "read_fleet",
    "seed_fleet",
    "standard_fleet",
]
