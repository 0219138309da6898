"""Find the fleet of a deployment directory."""

from __future__ import annotations

from pathlib import Path

from synfleet.errors import FleetError
from synfleet.spec.fleet import Fleet, seed_fleet

FLEET_FILE = "fleet.toml"


def load_fleet(directory: Path) -> Fleet:
    """The fleet described by ``directory/fleet.toml``, or the seed's fleet if there is none."""
    if not directory.is_dir():
        raise FleetError(f"{directory}: no such directory")
    path = directory / FLEET_FILE
    if not path.exists():
        return seed_fleet()
    raise FleetError(f"{path}: fleet files are not supported by this version of synfleet")
