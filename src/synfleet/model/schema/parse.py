"""Reading a fleet file: TOML in, a validated :class:`FleetSpec` out, or one message naming the
file and the first bad key. Old names of keys are taken under their new name, with a warning that
says what to write instead."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from synfleet.errors import FleetError
from synfleet.model.schema.fleet import FleetSpec
from synfleet.model.schema.workers import OLD_GROUP_NAMES

#: The tables whose keys name groups of workers (some also name processes or services).
_GROUP_TABLES = ("workers", "placement", "resources")

#: pydantic's error types whose message gains the value that was given.
_SHOWS_INPUT = frozenset(
    {
        "int_type",
        "bool_type",
        "string_type",
        "float_type",
        "list_type",
        "greater_than_equal",
        "less_than_equal",
        "greater_than",
        "less_than",
        "string_pattern_mismatch",
    }
)


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"] if part != "[key]")
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = error["loc"][:-1]
        allowed = _fields_at(model, parent)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{location}: unknown key{hint}"
    if kind == "missing":
        return f"{location}: required key is missing"
    if kind == "enum":
        return f"{location}: unknown value {error['input']!r}; allowed: {error['ctx']['expected']}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if location and re.match(r"[a-z_]+: ", message):  # a validator naming the key inside a table
        return f"{location}.{message}"
    if kind in _SHOWS_INPUT:
        message += f" (got {_as_toml(error['input'])})"
    return f"{location}: {message}" if location else message


def _as_toml(value: Any) -> str:
    """A scalar as it is written in TOML (true, 2.0, "8008"); anything else as Python shows it."""
    if isinstance(value, bool | int | float | str):
        return json.dumps(value)
    return repr(value)


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in path:
        field = current.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        current = field.annotation
    return list(current.model_fields)


def _process_names(data: dict[str, Any]) -> set[str]:
    """The names the file gives processes itself: the dedicated stream writers."""
    writers = data.get("stream_writers")
    if not isinstance(writers, dict):
        return set()
    return {name for names in writers.values() if isinstance(names, list) for name in names if isinstance(name, str)}


def _rename_old_groups(data: dict[str, Any], source: str) -> list[str]:
    """Move each group given under an old name to its name, in place; one warning for each old name."""
    warnings = []
    for old, new in OLD_GROUP_NAMES.items():
        renamed = []
        for table_name in _GROUP_TABLES:
            table = data.get(table_name)
            if not isinstance(table, dict) or old not in table:
                continue
            if table_name == "placement" and old in _process_names(data):
                continue  # a dedicated stream writer of that name, placed by name
            if new in table:
                raise FleetError(f"{source}: {table_name}: {new} and {old} (its old name) both given; keep {new}")
            table[new] = table.pop(old)
            renamed.append(f"{table_name}.{old}")
        if renamed:
            warnings.append(
                f"{source}: {', '.join(renamed)}: {old} is the old name of the {new} group; write {new} instead"
            )
    return warnings


def parse_fleet_file(text: str, source: str = "fleet.toml") -> tuple[FleetSpec, list[str]]:
    """Validate a fleet file's text: the fleet, and a warning for each old name it uses. Raises
    FleetError naming the file and the first bad field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{source}: not valid TOML: {exc}") from None
    warnings = _rename_old_groups(data, source)
    try:
        return FleetSpec.model_validate(data), warnings
    except ValidationError as exc:
        problems = [_describe(dict(e), FleetSpec) for e in exc.errors()]
        raise FleetError(f"{source}: " + "; ".join(problems)) from None


def parse_fleet(text: str, source: str = "fleet.toml") -> FleetSpec:
    """Validate a fleet file's text (:func:`parse_fleet_file` without the warnings)."""
    return parse_fleet_file(text, source)[0]


def read_fleet_file(path: Path) -> tuple[FleetSpec, list[str]]:
    """The fleet of the file at ``path``, and its warnings (:func:`parse_fleet_file`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise FleetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_fleet_file(text, str(path))


def read_fleet(path: Path) -> FleetSpec:
    return read_fleet_file(path)[0]
