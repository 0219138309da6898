"""Where the fleet keeps its state: PostgreSQL, and Redis for replication."""

from __future__ import annotations

import re
from typing import Self

from pydantic import Field, field_validator, model_validator

from synfleet.model.ports import POSTGRES_PORT, REDIS_PORT
from synfleet.model.schema.values import Port, Section

#: The superuser of the fleet's own PostgreSQL (initdb's, as the official image names it): it logs
#: in on the socket only, as the account that owns the cluster; Synapse's role is another.
POSTGRES_SUPERUSER = "postgres"

#: Server settings synfleet sets itself on the fleet's own PostgreSQL: where it listens, who may log
#: in, its TLS. ``[database] settings`` cannot change them.
MANAGED_POSTGRES_SETTINGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
        "hba_file",
        "ident_file",
        "data_directory",
        "config_file",
        "ssl",
        "ssl_ca_file",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_crl_file",
        "ssl_crl_dir",
    }
)
#: Settings whose "off" loses acknowledged messages when the machine stops: a commit that returned
#: before it was on disk, or pages torn in a write.
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
_OFF = {"off", "false", "no", "0"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")


class Database(Section):
    """PostgreSQL. An empty host means the fleet's own server (a UNIX socket)."""

    name: str = Field("synapse", pattern=r"^[A-Za-z0-9_]+$")
    user: str = Field("synapse", pattern=r"^[A-Za-z0-9_]+$")
    host: str = ""
    port: Port = POSTGRES_PORT
    pool_min: int = Field(5, ge=1, le=100)
    pool_max: int = Field(10, ge=1, le=100)
    #: Server settings of the fleet's own PostgreSQL, given as ``-c NAME=VALUE`` when it starts.
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @property
    def local(self) -> bool:
        """The fleet runs its own PostgreSQL (no host given)."""
        return not self.host

    def server_settings(self) -> dict[str, str]:
        """``settings`` as PostgreSQL reads them (booleans as on and off)."""
        return {
            name: ("on" if value else "off") if isinstance(value, bool) else str(value)
            for name, value in self.settings.items()
        }

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for name, setting in value.items():
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a PostgreSQL setting's name")
            if isinstance(setting, str) and _CONTROL.search(setting):
                raise ValueError(f"{name}: a value cannot hold a control character (a new line, a tab, NUL)")
            if name in MANAGED_POSTGRES_SETTINGS:
                raise ValueError(f"{name} is set by synfleet (where PostgreSQL listens, who logs in, TLS)")
            text = str(setting).lower() if not isinstance(setting, bool) else ("on" if setting else "off")
            if name in DURABILITY_SETTINGS and text in _OFF:
                raise ValueError(
                    f"{name} = {text} would lose acknowledged messages when the machine stops; leave it on"
                )
        return value

    @model_validator(mode="after")
    def _pool(self) -> Self:
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) must not exceed pool_max ({self.pool_max})")
        return self

    @model_validator(mode="after")
    def _settings_of_own_server(self) -> Self:
        if self.settings and not self.local:
            raise ValueError("settings are for the fleet's own PostgreSQL; set them on the server at host")
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
