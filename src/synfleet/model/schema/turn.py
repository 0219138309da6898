"""TURN for voice and video calls: coturn, and the time-limited credentials Synapse hands out for it."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator

from synfleet.model.schema.values import Port, Section

if TYPE_CHECKING:
    from synfleet.model.schema.fleet import FleetSpec

#: A duration as Synapse's ``turn_user_lifetime`` takes it: a number and a unit.
DURATION_PATTERN = re.compile(r"[1-9][0-9]*[smhd]")


def _ip_address(value: str) -> str:
    """``value`` if it is empty or an IP address (written as Python writes it); else ValueError."""
    if not value:
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"must be an IP address such as 203.0.113.7, got {value!r}") from None


class Turn(Section):
    """coturn, relaying calls for clients that cannot reach each other directly. Clients reach it
    at ``public_address``:``port`` (UDP and TCP), and their media at a port of
    ``relay_min_port``-``relay_max_port`` (UDP) on the same address; Synapse gives each user a
    password valid for ``user_lifetime``, signed with a shared secret (``D/secrets/turn_shared_secret``).
    coturn listens on ``bind`` (empty: listen.bind; 0.0.0.0: every address of its host). No TLS
    listener: calls' media is encrypted end to end by the clients (DTLS-SRTP) either way."""

    enabled: bool = False
    realm: str = ""  # empty: server_name
    bind: str = ""
    public_address: str = ""  # empty: the address coturn listens on
    port: Port = 3478
    relay_min_port: Port = 49160
    relay_max_port: Port = 49200
    user_lifetime: str = "1h"
    allow_guests: bool = False

    _addresses = field_validator("bind", "public_address")(_ip_address)

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise ValueError(f"must be a domain such as example.org, got {value!r}")
        return value

    @field_validator("user_lifetime")
    @classmethod
    def _lifetime(cls, value: str) -> str:
        if not DURATION_PATTERN.fullmatch(value):
            raise ValueError(f"must be a duration such as 1h, 30m or 1d (s, m, h, d), got {value!r}")
        return value

    @model_validator(mode="after")
    def _ports(self) -> Self:
        if self.relay_min_port > self.relay_max_port:
            raise ValueError(
                f"relay_min_port ({self.relay_min_port}) must not exceed relay_max_port ({self.relay_max_port})"
            )
        if self.relay_min_port <= self.port <= self.relay_max_port:
            raise ValueError(
                f"port: {self.port} is one of the relay ports ({self.relay_min_port}-{self.relay_max_port}); "
                "pick one outside that range"
            )
        return self

    @property
    def relay_ports(self) -> range:
        return range(self.relay_min_port, self.relay_max_port + 1)


def listen_address(spec: FleetSpec) -> str:
    """Where coturn listens: turn.bind, else listen.bind."""
    return spec.turn.bind or spec.listen.bind


def public_address(spec: FleetSpec) -> str:
    """Where clients reach coturn: turn.public_address, else the address it listens on."""
    return spec.turn.public_address or listen_address(spec)


def realm(spec: FleetSpec) -> str:
    """coturn's realm: turn.realm, else server_name without its port."""
    return spec.turn.realm or urlsplit(f"//{spec.server_name}").hostname or spec.server_name


def check_turn(spec: FleetSpec, taken: Mapping[str, range]) -> None:
    """With TURN on, clients are told one address that reaches coturn, and its ports are none of
    the ``taken`` ones (the fleet's other listeners', by the key that sets them)."""
    turn = spec.turn
    if not turn.enabled:
        return
    if ipaddress.ip_address(public_address(spec)).is_unspecified:
        raise ValueError(
            f"turn.public_address: required when coturn listens on every address ({listen_address(spec)}): "
            "the IP address clients reach it at, such as 203.0.113.7"
        )
    for key, ports in taken.items():
        if turn.port in ports:
            raise ValueError(f"turn.port: {turn.port} is {key}'s; pick another")
        if turn.relay_min_port < ports.stop and ports.start <= turn.relay_max_port:
            raise ValueError(
                f"turn.relay_min_port: the relay ports ({turn.relay_min_port}-{turn.relay_max_port}) include "
                f"{key}'s ({ports.start}); move one of them"
            )
