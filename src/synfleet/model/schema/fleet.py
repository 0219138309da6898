"""The whole fleet file: its sections, and the checks that span several of them."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from synfleet.model.fleet import Fleet, Stream
from synfleet.model.ports import FEDERATION_PORT
from synfleet.model.resolve import resolve
from synfleet.model.schema.federation import Federation
from synfleet.model.schema.front import Access, Listen, Tls
from synfleet.model.schema.hosts import (
    Host,
    Transport,
    check_hosts,
    check_placement,
    check_transport_ports,
    ports_taken,
)
from synfleet.model.schema.images import OFFICIAL_SYNAPSE_IMAGE, Images
from synfleet.model.schema.metrics import Metrics
from synfleet.model.schema.resources import Resources, check_resource_groups
from synfleet.model.schema.storage import Database, Redis
from synfleet.model.schema.synapse import Media, Synapse
from synfleet.model.schema.turn import Turn, check_turn
from synfleet.model.schema.values import Section, check_server_name
from synfleet.model.schema.workers import (
    Routing,
    Workers,
    check_media_writers,
    check_stream_writers,
    check_writers_serve_http,
)


class FleetSpec(Section):
    """The whole fleet file."""

    server_name: str
    public_baseurl: str = ""
    listen: Listen = Field(default_factory=Listen)
    tls: Tls = Field(default_factory=Tls)
    access: Access = Field(default_factory=Access)
    federation: Federation = Field(default_factory=Federation)
    workers: Workers = Field(default_factory=Workers)
    stream_writers: dict[Annotated[Stream, Field(strict=False)], list[str]] = Field(default_factory=dict)
    routing: Routing = Field(default_factory=Routing)
    metrics: Metrics = Field(default_factory=Metrics)
    media: Media = Field(default_factory=Media)
    database: Database = Field(default_factory=Database)
    redis: Redis = Field(default_factory=Redis)
    turn: Turn = Field(default_factory=Turn)
    synapse: Synapse = Field(default_factory=Synapse)
    images: Images = Field(default_factory=Images)
    resources: dict[str, Resources] = Field(default_factory=dict)
    hosts: dict[str, Host] = Field(default_factory=dict)
    placement: dict[str, str | list[str]] = Field(default_factory=dict)
    transport: Transport = Field(default_factory=Transport)

    _server_name = field_validator("server_name")(check_server_name)
    _writers = field_validator("stream_writers")(check_stream_writers)
    _resource_groups = field_validator("resources")(check_resource_groups)
    _hosts = field_validator("hosts")(check_hosts)

    @field_validator("public_baseurl")
    @classmethod
    def _baseurl(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/\s]+/(?:[^\s]*)", value):
            raise ValueError(f"must be an http(s) URL ending in /, such as https://matrix.example.org/, got {value!r}")
        return value

    @model_validator(mode="after")
    def _across_sections(self) -> Self:
        count = len(self.fleet.workers)
        check_writers_serve_http(self.fleet, self.stream_writers)
        check_media_writers(self.fleet, self.stream_writers)
        self.metrics.check_ports(count)
        check_transport_ports(self, count)
        check_turn(self, {key: ports for key, ports in ports_taken(self, count).items() if not key.startswith("turn.")})
        check_placement(self)
        return self

    @cached_property
    def fleet(self) -> Fleet:
        """The model this file describes, resolved once (:func:`synfleet.model.resolve.resolve`)."""
        return resolve(self)

    @property
    def baseurl(self) -> str:
        return self.public_baseurl or f"https://{self.server_name}/"

    @property
    def public_host(self) -> str:
        """The host clients and other servers connect to (public_baseurl's, else server_name's)."""
        return urlsplit(self.baseurl).hostname or self.server_name

    @property
    def federation_address(self) -> str:
        """Where other servers reach this one: the public host on nginx's HTTPS port."""
        return f"{self.public_host}:{self.listen.https_port}"

    @property
    def delegated(self) -> bool:
        """Other servers cannot find this one from server_name alone (its host, port 8448): nginx
        serves /.well-known/matrix/server to say where it is."""
        found = self.server_name if ":" in self.server_name else f"{self.server_name}:{FEDERATION_PORT}"
        return self.federation_address != found

    @property
    def synapse_image(self) -> str:
        return self.images.synapse or f"{OFFICIAL_SYNAPSE_IMAGE}:v{self.synapse.version}"

    def resources_for(self, group: str) -> Resources:
        return self.resources.get(group) or self.resources.get("default") or Resources.model_validate({})
