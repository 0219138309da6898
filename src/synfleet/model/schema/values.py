"""The value types the fleet file's sections share: the strict base of every section, ports,
counts, names, sizes, networks and image references, each with the message that says what would
be valid."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = re.compile(r"[a-z0-9_]+")
# A DNS name (labels of letters, digits and inner hyphens) or an IP literal, with an optional port.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SERVER_NAME_PATTERN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
SIZE_PATTERN = re.compile(r"([0-9]+)([KMG]?)")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
#: A container image reference: [registry[:port]/]path[:tag][@digest], as docker and podman take it.
IMAGE_PATTERN = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)

Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=0, le=64)]


class Section(BaseModel):
    """A table of the fleet file: unknown keys, wrong types and changes after validation are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_size(value: str) -> int:
    """The bytes in a size such as 50M (K, M and G are powers of 1024); ValueError if it is none."""
    match = SIZE_PATTERN.fullmatch(value)
    if not match or int(match[1]) == 0:
        raise ValueError(f"must be a size such as 50M, 512K or 2G (powers of 1024), got {value!r}")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def check_server_name(value: str) -> str:
    """``value`` if it can be a homeserver's name; else ValueError saying what would be valid."""
    if not SERVER_NAME_PATTERN.fullmatch(value) or len(value) > 255:
        raise ValueError(f"must be a host name such as example.org (optionally :port), got {value!r}")
    return value


def check_networks(values: list[str]) -> list[str]:
    """Each value as a CIDR network (an address alone becomes its /32 or /128)."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network such as 10.0.0.0/8") from None
    return out


def check_image(value: str) -> str:
    if value and not IMAGE_PATTERN.fullmatch(value):
        raise ValueError(f"must be an image reference such as registry.example.org/synapse:v1.163.2, got {value!r}")
    return value
