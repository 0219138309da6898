"""Where the fleet keeps its state: PostgreSQL, and Redis for replication."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from synfleet.model.ports import POSTGRES_PORT, REDIS_PORT
from synfleet.model.schema.values import Port, Section

#: The superuser of the fleet's own PostgreSQL (initdb's, as the official image names it): it logs
#: in on the socket only, as the account that owns the cluster; Synapse's role is another.
POSTGRES_SUPERUSER = "postgres"


class Database(Section):
    """PostgreSQL. An empty host means the fleet's own server (a UNIX socket)."""

    name: str = Field("synapse", pattern=r"^[A-Za-z0-9_]+$")
    user: str = Field("synapse", pattern=r"^[A-Za-z0-9_]+$")
    host: str = ""
    port: Port = POSTGRES_PORT
    pool_min: int = Field(5, ge=1, le=100)
    pool_max: int = Field(10, ge=1, le=100)

    @property
    def local(self) -> bool:
        """The fleet runs its own PostgreSQL (no host given)."""
        return not self.host

    @model_validator(mode="after")
    def _pool(self) -> Self:
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) must not exceed pool_max ({self.pool_max})")
        return self

    @model_validator(mode="after")
    def _not_the_superuser(self) -> Self:
        if self.local and self.user == POSTGRES_SUPERUSER:
            raise ValueError(
                f"user {self.user!r} is the superuser of the fleet's own PostgreSQL, which Synapse never "
                "logs in as: choose another name for Synapse's role (the default is 'synapse')"
            )
        return self


class Redis(Section):
    """Redis for replication. An empty host means the fleet's own server (a UNIX socket)."""

    host: str = ""
    port: Port = REDIS_PORT
    dbid: int = Field(0, ge=0, le=15)

    @property
    def local(self) -> bool:
        """The fleet runs its own Redis (no host given)."""
        return not self.host
