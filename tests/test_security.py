"""The rendered nginx keeps the admin API and replication private, through proxies too."""

from __future__ import annotations

import http.client

import pytest

from helpers import fleet_case, live_nginx
from synfleet.nginx.binary.harness import FORWARDED_HEADER, Probe, send_all
from synfleet.routing.evaluate import evaluate

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
