"""nginx in front: where it listens, TLS, and who may use the admin API or set the client address."""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import Field, field_validator, model_validator

from synfleet.model.fleet import DEFAULT_ADMIN_ALLOW
from synfleet.model.ports import CLIENT_PORT, FEDERATION_PORT
from synfleet.model.schema.values import Port, Section, check_networks


class Listen(Section):
    """Where nginx accepts client and federation traffic."""

    bind: str = "127.0.0.1"
    http_port: Port = CLIENT_PORT
    https_port: Port = FEDERATION_PORT

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.http_port == self.https_port:
            raise ValueError(f"http_port and https_port must differ (both {self.http_port})")
        return self


class Tls(Section):
    """TLS on nginx's https_port; off when another proxy terminates TLS."""

    enabled: bool = False
    certificate: str = ""
    key: str = ""

    @model_validator(mode="after")
    def _paths(self) -> Self:
        if self.enabled and not (self.certificate and self.key):
            raise ValueError("certificate and key (PEM file paths) are required when enabled = true")
        return self


class Access(Section):
    """Who may use the admin API, and which proxies may set the client address (X-Forwarded-For)."""

    admin_allow: list[str] = Field(default_factory=lambda: list(DEFAULT_ADMIN_ALLOW))
    trusted_proxies: list[str] = Field(default_factory=list)

    _check = field_validator("admin_allow", "trusted_proxies")(check_networks)
