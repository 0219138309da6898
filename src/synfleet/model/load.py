"""The fleet of a deployment directory."""

from __future__ import annotations

from pathlib import Path

from synfleet.errors import FleetError
from synfleet.model.schema import FleetSpec, read_fleet, read_fleet_file

FLEET_FILE = "fleet.toml"


def load_spec(directory: Path) -> FleetSpec:
    """The fleet of ``directory/fleet.toml``, or the seed's fleet (server ``localhost``) if there is none."""
    if not directory.is_dir():
        raise FleetError(f"{directory}: no such directory")
    path = directory / FLEET_FILE
    if not path.exists():
        return FleetSpec(server_name="localhost")
    return read_fleet(path)


def fleet_file_warnings(directory: Path) -> list[str]:
    """The warnings of ``directory/fleet.toml`` (old names it uses); none if there is no such file
    or it is invalid, which :func:`load_spec` reports."""
    path = directory / FLEET_FILE
    if not path.is_file():
        return []
    try:
        return read_fleet_file(path)[1]
    except FleetError:
        return []
