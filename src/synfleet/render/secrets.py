"""Secrets: generated once with a CSPRNG, kept across re-renders, readable by the owner only."""

from __future__ import annotations

import base64
import secrets
import string
from enum import StrEnum
from pathlib import Path

from synfleet.errors import UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.schema import FleetSpec
from synfleet.pki.fleet import FleetAuthority
from synfleet.render.files import create_file


class Secret(StrEnum):
    """Every secret of a fleet, named as its file in ``D/secrets``: random tokens, and last the
    signing key (ed25519, in Synapse's format)."""

    REGISTRATION_SHARED_SECRET = "registration_shared_secret"
    MACAROON_SECRET_KEY = "macaroon_secret_key"
    FORM_SECRET = "form_secret"
    WORKER_REPLICATION_SECRET = "worker_replication_secret"
    POSTGRES_PASSWORD = "postgres_password"  # Synapse's role's
    # The superuser's, which the official PostgreSQL image (compose, a Kubernetes trial) wants; it
    # logs in on the socket only, as the image's account, never with it.
    POSTGRES_SUPERUSER_PASSWORD = "postgres_superuser_password"
    REDIS_PASSWORD = "redis_password"  # asked for when Redis takes connections from other hosts
    GRAFANA_ADMIN_PASSWORD = "grafana_admin_password"
    SIGNING_KEY = "signing.key"


#: The secrets Synapse reads from files (its config names them as ``*_path``): the only ones its
#: processes are given as files. The database password is in its config; PostgreSQL's superuser's
#: and Grafana's go only to those services.
SYNAPSE_FILES = (
    Secret.SIGNING_KEY,
    Secret.MACAROON_SECRET_KEY,
    Secret.FORM_SECRET,
    Secret.REGISTRATION_SHARED_SECRET,
    Secret.WORKER_REPLICATION_SECRET,
    Secret.REDIS_PASSWORD,
)


def _signing_key() -> str:
    """An ed25519 signing key in Synapse's format: ``ed25519 <version> <unpadded base64 seed>``."""
    version = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 {version} {seed}\n"


def ensure_secrets(directory: Path, spec: FleetSpec | None = None) -> dict[str, str]:
    """Create any missing secret under ``directory/secrets``; return all of them by name. With
    ``spec`` of a fleet on several hosts, also the fleet's CA and certificates (``secrets/tls``)."""
    folder = directory / SECRETS_DIR
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        values: dict[str, str] = {}
        for name in Secret:
            path = folder / name
            if not path.exists():
                create_file(path, _signing_key() if name is Secret.SIGNING_KEY else secrets.token_urlsafe(32) + "\n")
            values[name] = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"{folder}: cannot write secrets: {exc.strerror}") from None
    if spec is not None and spec.hosts:
        FleetAuthority(directory).ensure(spec)
    return values
