"""What a config lets a client decide for Synapse: the address Synapse records, and how large a body
it has to read.

Synapse listeners with ``x_forwarded: true`` take the leftmost address of X-Forwarded-For as the
client's, for rate limits, logs and the admin API's view of sessions. Only nginx knows the address
(after ``real_ip`` from trusted proxies), so it must pass ``$remote_addr`` and never what the client
sent. Bodies: Synapse takes at most :data:`REQUEST_BODY_LIMIT` outside media uploads, and the
fleet's media upload size on uploads; nginx reading more only buffers what Synapse then refuses.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from synfleet.audit.findings import ERROR, WARNING, Finding
from synfleet.errors import BadRequest
from synfleet.model.schema.synapse import REQUEST_BODY_LIMIT
from synfleet.nginx.config import Location, NginxModel, where
from synfleet.nginx.uri import parse_request_target
from synfleet.routing.table import MEDIA_UPLOAD_PREFIXES

#: Variables whose value is, or starts with, the X-Forwarded-For the client sent.
CLIENT_FORWARDED_FOR = re.compile(r"\$\{?(proxy_add_x_forwarded_for|http_x_forwarded_for)\b", re.IGNORECASE)
FORWARDED_FOR_FIX = (
    "proxy_set_header X-Forwarded-For $remote_addr; (behind a trusted proxy, set set_real_ip_from <proxy> and "
    "real_ip_header X-Forwarded-For so that $remote_addr is the real client)"
)
#: Upload requests that find the locations for media uploads: POST to a prefix, PUT below it.
UPLOAD_URIS = (*MEDIA_UPLOAD_PREFIXES, *(f"{prefix}/example.org/abcdefMEDIA" for prefix in MEDIA_UPLOAD_PREFIXES))
_NGINX_SIZE = re.compile(r"([0-9]+)([kmg]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def nginx_size(value: str) -> int | None:
    """Bytes in an nginx size (``ngx_parse_offset``: digits, then k, m or g in either case; none means
    bytes); None if nginx would reject it (``nginx -t`` says so)."""
    found = _NGINX_SIZE.fullmatch(value)
    return int(found[1]) * _UNITS[found[2].lower()] if found else None


def size_text(size: int) -> str:
    """``size`` bytes in nginx's spelling, in the largest unit that divides it."""
    for unit in ("g", "m", "k"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def is_media_upload(uri: str) -> bool:
    return any(uri == prefix or uri.startswith(prefix + "/") for prefix in MEDIA_UPLOAD_PREFIXES)


def _proxying(model: NginxModel) -> list[Location]:
    return [loc for loc in model.locations if any(d["directive"] == "proxy_pass" for d in loc.block)]


def _example(locations: list[Location]) -> str:
    """``locations`` in a few words: the first, and how many more."""
    if len(locations) == 1:
        return locations[0].label
    return f"{len(locations)} locations: {locations[0].label} and {len(locations) - 1} more"


def forwarded_for(model: NginxModel) -> list[Finding]:
    """Locations that pass Synapse an X-Forwarded-For the client chose: one that adds to the client's
    header or copies it (error), or none at all, so that nginx passes the client's own (warning)."""
    copied: dict[str, list[Location]] = defaultdict(list)
    values: dict[str, str] = {}
    unset: list[Location] = []
    for location in _proxying(model):
        headers = [
            d for d in model.inherited(location, "proxy_set_header") if d["args"][0].lower() == "x-forwarded-for"
        ]
        if not headers:
            unset.append(location)
        for header in headers:
            if len(header["args"]) > 1 and CLIENT_FORWARDED_FOR.search(header["args"][1]):
                copied[where(header)].append(location)
                values[where(header)] = header["args"][1]
    findings = [
        Finding(
            "client_forwarded_for",
            ERROR,
            f"X-Forwarded-For is set to {values[place]}, which keeps what the client sent: Synapse takes the "
            f"leftmost address as the client's, so any client chooses the address Synapse records and rate-limits "
            f"by ({_example(locations)})",
            FORWARDED_FOR_FIX,
            count=len(locations),
            where=place,
        )
        for place, locations in copied.items()
    ]
    if unset:
        findings.append(
            Finding(
                "client_forwarded_for",
                WARNING,
                "X-Forwarded-For is not set (nor inherited: a level with a proxy_set_header of its own inherits "
                "none), so nginx passes the client's own header to Synapse unchanged, and a listener with "
                f"x_forwarded: true believes it ({_example(unset)})",
                FORWARDED_FOR_FIX,
                count=len(unset),
                where=unset[0].label,
            )
        )
    return findings


def body_size(model: NginxModel, uris: Iterable[str], max_upload_bytes: int) -> list[Finding]:
    """Locations other than media uploads whose client_max_body_size lets in more than Synapse takes on
    any route: max(:data:`REQUEST_BODY_LIMIT`, the media upload size). A location serves media uploads
    only if of ``uris`` (and a few upload URIs) it is chosen for uploads and nothing else."""
    limit = max(REQUEST_BODY_LIMIT, max_upload_bytes)
    serves: dict[str, set[bool]] = defaultdict(set)  # location label -> {is an upload}
    for uri in (*UPLOAD_URIS, *uris):
        location, _ = model.select_location(uri)
        if location is not None:
            serves[location.label].add(is_media_upload(uri))
    too_large: dict[tuple[str, str], list[Location]] = defaultdict(list)  # (where, value) -> locations
    for location in _proxying(model):
        if serves[location.label] == {True}:
            continue
        directives = model.inherited(location, "client_max_body_size")
        if not directives:  # nginx's default, 1m, is below Synapse's limit
            continue
        value = directives[-1]["args"][0]
        size = nginx_size(value)
        if size == 0 or (size is not None and size > limit):
            too_large[(where(directives[-1]), value)].append(location)
    return [
        Finding(
            "body_size",
            WARNING,
            f"client_max_body_size {value} lets {_bodies(value)} through to Synapse, which takes at most "
            f"{size_text(limit)} on any route (media uploads included): nginx reads and buffers what Synapse "
            f"refuses ({_example(locations)})",
            f"client_max_body_size {size_text(REQUEST_BODY_LIMIT)}; (Synapse's limit outside media uploads), and "
            f"{size_text(max_upload_bytes)} only in locations for {', '.join(MEDIA_UPLOAD_PREFIXES)}",
            count=len(locations),
            where=place,
        )
        for (place, value), locations in too_large.items()
    ]


def _bodies(value: str) -> str:
    return "bodies of any size" if nginx_size(value) == 0 else f"bodies up to {value}"


def request_uris(urls: Iterable[str]) -> list[str]:
    """The decoded ``$uri`` of each request target nginx would accept."""
    uris = []
    for url in urls:
        try:
            uris.append(parse_request_target(url)[0])
        except BadRequest:
            continue
    return uris
