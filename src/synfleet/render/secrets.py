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
    # The media bucket's credentials (media.store = "s3"): give the store's own by writing these
    # files before `render` or `up`, or give the store these generated ones (a MinIO, say).
    S3_ACCESS_KEY_ID = "s3_access_key_id"
    S3_SECRET_ACCESS_KEY = "s3_secret_access_key"
    # Signs the TURN credentials Synapse hands out; coturn checks them with it ([turn] enabled).
    TURN_SHARED_SECRET = "turn_shared_secret"
    SIGNING_KEY = "signing.key"


#: Made only for a fleet that uses them.
BUCKET_SECRETS = (Secret.S3_ACCESS_KEY_ID, Secret.S3_SECRET_ACCESS_KEY)
TURN_SECRETS = (Secret.TURN_SHARED_SECRET,)


def fleet_uses(name: Secret, spec: FleetSpec | None) -> bool:
    """Whether the fleet of ``spec`` has the secret ``name``: the bucket's credentials only with
    media in a bucket, TURN's only with TURN enabled; without ``spec``, what every fleet has."""
    if name in BUCKET_SECRETS:
        return spec is not None and spec.media.in_bucket
    if name in TURN_SECRETS:
        return spec is not None and spec.turn.enabled
    return True


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
    Secret.TURN_SHARED_SECRET,
)


def synapse_secrets(spec: FleetSpec) -> tuple[Secret, ...]:
    """The :data:`SYNAPSE_FILES` the fleet of ``spec`` has (the ones its Synapse config may name)."""
    return tuple(name for name in SYNAPSE_FILES if fleet_uses(name, spec))


def _signing_key() -> str:
    """An ed25519 signing key in Synapse's format: ``ed25519 <version> <unpadded base64 seed>``."""
    version = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 {version} {seed}\n"


def _new(name: Secret) -> str:
    if name is Secret.SIGNING_KEY:
        return _signing_key()
    if name is Secret.S3_ACCESS_KEY_ID:  # as S3 writes them: 20 capitals and digits
        return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20)) + "\n"
    return secrets.token_urlsafe(32) + "\n"


def ensure_secrets(directory: Path, spec: FleetSpec | None = None) -> dict[str, str]:
    """Create any missing secret under ``directory/secrets``; return all of them by name. With
    ``spec``, also those only its fleet uses: the media bucket's credentials, TURN's, and on several hosts
    the fleet's CA and certificates (``secrets/tls``)."""
    folder = directory / SECRETS_DIR
    wanted = [name for name in Secret if fleet_uses(name, spec)]
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        values: dict[str, str] = {}
        for name in Secret:
            path = folder / name
            if not path.exists() and name in wanted:
                create_file(path, _new(name))
            if path.exists():
                values[name] = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"{folder}: cannot write secrets: {exc.strerror}") from None
    if spec is not None and spec.hosts:
        FleetAuthority(directory).ensure(spec)
    return values
