"""The fleet of a deployment directory."""

from __future__ import annotations

from pathlib import Path

from synfleet.errors import FleetError
from synfleet.model.schema import FleetSpec, read_fleet

FLEET_FILE = "fleet.toml"


def load_spec(directory: Path) -> FleetSpec:
    """The fleet of ``directory/fleet.toml``, or the seed's fleet (server ``localhost``) if there is none."""
    if not directory.is_dir():
        raise FleetError(f"{directory}: no such directory")
    path = directory / FLEET_FILE
    if not path.exists():
        return FleetSpec(server_name="localhost")
    return read_fleet(path)
