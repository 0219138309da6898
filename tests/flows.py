"""Client flows shared by the end-to-end tests of every deployment (native and compose): a real
client (matrix-nio) through nginx, and the check that nginx sent each request where `synfleet
route` predicts."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from nio import AsyncClient, ToDeviceMessage
from nio.responses import RoomMessagesResponse, SyncResponse

from helpers import call
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import Key

PASSWORD = "correct horse battery"


class Deployment(Protocol):
    """A running fleet as the flows see it: where clients connect, the rooms made so far, the plan
    `synfleet route` uses for it, and nginx's access log."""

    profile: str
    rooms: list[str]

    @property
    def url(self) -> str: ...

    @property
    def plan(self) -> RoutingPlan: ...

    def access_log(self) -> list[dict[str, str]]: ...


async def login(fleet: Deployment, name: str) -> AsyncClient:
    client = AsyncClient(fleet.url, f"@{name}:localhost")
    response = await client.login(PASSWORD, device_name=f"{name}-e2e")
    assert client.access_token, response
    return client


async def sync_until(client: AsyncClient, predicate: Any, timeout: float = 30.0) -> SyncResponse:
    """Sync (varying since and timeout, so Synapse's sync cache is not hit) until ``predicate``."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        response = await client.sync(timeout=1000 + attempt, since=client.next_batch)
        assert isinstance(response, SyncResponse), response
        if predicate(response):
            return response
    raise AssertionError("sync never showed the expected data")


async def conversation(fleet: Deployment) -> dict[str, Any]:
    alice, bob = await login(fleet, "alice"), await login(fleet, "bob")
    try:
        created = await alice.room_create(name="e2e", invite=[])
        room = created.room_id
        assert ":" not in room and len(room) == 44, f"expected a room version 12 ID, got {room}"
        fleet.rooms.append(room)
        assert (await alice.room_invite(room, bob.user_id)).__class__.__name__ == "RoomInviteResponse"
        assert (await bob.join(room)).__class__.__name__ == "JoinResponse"
        await alice.sync(timeout=0)
        await bob.sync(timeout=0)

        sent: dict[str, str] = {}
        for i in range(20):
            for client in (alice, bob):
                body = f"{client.user_id} message {i}"
                response = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
                sent[response.event_id] = body

        # Each user reads the other's 20 messages back through /messages ...
        for reader, writer in ((alice, bob), (bob, alice)):
            page = await reader.room_messages(room, limit=100)
            assert isinstance(page, RoomMessagesResponse), page
            bodies = {e.body for e in page.chunk if getattr(e, "sender", "") == writer.user_id and hasattr(e, "body")}
            assert {f"{writer.user_id} message {i}" for i in range(20)} <= bodies

        # ... and through sync (a fresh sync of the timeline, in pages).
        fresh = AsyncClient(fleet.url, bob.user_id)
        fresh.access_token, fresh.user_id, fresh.device_id = bob.access_token, bob.user_id, bob.device_id
        filter_ = {"room": {"timeline": {"limit": 100}}}
        full = await fresh.sync(timeout=0, sync_filter=filter_, full_state=True)
        assert isinstance(full, SyncResponse), full
        timeline = {e.event_id for e in full.rooms.join[room].timeline.events}
        assert set(sent) <= timeline, f"{len(set(sent) - timeline)} messages missing from sync"
        await fresh.close()

        # Typing, receipts and read markers reach the other user through sync.
        last_event = next(reversed(sent))
        await alice.room_typing(room, True, timeout=10000)
        await sync_until(
            bob,
            lambda r: (
                any(
                    e.__class__.__name__ == "TypingNoticeEvent" and alice.user_id in e.users
                    for e in r.rooms.join.get(room, None).ephemeral
                )
                if room in r.rooms.join
                else False
            ),
        )
        receipt = await bob.update_receipt_marker(room, last_event)
        assert receipt.__class__.__name__ == "UpdateReceiptMarkerResponse", receipt
        await sync_until(
            alice,
            lambda r: (
                room in r.rooms.join
                and any(e.__class__.__name__ == "ReceiptEvent" for e in r.rooms.join[room].ephemeral)
            ),
        )
        markers = await bob.room_read_markers(room, last_event, last_event)
        assert markers.__class__.__name__ == "RoomReadMarkersResponse", markers
        fully_read = await call(
            bob, "GET", f"/_matrix/client/v3/user/{quote(bob.user_id)}/rooms/{quote(room)}/account_data/m.fully_read"
        )
        assert fully_read["event_id"] == last_event

        # Presence set by one user, read by the other.
        assert (await alice.set_presence("online", "running e2e")).__class__.__name__ == "PresenceSetResponse"
        presence = await bob.get_presence(alice.user_id)
        assert presence.presence == "online" and presence.status_msg == "running e2e", presence

        # A to-device message arrives in the recipient's sync.
        token = uuid.uuid4().hex
        sent_to_device = await alice.to_device(
            ToDeviceMessage("org.synfleet.test", bob.user_id, bob.device_id, {"token": token})
        )
        assert sent_to_device.__class__.__name__ == "ToDeviceResponse", sent_to_device
        await sync_until(
            bob,
            lambda r: any(
                getattr(e, "source", {}).get("content", {}).get("token") == token for e in r.to_device_events
            ),
        )

        # Account data and room tags.
        user_path = f"/_matrix/client/v3/user/{quote(alice.user_id)}"
        await call(alice, "PUT", f"{user_path}/account_data/org.synfleet.test", {"value": token})
        assert (await call(alice, "GET", f"{user_path}/account_data/org.synfleet.test")) == {"value": token}
        await call(alice, "PUT", f"{user_path}/rooms/{quote(room)}/tags/m.favourite", {"order": 0.5})
        tags = await call(alice, "GET", f"{user_path}/rooms/{quote(room)}/tags")
        assert tags["tags"] == {"m.favourite": {"order": 0.5}}

        # Media: upload by one user, download by the other, identical bytes.
        payload = secrets.token_bytes(200_000)
        uploaded, _ = await alice.upload(
            lambda *_: payload, content_type="application/octet-stream", filename="blob.bin", filesize=len(payload)
        )
        assert uploaded.content_uri.startswith("mxc://localhost/"), uploaded
        downloaded = await bob.download(uploaded.content_uri)
        assert downloaded.body == payload, downloaded

        # Device keys: upload one-time keys, query the other user's devices.
        keys = {"one_time_keys": {"curve25519:AAAAAQ": "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28"}}
        counts = await call(bob, "POST", "/_matrix/client/v3/keys/upload", keys)
        assert counts["one_time_key_counts"].get("curve25519") == 1
        queried = await call(alice, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {bob.user_id: []}})
        assert bob.user_id in queried["device_keys"]

        # More rooms, to see them spread over the room workers.
        for i in range(11):
            other = (await alice.room_create(name=f"spread {i}")).room_id
            fleet.rooms.append(other)
            await alice.room_send(other, "m.room.message", {"msgtype": "m.text", "body": "hello"})
            await alice.room_messages(other, limit=5)
        return {"room": room, "sent": sent}
    finally:
        await alice.close()
        await bob.close()


def worker_of(address: str, plan: RoutingPlan | None = None) -> str:
    """The worker nginx used: by its inbound socket, or (on another host) its address in ``plan``."""
    remote = {
        s: w for u in (plan.upstreams.values() if plan else ()) for s, w in zip(u.servers, u.workers, strict=True)
    }
    if address in remote:
        return remote[address]
    found = re.fullmatch(r"unix:.*/synapse_inbound_(?P<worker>[a-z0-9_]+)\.sock", address)
    assert found, f"nginx used {address!r}: not one worker (a retry, or no upstream)"
    return found["worker"]


def check_routing(fleet: Deployment) -> None:
    """Every request nginx proxied went to the worker `synfleet route` predicts, and room requests
    spread over the room workers."""
    plan = fleet.plan
    lines = [line for line in fleet.access_log() if line["addr"] != "-"]
    assert len(lines) > 60
    room_workers: Counter[str] = Counter()
    mismatches = []
    for line in lines:
        decision = evaluate(plan, line["method"], line["url"])
        upstream = plan.upstreams[decision.upstream or ""]
        rule = plan.rule(decision.rule or "")
        # Without the request's token the prediction is exact only where it does not depend on it.
        assert not upstream.hashed or rule.key is Key.ROOM, f"{decision.rule}: hashed by {rule.key}"
        served = worker_of(line["addr"], plan)
        if served != decision.worker:
            mismatches.append(
                f"{line['method']} {line['url']}: nginx used {served}, synfleet route says {decision.worker}"
            )
        if decision.target == "rooms":
            room_workers[served] += 1
    assert not mismatches, "\n".join(mismatches)
    print(
        f"\n[{fleet.profile}] {len(lines)} proxied requests, all on the predicted worker; room requests per "
        f"worker: {dict(sorted(room_workers.items()))}"
    )
    expected_room_workers = len(plan.upstreams["synapse_inbound_room_workers"].workers)
    assert len(room_workers) >= min(2, expected_room_workers), "room requests did not spread over room workers"
    owners = {plan.upstreams["synapse_inbound_room_workers"].worker_for(room[1:]) for room in fleet.rooms}
    assert len(owners) >= 2


def socket_healthy(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(1)
            conn.connect(str(path))
            conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            return b" 200 " in conn.recv(64)
    except OSError:
        return False


async def new_room(fleet: Deployment, name: str) -> str:
    alice = await login(fleet, "alice")
    try:
        created = await alice.room_create(name=name)
        fleet.rooms.append(created.room_id)
        return str(created.room_id)
    finally:
        await alice.close()


async def send_stream(fleet: Deployment, room: str, kill: Any, count: int = 120) -> tuple[dict[str, str], int]:
    """Send ``count`` messages, calling ``kill`` after 20; every acknowledged one must be in the room
    exactly once (nginx may have retried a send on another worker)."""
    alice = await login(fleet, "alice")
    acknowledged: dict[str, str] = {}
    failures = 0
    try:
        for i in range(count):
            if i == 20:
                kill()
            body = f"stream {i}"
            response = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            if hasattr(response, "event_id"):
                acknowledged[response.event_id] = body
            else:
                failures += 1
            await asyncio.sleep(0.05)
        page = await alice.room_messages(room, limit=count + 10)
        present = {e.event_id for e in page.chunk}
        missing = set(acknowledged) - present
        assert not missing, f"{len(missing)} acknowledged messages are missing"
        bodies = Counter(body for e in page.chunk if (body := getattr(e, "body", "")).startswith("stream "))
        assert not [body for body, seen in bodies.items() if seen > 1], "a retried send was stored twice"
    finally:
        await alice.close()
    return acknowledged, failures


def check_serves_again(fleet: Deployment, room: str, victim: str) -> None:
    """The restarted worker serves its rooms again: nginx goes back to it for the next send."""

    async def send_once() -> None:
        alice = await login(fleet, "alice")
        try:
            response = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "after"})
            assert hasattr(response, "event_id"), response
        finally:
            await alice.close()

    asyncio.run(send_once())
    sends = [line for line in fleet.access_log() if room[1:] in line["url"] and "/send/" in line["url"]]
    assert worker_of(sends[-1]["addr"]) == victim


def check_rooms_still_there(fleet: Deployment) -> None:
    """After a restart of the whole fleet: alice is in every room made so far, with its messages."""

    async def rooms_still_there() -> None:
        alice = await login(fleet, "alice")
        try:
            joined = await alice.joined_rooms()
            assert set(fleet.rooms) <= set(joined.rooms)
            page = await alice.room_messages(fleet.rooms[0], limit=300)
            assert any(getattr(e, "body", "").endswith("message 19") for e in page.chunk)
        finally:
            await alice.close()

    asyncio.run(rooms_still_there())
