"""Ask real nginx where it routes requests: stub upstreams on every socket, and requests sent to it.

Each stub answers every request with ``200`` and its own worker name in a header and as the body,
so a request's response says which worker nginx chose; another header repeats the
X-Forwarded-For nginx sent, the client address Synapse would record. Used by the differential tests and by
``synfleet audit``.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

WORKER_HEADER = "X-Synfleet-Worker"
FORWARDED_HEADER = "X-Synfleet-Forwarded-For"


class StubUpstreams:
    """HTTP/1.1 servers with keepalive on UNIX sockets, each answering with its name."""

    def __init__(self, sockets: Mapping[str, str]) -> None:
        self._sockets = dict(sockets)  # socket path -> name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.AbstractServer] = []

    async def _serve(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = name.encode()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                is_head = head.startswith(b"HEAD ")
                length = 0
                forwarded = b""
                for line in head.split(b"\r\n")[1:]:
                    field, _, value = line.partition(b":")
                    if field.strip().lower() == b"content-length":
                        length = int(value.strip())
                    if field.strip().lower() == b"x-forwarded-for":
                        forwarded = value.strip()
                if length:
                    await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"{WORKER_HEADER}: {name}\r\n{FORWARDED_HEADER}: ".encode()
                    + forwarded
                    + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + (b"" if is_head else body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _start(self) -> None:
        for path, name in self._sockets.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            server = await asyncio.start_unix_server(functools.partial(self._serve, name), path=path)
            os.chmod(path, 0o666)
            self._servers.append(server)

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    def __enter__(self) -> StubUpstreams:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        for path in self._sockets:
            Path(path).unlink(missing_ok=True)


@dataclass(frozen=True)
class Probe:
    """One request to send: method, raw target (sent byte for byte), headers."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()


def send_all(port: int, probes: Iterable[Probe]) -> list[tuple[int, str | None]]:
    """Send each probe over one keepalive connection; (status, worker that answered or None)."""
    results: list[tuple[int, str | None]] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for probe in probes:
            connection.putrequest(probe.method, probe.url, skip_accept_encoding=True)
            for name, value in probe.headers:
                connection.putheader(name, value)
            if probe.method in ("POST", "PUT"):
                connection.putheader("Content-Length", "2")
                connection.endheaders(b"{}")
            else:
                connection.endheaders()
            response = connection.getresponse()
            response.read()
            results.append((response.status, response.getheader(WORKER_HEADER)))
            if response.will_close:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    finally:
        connection.close()
    return results
