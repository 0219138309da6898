"""Two real fleets on two hosts (network namespaces with their own DNS and a private CA) federate
over TLS, driven by matrix-nio on each side: invites and joins, messages both ways in order, typing,
receipts, presence, profiles, device keys, media and backfill; every federation request on the
worker `synfleet route` predicts; and no message is lost when a federation sender or reader dies.

Server a: the small profile with two federation readers and two senders. Server b: the small
profile with one federation reader.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from nio import AsyncClient, RoomMessagesResponse, SyncResponse
from synapse.config._base import ShardedWorkerHandlingConfig

from helpers import call
from synfleet.lab import Lab, unavailable_reason
from synfleet.lab.federation import Server, federated_pair, in_host
from synfleet.layout import worker_of_server
from synfleet.model.load import load_spec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.routing.evaluate import evaluate
from synfleet.run.paths import RunPaths, deployed_plan

pytestmark = [pytest.mark.integration, pytest.mark.prerequisite(unavailable_reason())]

PASSWORD = "federation is the point"


@dataclass
class Federation:
    lab: Lab
    a: Server
    b: Server


@pytest.fixture(scope="module")
def federation() -> Iterator[Federation]:
    with world_readable_tempdir("synfleet-fed-") as root, federated_pair(root) as (lab, a, b):
        a.synfleet("user", "add", "alice", "--password", PASSWORD)
        b.synfleet("user", "add", "bob", "--password", PASSWORD)
        yield Federation(lab, a, b)


async def login(server: Server, user: str) -> AsyncClient:
    client = AsyncClient(server.url, f"@{user}:{server.name}", ssl=server.context)  # type: ignore[arg-type]
    response = await client.login(PASSWORD, device_name=f"{user}-federation")
    assert client.access_token, response
    return client


async def sync_until(client: AsyncClient, predicate: Callable[[SyncResponse], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.sync(timeout=2000, since=client.next_batch)
        assert isinstance(response, SyncResponse), response
        if predicate(response):
            return
    raise AssertionError(f"{client.user_id}: sync never showed what was expected")


async def bodies(client: AsyncClient, room: str, prefix: str) -> list[str]:
    """The room's messages starting with ``prefix``, oldest first (paginating backwards from now)."""
    found: list[str] = []
    start = ""
    for _ in range(20):
        page = await client.room_messages(room, start=start, limit=100)
        assert isinstance(page, RoomMessagesResponse), page
        found += [e.body for e in page.chunk if getattr(e, "body", "").startswith(prefix)]
        if not page.end or not page.chunk:
            break
        start = page.end
    return list(reversed(found))


async def wait_for_bodies(
    client: AsyncClient, room: str, prefix: str, expected: list[str], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        got = await bodies(client, room, prefix)
        if got == expected:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"{client.user_id} saw {len(got)} of {len(expected)} {prefix!r} messages: {got[-5:]}")


async def raw(client: AsyncClient, method: str, path: str, data: bytes, content_type: str) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {client.access_token}", "Content-Type": content_type}
    response = await client.send(method, path, data, headers=headers)
    return response.status, await response.read()


def test_two_fleets_talk(federation: Federation) -> None:
    a, b = federation.a, federation.b
    alice_id, bob_id = f"@alice:{a.name}", f"@bob:{b.name}"
    payload = secrets.token_bytes(300_000)

    async def scenario() -> None:
        alice, bob = await login(a, "alice"), await login(b, "bob")
        try:
            await alice.set_displayname("Alice of A")
            await bob.set_displayname("Bob of B")
            await alice.sync(timeout=0)
            await bob.sync(timeout=0)
            # Device keys for alice's device, so that bob's query has something to find.
            keys = {
                "user_id": alice_id,
                "device_id": alice.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {f"curve25519:{alice.device_id}": "x" * 43, f"ed25519:{alice.device_id}": "y" * 43},
                "signatures": {},
            }
            await call(alice, "POST", "/_matrix/client/v3/keys/upload", {"device_keys": keys})
            status, answer = await raw(
                alice, "POST", "/_matrix/media/v3/upload?filename=a.bin", payload, "application/octet-stream"
            )
            assert status == 200, answer
            media = json.loads(answer)["content_uri"].removeprefix("mxc://")

            # alice@a makes a room (room version 12: no server in its ID) and invites bob@b.
            created = await alice.room_create(name="a and b", invite=[bob_id])
            assert hasattr(created, "room_id"), created
            room = created.room_id
            assert ":" not in room, room
            await sync_until(bob, lambda r: room in r.rooms.invite)
            joined = await bob.join(room)
            assert getattr(joined, "room_id", None) == room, joined
            await sync_until(
                alice,
                lambda r: (
                    (
                        room in r.rooms.join
                        and any(
                            getattr(e, "membership", "") == "join" and e.state_key == bob_id
                            for e in r.rooms.join[room].timeline.events
                        )
                    )
                    or bob_id in (alice.rooms[room].users if room in alice.rooms else {})
                ),
            )

            # Messages both ways, in order.
            for i in range(50):
                await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"a2b {i}"})
            await wait_for_bodies(bob, room, "a2b ", [f"a2b {i}" for i in range(50)])
            for i in range(20):
                await bob.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"b2a {i}"})
            await wait_for_bodies(alice, room, "b2a ", [f"b2a {i}" for i in range(20)])

            # Typing, read receipts and presence cross in both directions.
            for sender, receiver, sender_id in ((alice, bob, alice_id), (bob, alice, bob_id)):
                await sender.room_typing(room, True, timeout=30000)
                await sync_until(
                    receiver,
                    lambda r, s=sender_id: any(
                        s in getattr(e, "users", []) for e in r.rooms.join.get(room, _EMPTY).ephemeral
                    ),
                )
                last = (await sender.room_messages(room, limit=1)).chunk[0].event_id
                await call(sender, "POST", f"/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}", {})
                await sync_until(
                    receiver,
                    lambda r, s=sender_id: any(
                        receipt.user_id == s
                        for e in r.rooms.join.get(room, _EMPTY).ephemeral
                        for receipt in getattr(e, "receipts", [])
                    ),
                )
                await sender.set_presence("online", f"hello from {sender_id}")
                await sync_until(
                    receiver,
                    lambda r, s=sender_id: any(e.user_id == s and e.presence == "online" for e in r.presence_events),
                )

            # bob, on b, reads alice's profile and device keys, and downloads her media, all from a.
            profile = await call(bob, "GET", f"/_matrix/client/v3/profile/{alice_id}")
            assert profile["displayname"] == "Alice of A"
            queried = await call(bob, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {alice_id: []}})
            assert alice.device_id in queried["device_keys"][alice_id], queried
            status, body = await raw(bob, "GET", f"/_matrix/client/v1/media/download/{media}", b"", "text/plain")
            assert status == 200 and body == payload

            # A room on b, with history, joined from a: a fetches that history backwards (backfill).
            made = await bob.room_create(name="b's room", invite=[alice_id])
            assert hasattr(made, "room_id"), made
            room_b = made.room_id
            for i in range(30):
                await bob.room_send(room_b, "m.room.message", {"msgtype": "m.text", "body": f"history {i}"})
            await sync_until(alice, lambda r: room_b in r.rooms.invite)
            joined = await alice.join(room_b)
            assert getattr(joined, "room_id", None) == room_b, joined
            await wait_for_bodies(alice, room_b, "history ", [f"history {i}" for i in range(30)])
        finally:
            await alice.close()
            await bob.close()

    in_host(a.host, scenario)

    # On both sides, every federation request reached the worker `synfleet route` predicts.
    for server, peer in ((a, b), (b, a)):
        plan = deployed_plan(RunPaths(server.directory), load_spec(server.directory).fleet)
        origin = {"Authorization": f'X-Matrix origin="{peer.name}",key="ed25519:a_x",sig="s"'}
        federated = ("/_matrix/federation/", "/_matrix/key/")
        lines = [line for line in server.access_log() if line["url"].startswith(federated)]
        assert lines, f"no federation requests reached {server.name}"
        wrong = []
        for line in lines:
            predicted = evaluate(plan, line["method"], line["url"], origin).worker
            served = worker_of_server(line["addr"])
            if served != predicted:
                wrong.append(f"{line['method']} {line['url']}: {served}, predicted {predicted}")
        assert not wrong, "\n".join(wrong)
    # Inbound transactions from one origin all land on one federation reader.
    sends = [line for line in a.access_log() if "/_matrix/federation/v1/send/" in line["url"]]
    readers = {worker_of_server(line["addr"]) for line in sends}
    assert len(readers) == 1 and next(iter(readers)).startswith("federation_reader"), readers
    # b's clients got alice's media from b's media worker, which fetched it from a.
    downloads = [
        line
        for line in b.access_log()
        if "/media/download/" in line["url"] and line["url"].startswith("/_matrix/client/")
    ]
    assert downloads and all(worker_of_server(line["addr"]) == "media1" for line in downloads)
    assert any("/_matrix/federation/v1/media/download/" in line["url"] for line in a.access_log())
    assert any("/_matrix/federation/v1/backfill/" in line["url"] for line in b.access_log())


_EMPTY: Any = type("EmptyRoom", (), {"ephemeral": [], "timeline": type("T", (), {"events": []})()})()


def test_no_message_is_lost_when_a_sender_or_a_reader_dies(federation: Federation) -> None:
    a, b = federation.a, federation.b
    # The sender that owns b on a, as Synapse shards destinations over federation senders.
    senders = [w.name for w in load_spec(a.directory).fleet.workers if w.name.startswith("sender")]
    sharding = ShardedWorkerHandlingConfig(senders)
    owner = next(sender for sender in senders if sharding.should_handle(sender, b.name))
    victims = [(a, owner, "sender"), (b, "federation_reader1", "reader")]

    async def scenario() -> None:
        alice, bob = await login(a, "alice"), await login(b, "bob")
        try:
            await alice.sync(timeout=0)
            await bob.sync(timeout=0)
            created = await alice.room_create(name="faults", invite=[bob.user_id])
            assert hasattr(created, "room_id"), created
            room = created.room_id
            await sync_until(bob, lambda r: room in r.rooms.invite)
            assert getattr(await bob.join(room), "room_id", None) == room
            for server, process, label in victims:
                old = server.pid(process)
                assert old is not None, f"{process} is not running on {server.name}"
                for i in range(40):
                    if i == 10:
                        os.kill(old, signal.SIGKILL)
                    response = await alice.room_send(
                        room, "m.room.message", {"msgtype": "m.text", "body": f"{label} {i}"}
                    )
                    assert hasattr(response, "event_id"), response
                deadline = time.monotonic() + 120
                while (pid := server.pid(process)) in (None, old) and time.monotonic() < deadline:
                    await asyncio.sleep(1)
                assert pid not in (None, old), f"{process} on {server.name} was not restarted"
                # Anything from b tells a that b is reachable again, so a's sender stops backing off.
                await bob.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"after {label}"})
                await wait_for_bodies(bob, room, f"{label} ", [f"{label} {i}" for i in range(40)], timeout=180)
        finally:
            await alice.close()
            await bob.close()

    in_host(a.host, scenario)
