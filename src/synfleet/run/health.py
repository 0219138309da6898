"""Is a process ready? Each kind of process answers on its own socket."""

from __future__ import annotations

import os
import socket
import struct

import httpx

from synfleet.render.services import HEALTH_PATH, Health, HealthKind
from synfleet.run.ownership import holds_listener


def synapse_health(socket_path: str, timeout: float = 2.0) -> bool:
    """GET /health over the process's UNIX socket answers 200."""
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), timeout=timeout) as client:
            return client.get(f"http://localhost{HEALTH_PATH}").status_code == 200
    except httpx.HTTPError:
        return False


def _unix_exchange(path: str, payload: bytes, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        if payload:
            conn.sendall(payload)
            return conn.recv(64)
        return b""


def is_healthy(health: Health, pid: int, timeout: float = 2.0) -> bool:
    """``health`` answers, and for a listener the answering socket is process ``pid``'s."""
    try:
        match health.kind:
            case HealthKind.HTTP:
                return synapse_health(health.target, timeout)
            case HealthKind.REDIS:  # one that asks for its password (a fleet on several hosts) is up too
                return _unix_exchange(health.target, b"PING\r\n", timeout).startswith((b"+PONG", b"-NOAUTH"))
            case HealthKind.POSTGRES:
                return postgres_ready(health.target, health.user, health.database)
            case HealthKind.RUNNING:
                return True
            case HealthKind.LISTENER if not health.port:
                _unix_exchange(health.target, b"", timeout)
                return True
            case HealthKind.LISTENER:
                with socket.create_connection((health.target, health.port), timeout=timeout):
                    return holds_listener(pid, health.port)
            case HealthKind.STUN:
                return stun_answers(health.target, health.port, timeout)
    except OSError:
        return False


#: STUN's magic cookie (RFC 5389), and the types of a binding request and its success response.
STUN_COOKIE = 0x2112A442
STUN_BINDING_REQUEST, STUN_BINDING_SUCCESS = 0x0001, 0x0101


def stun_answers(address: str, port: int, timeout: float) -> bool:
    """A STUN binding request over UDP to ``address``:``port`` gets its success response."""
    transaction = os.urandom(12)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as conn:
        conn.settimeout(timeout)
        conn.sendto(struct.pack("!HHI", STUN_BINDING_REQUEST, 0, STUN_COOKIE) + transaction, (address, port))
        answer = conn.recv(2048)
    return answer[:2] == struct.pack("!H", STUN_BINDING_SUCCESS) and answer[8:20] == transaction


def postgres_ready(socket_dir: str, user: str, database: str) -> bool:
    """The server takes connections. As with pg_isready, a server that asks for the password (which
    this check does not send) is ready: it does for Synapse's role, to Synapse's database."""
    import psycopg2

    try:
        psycopg2.connect(host=socket_dir, dbname=database, user=user, connect_timeout=2).close()
    except psycopg2.OperationalError as exc:
        return "password" in str(exc)
    return True
