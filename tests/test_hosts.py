"""A fleet on three hosts (network namespaces on one private network), each started with
`ip netns exec <host> synfleet up --host <name>`: a runs nginx, main, PostgreSQL and Redis; b runs
rooms1 and client_sync1; c runs rooms2 and tasks1 (the event persister). matrix-nio talks to nginx
on a. Every request reaches the worker `synfleet route` predicts; a message persisted on c reaches
its reader through the sync worker on b; host c is lost (every process killed) and comes back with
no acknowledged message lost; a fourth host of the network, not in the fleet, is refused by every
link between the fleet's hosts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from nio import AsyncClient

from flows import PASSWORD, login
from synfleet.lab import Lab, unavailable_reason
from synfleet.lab.netns import pids
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.pki.fleet import Installed
from synfleet.run.paths import RunPaths
from synfleet.system import free_port
from three_hosts import (
    HOSTS,
    SHARES,
    Hosts,
    conversation_across_hosts,
    foreign_identity,
    link_plan,
    outsider_refused,
    probe_links,
    refused,
    sealed_conversation,
    server_of,
    write_fleet,
)

pytestmark = [pytest.mark.integration, pytest.mark.prerequisite(unavailable_reason())]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    with world_readable_tempdir("synfleet-hosts-") as directory, Lab([*HOSTS, "x"]) as lab:
        port = free_port()
        write_fleet(lab, directory, port)
        fleet = Hosts(lab, directory, port)
        started: list[str] = []
        try:
            for host in HOSTS:
                up = fleet.synfleet(host, "up", "--host", host)
                assert up.returncode == 0, f"up --host {host}:\n{up.stdout}{up.stderr}"
                started.append(host)
                print(up.stdout)
            for user in ("alice", "bob", "admin"):
                admin = ["--admin"] if user == "admin" else []
                added = fleet.synfleet("a", "user", "add", user, "--password", PASSWORD, *admin)
                assert added.returncode == 0, added.stderr
            yield fleet
        finally:
            for host in reversed(started):
                fleet.synfleet(host, "down", "--host", host)


def test_each_host_runs_its_share(hosts: Hosts) -> None:
    for host, expected in SHARES.items():
        status = hosts.synfleet(host, "status", "--host", host, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert {p["name"] for p in json.loads(status.stdout)["processes"]} == expected
    # without --host: which host runs what (the lab's hosts share this file system: all run "here")
    placement = hosts.synfleet("a", "status", "--json")
    assert placement.returncode == 0, placement.stdout + placement.stderr
    found = {h["name"]: (set(h["processes"]), h["running_here"]) for h in json.loads(placement.stdout)["hosts"]}
    assert found == {host: (expected, True) for host, expected in SHARES.items()}
    logs = hosts.synfleet("c", "logs", "--host", "c", "-n", "2")
    assert logs.returncode == 0, logs.stderr
    named = {line.split(":")[0] for line in logs.stdout.splitlines()}
    assert SHARES["c"] - {"nginx"} <= named <= SHARES["c"]  # nginx's links have logged nothing yet


def test_conversation_routing_and_replication_across_hosts(hosts: Hosts) -> None:
    conversation_across_hosts(hosts)


def test_outsider_is_refused_by_every_link(hosts: Hosts) -> None:
    outsider_refused(hosts)


def test_a_conversation_crosses_the_network_sealed(hosts: Hosts) -> None:
    sealed_conversation(hosts)


def _admin_token(hosts: Hosts) -> str:
    async def token() -> str:
        admin = await login(hosts, "admin")
        await admin.close()
        return str(admin.access_token)

    return str(hosts.client(token))


def test_links_take_only_their_peers_certificate(hosts: Hosts) -> None:
    """As root on the front's host, with the fleet's certificates: the front's passes inbound links
    (an admin request is served) and no replication link; a host's passes replication links and no
    inbound link; replication and metrics paths are refused on inbound links even with the front's."""
    room = hosts.room_on("rooms1")
    tls = RunPaths(hosts.directory, "a").layout.secret
    identities = {
        "front": [tls(Installed.FRONT.certificate), tls(Installed.FRONT.key)],
        "host": [tls(Installed.HOST.certificate), tls(Installed.HOST.key)],
    }
    paths = [f"/_synapse/admin/v1/rooms/{room}", "/_synapse/replication/ping", "/_synapse/metrics"]
    plan = link_plan(hosts, _admin_token(hosts), identities, paths=paths)
    del plan["redis"], plan["postgres"]
    found = probe_links(hosts, "a", plan)
    inbound = {
        f"{hosts.address_of(n)}:{hosts.spec.fleet.worker(n).inbound_port}" for n in ("client_sync1", "rooms1", "rooms2")
    }
    for name, answer in found.items():
        link, _, rest = name.partition("/")
        path, who = "/" + rest.split(" tls ")[0], rest.split(" tls ")[-1]
        if " plain" in name:
            assert answer.startswith("HTTP/1.1 400"), (name, answer)
        elif link in inbound and who == "front":
            expected = "HTTP/1.1 200" if path.startswith("/_synapse/admin") else "HTTP/1.1 403"
            assert answer.startswith(expected), (name, answer)
        elif link in inbound or who == "front":
            assert answer.startswith("HTTP/1.1 403"), (name, answer)
        else:  # a host on a replication link: Synapse's replication listener answers
            assert not answer.startswith(("HTTP/1.1 400", "HTTP/1.1 403", "error")), (name, answer)


def test_a_local_account_on_the_front_host_gets_nowhere(hosts: Hosts) -> None:
    """``nobody`` on host a, holding an admin's token and the right passwords: no link, Redis or
    PostgreSQL takes it, with no certificate, another CA's, or the front's (it cannot read its
    key); nginx's relays on host a are out of its reach."""
    paths = RunPaths(hosts.directory, "a")
    tls = paths.layout.secret
    relays = [str(p) for d in (paths.layout.relay_dir, paths.layout.inbound_relay_dir) for p in Path(d).glob("*.sock")]
    assert len(relays) >= 5, relays
    identities = {
        "none": None,
        "impostor": foreign_identity(hosts.spec, hosts.directory / "impostor"),
        "front's": [tls(Installed.FRONT.certificate), tls(Installed.FRONT.key)],
        "host's": [tls(Installed.HOST.certificate), tls(Installed.HOST.key)],
    }
    room = hosts.room_on("rooms2")
    plan = link_plan(hosts, _admin_token(hosts), identities, paths=[f"/_synapse/admin/v1/rooms/{room}"], sockets=relays)
    found = probe_links(hosts, "a", plan, account="nobody")
    assert len(found) == 4 * (6 + 2) + 6 + 1 + len(relays)
    assert not refused(found), refused(found)


def _served_issuer(hosts: Hosts, process: str) -> str:
    """The issuer of the certificate ``process``'s inbound link presents, as seen from host a."""
    port = hosts.spec.fleet.worker(process).inbound_port

    async def issuer() -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with (
            socket.create_connection((hosts.address_of(process), port), timeout=5) as raw,
            context.wrap_socket(raw) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
        assert der
        return x509.load_der_x509_certificate(der).issuer.rfc4514_string()

    return str(hosts.client(issuer))


@dataclass
class Sends:
    """Messages sent into ``room`` by alice every ``pause`` seconds, from a thread, while a
    ``with`` block runs: each acknowledged one's event ID and when, and when sends failed."""

    hosts: Hosts
    room: str
    label: str
    pause: float = 0.1
    acknowledged: dict[str, float] = field(default_factory=dict)
    failed: list[float] = field(default_factory=list)

    def __enter__(self) -> Sends:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: self.hosts.client(self._stream))
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(120)

    async def _stream(self) -> None:
        alice = await login(self.hosts, "alice")
        try:
            i = 0
            while not self._stop.is_set():
                body = {"msgtype": "m.text", "body": f"{self.label} {i}"}
                answer = await alice.room_send(self.room, "m.room.message", body)
                if hasattr(answer, "event_id"):
                    self.acknowledged[answer.event_id] = time.monotonic()
                else:
                    self.failed.append(time.monotonic())
                i += 1
                await asyncio.sleep(self.pause)
        finally:
            await alice.close()

    def lost(self) -> set[str]:
        """The acknowledged messages the room no longer has."""

        async def present() -> set[str]:
            alice: AsyncClient = await login(self.hosts, "alice")
            try:
                page = await alice.room_messages(self.room, limit=len(self.acknowledged) + 50)
                return {e.event_id for e in page.chunk}
            finally:
                await alice.close()

        return set(self.acknowledged) - self.hosts.client(present)


def test_certificates_rotate_under_sends_with_none_lost(hosts: Hosts) -> None:
    """The CA replaced in its three steps (a new CA trusted beside the old, every certificate anew
    from it, the old CA retired), each installed on every host, while messages are sent to a room
    on host c: none fails, none is lost, and host c presents a certificate of the new CA."""
    room = hosts.room_on("rooms2")
    before = _served_issuer(hosts, "rooms2")
    with Sends(hosts, room, "rotate", pause=0.05) as sends:
        for step in (["--new-ca"], [], ["--retire"]):
            rotated = hosts.synfleet("a", "certs", "rotate", *step)
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            for host in HOSTS:
                installed = hosts.synfleet(host, "certs", "install", "--host", host)
                assert installed.returncode == 0, installed.stdout + installed.stderr
                time.sleep(1)
        time.sleep(2)
    after = _served_issuer(hosts, "rooms2")
    listing = hosts.synfleet("a", "certs")
    done, failed = len(sends.acknowledged), len(sends.failed)
    print(f"\n[three hosts] rotation: {done} sends acknowledged, {failed} failed\n{listing.stdout}")
    assert not sends.failed
    assert before != after and after in listing.stdout.replace("\n", "")
    assert done > 50 and not sends.lost()


def test_losing_host_c_loses_no_acknowledged_message(hosts: Hosts) -> None:
    room = hosts.room_on("rooms2")
    with Sends(hosts, room, "loss") as sends:
        time.sleep(3)
        lost_at = time.monotonic()
        victims = pids(hosts.lab["c"].netns)
        assert victims, "nothing runs on host c"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        time.sleep(5)
        up = hosts.synfleet("c", "up", "--host", "c")
        assert up.returncode == 0, up.stdout + up.stderr
        back_at = time.monotonic()
        time.sleep(5)
    after = [t for t in sends.acknowledged.values() if t > back_at]
    outage = min(after) - lost_at if after else float("inf")
    print(
        f"\n[three hosts] host c killed ({len(victims)} processes): {len(sends.acknowledged)} sends acknowledged, "
        f"{len(sends.failed)} failed; sends acknowledged again {outage:.1f}s after the loss"
    )
    assert after, "no send succeeded after host c came back"
    missing = sends.lost()
    assert not missing, f"{len(missing)} acknowledged messages lost"
    status = hosts.synfleet("c", "status", "--host", "c")
    assert status.returncode == 0, status.stdout
    routed = [line for line in hosts.access_log() if room[1:] in line["url"] and "/send/" in line["url"]]
    assert routed[-1]["addr"] == server_of(hosts.plan, "rooms2"), routed[-1]
