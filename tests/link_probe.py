"""Knock on a fleet's links between hosts the way someone without the fleet's certificates would:
run as a script (``python link_probe.py JSON``) by any account, in any lab host, it prints what
each attempt got, as JSON. The JSON names the ``http`` links (address, port) and the ``paths`` to
ask each for (with an access ``token``), ``redis`` and ``postgres`` (address, port, and the
passwords), ``identities``: the client certificates to try by name (``null`` for none; else paths
of a certificate and its key), and ``sockets`` to connect to. Only the standard library and
psycopg2, so that an unprivileged account can run it."""

from __future__ import annotations

import json
import socket
import ssl
import sys
from typing import Any

TIMEOUT = 5


def _context(identity: list[str] | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the outsider does not know the fleet's CA either
    if identity:
        context.load_cert_chain(identity[0], identity[1])
    return context


def _exchange(address: str, port: int, payload: bytes, identity: list[str] | None, tls: bool = True) -> str:
    """The first line of the answer to ``payload``, or what failed (the handshake, the connection)."""
    try:
        with socket.create_connection((address, port), timeout=TIMEOUT) as raw:
            conn: socket.socket = _context(identity).wrap_socket(raw) if tls else raw
            conn.sendall(payload)
            answer = b""
            while b"\n" not in answer:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer.split(b"\r\n")[0].decode(errors="replace") or "closed"
    except (OSError, ssl.SSLError) as error:
        return f"error: {type(error).__name__}: {error}"


def _postgres(target: dict[str, Any], identity: list[str] | None) -> str:
    import psycopg2

    options: dict[str, Any] = {"sslmode": "require"}
    if identity:
        options.update(sslcert=identity[0], sslkey=identity[1])
    try:
        psycopg2.connect(
            host=target["address"],
            port=target["port"],
            user=target["user"],
            password=target["password"],
            dbname=target["database"],
            connect_timeout=TIMEOUT,
            **options,
        ).close()
    except psycopg2.OperationalError as error:
        return f"error: {str(error).strip()}"
    return "connected"


def probe(plan: dict[str, Any]) -> dict[str, str]:
    """Every attempt of ``plan``, by a name saying what was tried."""
    found = {}

    def request(path: str) -> bytes:
        lines = [f"GET {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {plan['token']}"]
        lines += ["X-Forwarded-For: 127.0.0.1", "Connection: close", "", ""]
        return "\r\n".join(lines).encode()

    redis = plan.get("redis")
    for name, identity in plan["identities"].items():
        for address, port in plan["http"]:
            for path in plan["paths"]:
                found[f"{address}:{port}{path} tls {name}"] = _exchange(address, port, request(path), identity)
        if redis:
            command = f"AUTH {redis['password']}\r\nPING\r\n".encode()
            found[f"redis tls {name}"] = _exchange(redis["address"], redis["port"], command, identity)
        if plan.get("postgres"):
            found[f"postgres {name}"] = _postgres(plan["postgres"], identity)
    for address, port in plan["http"]:
        found[f"{address}:{port} plain"] = _exchange(address, port, request(plan["paths"][0]), None, tls=False)
    if redis:
        command = f"AUTH {redis['password']}\r\n".encode()
        found["redis plain"] = _exchange(redis["address"], redis["port"], command, None, tls=False)
    for path in plan.get("sockets", []):
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(TIMEOUT)
                conn.connect(path)
            found[f"socket {path}"] = "connected"
        except OSError as error:
            found[f"socket {path}"] = f"error: {type(error).__name__}"
    return found


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
