"""Synapse itself: its release, logging, how the native run starts it, and media uploads."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from synfleet.model.schema.values import Section, parse_size

#: S3's rules for a bucket's name.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
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
    """Media: the largest file a client may upload (enforced by nginx and Synapse alike), and where
    media lives: the media store's disk (``store = "local"``), or an S3-compatible bucket
    (``"s3"``), with the media store's disk a cache of at most ``cache_size``. The bucket's
    credentials are secrets (``D/secrets/s3_access_key_id``, ``s3_secret_access_key``), never keys here."""

    max_upload_size: str = "50M"
    store: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_endpoint: str = ""  # empty: Amazon S3 itself
    s3_region: str = ""
    s3_prefix: str = ""
    cache_size: str = "10G"

    @field_validator("max_upload_size", "cache_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if value and not BUCKET_NAME.fullmatch(value):
            raise ValueError(f"must be an S3 bucket name (3-63 of a-z, 0-9, '.', '-'), got {value!r}")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError(f"must be the store's URL, such as https://s3.example.com, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _s3(self) -> Self:
        if self.store == "s3" and not self.s3_bucket:
            raise ValueError('s3_bucket: required with store = "s3" (the bucket media goes to)')
        return self

    @property
    def max_upload_bytes(self) -> int:
        return parse_size(self.max_upload_size)

    @property
    def in_bucket(self) -> bool:
        return self.store == "s3"
