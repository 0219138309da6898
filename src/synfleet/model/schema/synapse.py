"""Synapse itself: its release, logging, how the native run starts it, and media uploads."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from synfleet.model.schema.values import Section, parse_size

VERSION_PATTERN = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(?:rc[0-9]+)?")

#: The largest request body Synapse takes other than a media upload: a full federation /send of
#: 200 events of at most 64 KiB each (Synapse's own limit, 12.5 MiB).
REQUEST_BODY_LIMIT = 200 * 64 * 1024


class Synapse(Section):
    """Synapse itself."""

    version: str = "1.163.2"
    relaxed_rate_limits: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    gc_thresholds: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    #: How the native run starts Synapse's processes: "fork" imports Synapse once, in the
    #: supervisor, and forks each process from it (shared memory, faster start); "exec" starts a
    #: new Python for each. Containers always start their one process the exec way.
    start: Literal["fork", "exec"] = "fork"

    @field_validator("gc_thresholds")
    @classmethod
    def _gc(cls, value: list[int]) -> list[int]:
        if value and len(value) != 3:
            raise ValueError(f"must be three integers (Python's gc thresholds, e.g. [700, 10, 10]), got {value}")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_PATTERN.fullmatch(value):
            raise ValueError(f"must be a release such as 1.163.2, got {value!r}")
        return value


class Media(Section):
    """Media uploads: the largest file a client may upload, enforced by nginx and Synapse alike."""

    max_upload_size: str = "50M"

    @field_validator("max_upload_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def max_upload_bytes(self) -> int:
        return parse_size(self.max_upload_size)
