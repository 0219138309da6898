"""Fleet files written by synfleet: the commented one `synfleet init` writes, and a plain one."""

from __future__ import annotations

import re
from collections.abc import Sequence

from synfleet.model.fleet import SYNC_WRITER_STREAMS, Stream
from synfleet.model.profiles import profile_spec
from synfleet.model.schema import FleetSpec, parse_fleet
from synfleet.model.schema.resources import FIXED_GROUPS
from synfleet.render.templating import render


def toml_key(key: str) -> str:
    """A TOML key: bare where TOML allows it, else quoted (a dotted PostgreSQL setting stays one key)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_value(value: object) -> str:
    """A TOML literal for a value of the fleet file (booleans, numbers, strings, lists of them, tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def fleet_file_text(
    server_name: str, profile: str, sized: tuple[int, dict[str, int], Sequence[str]] | None = None
) -> str:
    """A commented fleet file for ``profile``, its values taken from the model; with ``sized``
    (cores, [workers], reasons) its workers are those, with the reasons as comments. Validated
    before it is returned."""
    spec = profile_spec(server_name, profile)
    sizing = None
    if sized is not None:
        cores, workers, reasons = sized
        data = spec.model_dump(mode="json")
        data["workers"] = {key: workers.get(key, 0) for key in data["workers"]}
        spec = FleetSpec.model_validate(data)
        sizing = {"cores": cores, "reasons": list(reasons)}
    text = render(
        "fleet.toml.j2",
        spec=spec,
        profile=profile,
        sizing=sizing,
        toml=toml_value,
        resources=spec.resources_for("default"),
        resource_groups=", ".join(toml_value(g) for g in FIXED_GROUPS),
        sync_writer_streams=", ".join(s.value for s in Stream if s in SYNC_WRITER_STREAMS),
    )
    parse_fleet(text, f"profile {profile}")
    return text


def fleet_toml(spec: FleetSpec) -> str:
    """A fleet file with every key of ``spec`` (no comments); parsing it gives ``spec`` back."""
    data = spec.model_dump(mode="json")
    lines = [f"{key} = {toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]

    def table(prefix: str, values: dict[str, object]) -> None:
        # A key left out (TOML has no null) is one whose default is "not set".
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and v is not None}
        if scalars or not values:
            lines.append(f"\n[{prefix}]")
            lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in scalars.items())
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}", value)

    for key, value in data.items():
        if isinstance(value, dict):
            table(key, value)
    text = "\n".join(lines) + "\n"
    assert parse_fleet(text, "generated fleet file") == spec
    return text
