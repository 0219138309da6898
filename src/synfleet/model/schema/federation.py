"""Talking to other homeservers."""

from __future__ import annotations

from pydantic import Field, field_validator

from synfleet.model.schema.values import Section, check_networks, check_server_name


class Federation(Section):
    """Talking to other homeservers. Each key is the Synapse setting named in its comment."""

    # federation_custom_ca_list: a PEM bundle trusted for outbound federation (private federations).
    trusted_ca: str = ""
    # federation_domain_whitelist: federate only with these servers; absent: with every server.
    domain_whitelist: list[str] | None = None
    # ip_range_whitelist: private networks that outbound requests may reach despite Synapse's blocklist.
    ip_range_whitelist: list[str] = Field(default_factory=list)
    # trusted_key_servers: notaries asked for other servers' signing keys; [] asks each server itself.
    trusted_key_servers: list[str] = Field(default_factory=lambda: ["matrix.org"])

    _ranges = field_validator("ip_range_whitelist")(check_networks)

    @field_validator("domain_whitelist", "trusted_key_servers")
    @classmethod
    def _servers(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            check_server_name(name)
        return value
