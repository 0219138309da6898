"""Limits per group of processes, for containers and pods."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from synfleet.model.fleet import Role, Service
from synfleet.model.schema.values import Section

MEMORY_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]+)?[kmg]?", re.IGNORECASE)

#: Groups that take docker compose limits: every process's group (see :meth:`Fleet.group`), and a
#: default. Those that are not worker roles come first.
FIXED_GROUPS = ("default", Role.MAIN.value, *(s.value for s in Service))
RESOURCE_GROUPS = (*FIXED_GROUPS, *(r.value for r in Role if r is not Role.MAIN))


class Resources(Section):
    """Limits for one docker compose service."""

    memory: str = "1g"
    cpus: float = Field(1.0, gt=0, le=256)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not MEMORY_PATTERN.fullmatch(value):
            raise ValueError(f"must be a size such as 512m or 2g, got {value!r}")
        return value.lower()


def check_resource_groups(value: dict[str, Resources]) -> dict[str, Resources]:
    for group in value:
        if group not in RESOURCE_GROUPS:
            raise ValueError(f"unknown group {group!r}; allowed: {', '.join(RESOURCE_GROUPS)}")
    return value
