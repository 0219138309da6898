"""`synfleet user add`: Synapse's shared-secret registration API, on main's UNIX socket."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from synfleet.errors import SynfleetError, UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.render.secrets import Secret
from synfleet.run.paths import RunPaths

REGISTER_PATH = "/_synapse/admin/v1/register"


def registration_mac(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    """HMAC-SHA1 over ``nonce NUL user NUL password NUL admin|notadmin``, as Synapse checks it."""
    message = b"\x00".join(p.encode() for p in (nonce, user, password, "admin" if admin else "notadmin"))
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()


def register_user(
    paths: RunPaths, localpart: str, password: str, admin: bool, socket_path: Path | None = None
) -> dict[str, str]:
    """Create a user with the fleet's shared secret, through main's socket (the native run's, or
    ``socket_path``); returns Synapse's answer (``user_id``, ``access_token``, ...). Errors name the
    reason (e.g. the user exists)."""
    secret_file = paths.directory / SECRETS_DIR / Secret.REGISTRATION_SHARED_SECRET
    try:
        secret = secret_file.read_text().strip()
    except OSError:
        raise UsageError(f"{secret_file}: missing; run `synfleet up --dir {paths.directory}` first") from None
    socket = str(socket_path) if socket_path else paths.layout.inbound_socket("main")
    transport = httpx.HTTPTransport(uds=socket)
    try:
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
            nonce = client.get(REGISTER_PATH).json()["nonce"]
            body = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": registration_mac(secret, nonce, localpart, password, admin),
            }
            response = client.post(REGISTER_PATH, json=body)
    except httpx.TransportError:
        raise SynfleetError(f"main is not answering on {socket}: is the fleet up?") from None
    data = response.json()
    if response.status_code == 200:
        return {key: str(value) for key, value in data.items()}
    if data.get("errcode") == "M_USER_IN_USE":
        raise UsageError(f"user {localpart!r} already exists")
    raise SynfleetError(f"registration failed: {data.get('errcode', response.status_code)}: {data.get('error', '')}")


def register_users(paths: RunPaths, prefix: str, count: int) -> list[tuple[str, str]]:
    """``count`` users ``<prefix>0`` ... with random passwords (load generators' accounts), four
    at a time: each one's user ID and access token."""

    def one(n: int) -> tuple[str, str]:
        answer = register_user(paths, f"{prefix}{n}", f"pw-{prefix}-{n}-{secrets.token_hex(4)}", admin=False)
        return answer["user_id"], answer["access_token"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, range(count)))
