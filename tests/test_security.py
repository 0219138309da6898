"""The rendered nginx keeps the admin API and replication private, through proxies too."""

from __future__ import annotations

import asyncio
import http.client
import os
import time

import pytest

from helpers import LiveNginx, fleet_case, live_nginx
from synfleet.nginx.binary.harness import FORWARDED_HEADER, Probe, send_all
from synfleet.routing.evaluate import evaluate
from synfleet.system import process_tree_memory

ADMIN = "/_synapse/admin/v1/users/@alice:example.org"


@pytest.mark.integration
def test_admin_api_checks_the_real_client_behind_a_trusted_proxy() -> None:
    fleet = fleet_case("behind_proxy")  # a trusted proxy on 127.0.0.1; admins on 10.0.0.0/8
    probes = [
        Probe("GET", ADMIN, (("X-Forwarded-For", "203.0.113.7"),)),  # public client: denied
        # A public client claiming an admin address: the proxy appends the real one, which counts.
        Probe("GET", ADMIN, (("X-Forwarded-For", "10.1.2.3, 203.0.113.7"),)),
        Probe("GET", ADMIN, (("X-Forwarded-For", "10.1.2.3"),)),  # admin network: allowed
        Probe("GET", ADMIN),  # the proxy itself is not on the allow list
        Probe("GET", "/_synapse/admin/v1/media/example.org/abc", (("X-Forwarded-For", "198.51.100.1"),)),
        Probe("GET", "/_matrix/client/versions", (("X-Forwarded-For", "203.0.113.7"),)),  # public API stays open
    ]
    with live_nginx(fleet) as live:
        answers = send_all(live.port, probes)
    assert [status for status, _ in answers] == [403, 403, 200, 403, 403, 200]
    assert answers[2][1] == "main" and answers[5][1] == "client_reader1"
    for probe, (status, _) in zip(probes, answers, strict=True):
        assert (evaluate(live.plan, probe.method, probe.url, dict(probe.headers)).status or 200) == status


@pytest.mark.integration
def test_forwarded_for_is_ignored_from_untrusted_peers() -> None:
    with live_nginx(fleet_case("untrusted_forwarded_for")) as live:
        ((status, worker),) = send_all(live.port, [Probe("GET", ADMIN, (("X-Forwarded-For", "10.9.9.9"),))])
    assert (status, worker) == (403, None)


@pytest.mark.integration
@pytest.mark.parametrize(
    "url",
    [
        "/_synapse/replication/send_event/$e/t1",
        "/_synapse/replication/presence_set_state/@u:s",
        "//_synapse//replication/x",
        "/_synapse/%72eplication/x",
        "/_matrix/../_synapse/replication/x",
        "/_synapse/metrics",
    ],
)
def test_replication_and_metrics_are_never_proxied(url: str) -> None:
    with live_nginx(fleet_case("behind_proxy_loopback_admin")) as live:
        answers = send_all(live.port, [Probe("GET", url), Probe("POST", url, (("X-Forwarded-For", "127.0.0.1"),))])
    assert answers == [(404, None), (404, None)]
    assert evaluate(live.plan, "GET", url).status == 404


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "sent", "settled"),
    [
        ("untrusted_forwarded_for", "9.9.9.9", "127.0.0.1"),  # no trusted proxy: the peer, whatever it claims
        ("behind_proxy", "203.0.113.7", "203.0.113.7"),  # the trusted proxy's word
        ("behind_proxy", "9.9.9.9, 203.0.113.7", "203.0.113.7"),  # what the client wrote before the proxy: ignored
    ],
)
def test_synapse_gets_the_address_nginx_settled_on_and_nothing_else(case: str, sent: str, settled: str) -> None:
    with live_nginx(fleet_case(case)) as live:
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        connection.request("GET", "/_matrix/client/versions", headers={"X-Forwarded-For": sent})
        response = connection.getresponse()
        response.read()
        connection.close()
        live.nginx.stop()  # flushes the access log
        logged = (live.directory / "logs" / "access.log").read_text().split()[0]
    assert response.status == 200
    assert response.getheader(FORWARDED_HEADER) == settled == logged


def _socket_of(live: LiveNginx, worker: str) -> str:
    return next(
        server.removeprefix("unix:")
        for upstream in live.plan.upstreams.values()
        for name, server in zip(upstream.workers, upstream.servers, strict=True)
        if name == worker
    )


@pytest.mark.integration
def test_bodies_of_strangers_spool_to_disk_not_to_nginxs_memory() -> None:
    """200 clients that have not logged in each send /login a 12 MB body (under Synapse's limit), and
    the worker takes its time: nginx holds every body, in files of its workers', not in RAM."""
    clients, size = 200, 12 * 1024 * 1024
    login = "/_matrix/client/v3/login"
    with live_nginx(fleet_case("seed")) as live:
        worker = evaluate(live.plan, "POST", login).worker
        assert worker is not None and live.nginx.process is not None
        path = _socket_of(live, worker)
        before = process_tree_memory({"nginx": live.nginx.process.pid})["nginx"].rss

        async def hold() -> tuple[int, list[bytes]]:
            accepted: list[asyncio.StreamWriter] = []

            async def stall(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                accepted.append(writer)  # reads nothing, answers nothing

            os.unlink(path)  # the worker's stub gives way to one that never answers
            server = await asyncio.start_unix_server(stall, path=path)
            os.chmod(path, 0o666)
            head = f"POST {login} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n".encode()
            body = b"x" * size

            async def send() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
                writer.write(head)
                writer.write(body)
                await writer.drain()
                answer = await reader.read()
                writer.close()
                return answer

            senders = [asyncio.ensure_future(send()) for _ in range(clients)]
            deadline = time.monotonic() + 120
            while len(accepted) < clients and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            held = process_tree_memory({"nginx": live.nginx.process.pid})["nginx"].rss
            reached = len(accepted)
            for writer in accepted:
                writer.close()
            server.close()
            answers = await asyncio.gather(*senders)
            assert reached == clients, f"only {reached} of {clients} bodies reached the worker"
            return held, answers

        held, answers = asyncio.run(hold())
    grown = (held - before) // 1024
    print(f"nginx holding {clients} bodies of {size // 2**20} MiB: {grown} MiB more resident memory")
    assert all(answer.startswith(b"HTTP/1.1 502") for answer in answers)
    assert grown < 128, f"nginx holds {grown} MiB for {clients} bodies in flight"
