"""Find the fleet of a deployment directory, and write new fleet files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from synfleet.errors import FleetError
from synfleet.render.templating import render
from synfleet.spec.file import FleetSpec, parse_fleet, read_fleet

FLEET_FILE = "fleet.toml"

#: Worker counts of each profile `synfleet init` offers.
PROFILES: dict[str, dict[str, int]] = {
    "seed": {
        "client_sync": 1,
        "rooms": 4,
        "client_reader": 1,
        "federation_reader": 1,
        "media": 1,
        "tasks": 1,
        "senders": 4,
    },
    "small": {
        "client_sync": 1,
        "rooms": 2,
        "client_reader": 0,
        "federation_reader": 0,
        "media": 1,
        "tasks": 1,
        "senders": 1,
    },
    "monolith": {
        "client_sync": 0,
        "rooms": 0,
        "client_reader": 0,
        "federation_reader": 0,
        "media": 0,
        "tasks": 0,
        "senders": 0,
    },
}


def load_spec(directory: Path) -> FleetSpec:
    """The fleet of ``directory/fleet.toml``, or the seed's fleet (server ``localhost``) if there is none."""
    if not directory.is_dir():
        raise FleetError(f"{directory}: no such directory")
    path = directory / FLEET_FILE
    if not path.exists():
        return FleetSpec(server_name="localhost")
    return read_fleet(path)


def fleet_file_text(server_name: str, profile: str) -> str:
    """A commented fleet file for ``profile``; validated before it is returned."""
    if profile not in PROFILES:
        raise FleetError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    text = render("fleet.toml.j2", server_name=server_name, profile=profile, counts=PROFILES[profile])
    parse_fleet(text, f"profile {profile}")
    return text


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def fleet_toml(spec: FleetSpec) -> str:
    """A fleet file with every key of ``spec`` (no comments); parsing it gives ``spec`` back."""
    data = spec.model_dump(mode="json")
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]

    def table(prefix: str, values: dict[str, object]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars or not values:
            lines.append(f"\n[{prefix}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}", value)

    for key, value in data.items():
        if isinstance(value, dict):
            table(key, value)
    text = "\n".join(lines) + "\n"
    assert parse_fleet(text, "generated fleet file") == spec
    return text


def write_new(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same directory, then rename."""
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
