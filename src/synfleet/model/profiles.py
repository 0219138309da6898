"""The fleets `synfleet init` offers: what each profile sets, on top of the fleet file's defaults."""

from __future__ import annotations

from typing import Any

from synfleet.errors import FleetError
from synfleet.model.schema import FleetSpec

#: Fleet file sections each profile sets; everything else keeps its default (``seed``: all of it).
PROFILES: dict[str, dict[str, Any]] = {
    "seed": {},
    "small": {
        "workers": {"rooms": 2, "client_reader": 0, "federation_reader": 0, "sender": 1},
        "synapse": {"log_level": "WARNING", "gc_thresholds": [10000, 50, 50]},
    },
    "monolith": {
        "workers": {
            "client_sync": 0,
            "rooms": 0,
            "client_reader": 0,
            "federation_reader": 0,
            "media": 0,
            "tasks": 0,
            "sender": 0,
        },
    },
}


def profile_spec(server_name: str, profile: str) -> FleetSpec:
    """The fleet of ``profile`` for ``server_name``."""
    if profile not in PROFILES:
        raise FleetError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    return FleetSpec.model_validate({"server_name": server_name, **PROFILES[profile]})
