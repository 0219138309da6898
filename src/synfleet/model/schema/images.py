"""The container images compose and Kubernetes run."""

from __future__ import annotations

from pydantic import field_validator

from synfleet.model.schema.values import Section, check_image

OFFICIAL_SYNAPSE_IMAGE = "matrixdotorg/synapse"


class Images(Section):
    """The images docker compose runs; a private registry or mirror goes here. An empty ``synapse``
    means the official image of ``synapse.version``."""

    synapse: str = ""
    nginx: str = "nginx:mainline-alpine-slim"
    postgres: str = "postgres:15-alpine"
    redis: str = "redis:7-alpine"
    prometheus: str = "prom/prometheus:v3.5.0"
    grafana: str = "grafana/grafana:12.2.0"
    coturn: str = "coturn/coturn:4.6.2-debian"  # only with [turn] enabled

    _image = field_validator("synapse", "nginx", "postgres", "redis", "prometheus", "grafana", "coturn")(check_image)

    @field_validator("nginx", "postgres", "redis", "prometheus", "grafana", "coturn")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("must name an image")
        return value
