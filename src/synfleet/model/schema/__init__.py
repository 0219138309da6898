"""``fleet.toml``'s schema: the validated description of a deployment, pure data.

One module per section or a few related ones, each a small strict model: unknown keys, wrong types
and out-of-range values are refused with a message that names the key and says what would be
valid. The file is resolved into the model once (:attr:`FleetSpec.fleet`).
"""

from synfleet.model.schema.fleet import FleetSpec
from synfleet.model.schema.parse import parse_fleet, parse_fleet_file, read_fleet, read_fleet_file

__all__ = ["FleetSpec", "parse_fleet", "parse_fleet_file", "read_fleet", "read_fleet_file"]
