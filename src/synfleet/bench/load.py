"""The load `synfleet bench` puts on a fleet: an asyncio Matrix client mix over nginx.

Every user long-polls /sync; every user sends messages (closed loop, short think time) to rooms it
is in, sometimes with a typing notice first and a read receipt after; one task uploads media. Send
latency is measured to the 200; delivery latency from the send to the moment another member's
sync returns the event (same clock: the send time travels in the event).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx

SYNC_FILTER = json.dumps(
    {"room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": True}}, "presence": {"not_types": ["*"]}},
    separators=(",", ":"),
)
SENT_AT = "org.synfleet.sent_ns"


@dataclass
class BenchUser:
    user_id: str
    token: str
    rooms: list[str] = field(default_factory=list)
    since: str = ""


@dataclass
class LoadResult:
    duration: float
    sent: int = 0
    requests: int = 0
    send_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class Load:
    def __init__(self, base_url: str, users: list[BenchUser], seed: int = 1) -> None:
        self.base_url = base_url
        self.users = users
        self.rng = random.Random(seed)
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=len(users) * 3 + 10)
        )
        self.recording = False
        self.result = LoadResult(0.0)

    async def request(
        self, kind: str, user: BenchUser, method: str, path: str, **kwargs: object
    ) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {user.token}"}
        try:
            response = await self.client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            if self.recording:
                self.result.errors[f"{kind}: {type(exc).__name__}"] += 1
            return None
        if self.recording:
            self.result.requests += 1
            if response.status_code != 200:
                self.result.errors[f"{kind}: HTTP {response.status_code}"] += 1
        return response if response.status_code == 200 else None

    async def sync_once(self, user: BenchUser, timeout_ms: int) -> None:
        params = {"filter": SYNC_FILTER, "timeout": str(timeout_ms)}
        if user.since:
            params["since"] = user.since
        response = await self.request("sync", user, "GET", "/_matrix/client/v3/sync", params=params)
        if response is None:
            await asyncio.sleep(0.5)
            return
        body = response.json()
        user.since = body["next_batch"]
        now = time.monotonic_ns()
        for room in body.get("rooms", {}).get("join", {}).values():
            for event in room.get("timeline", {}).get("events", []):
                sent = event.get("content", {}).get(SENT_AT)
                if sent and event.get("sender") != user.user_id and self.recording:
                    self.result.delivery_ms.append((now - int(sent)) / 1e6)

    async def syncer(self, user: BenchUser) -> None:
        while True:
            await self.sync_once(user, 10_000)

    async def sender(self, user: BenchUser) -> None:
        rng = random.Random(self.rng.random())
        while True:
            room = rng.choice(user.rooms)
            path_room = quote(room, safe="")
            if rng.random() < 0.1:
                await self.request(
                    "typing",
                    user,
                    "PUT",
                    f"/_matrix/client/v3/rooms/{path_room}/typing/{quote(user.user_id)}",
                    json={"typing": True, "timeout": 5000},
                )
            started = time.monotonic_ns()
            content = {"msgtype": "m.text", "body": "bench " + secrets.token_hex(8), SENT_AT: started}
            response = await self.request(
                "send",
                user,
                "PUT",
                f"/_matrix/client/v3/rooms/{path_room}/send/m.room.message/{secrets.token_hex(8)}",
                json=content,
            )
            if response is not None and self.recording:
                self.result.sent += 1
                self.result.send_ms.append((time.monotonic_ns() - started) / 1e6)
            if response is not None and rng.random() < 0.2:
                event = quote(response.json()["event_id"], safe="")
                await self.request(
                    "receipt", user, "POST", f"/_matrix/client/v3/rooms/{path_room}/receipt/m.read/{event}", json={}
                )
            await asyncio.sleep(rng.uniform(0.05, 0.15))

    async def media(self) -> None:
        rng = random.Random(self.rng.random())
        while True:
            user = rng.choice(self.users)
            await self.request(
                "media",
                user,
                "POST",
                "/_matrix/media/v3/upload",
                content=secrets.token_bytes(20_000),
                headers={"Content-Type": "application/octet-stream"},
            )
            await asyncio.sleep(2.0)

    async def run(
        self, warmup: float, duration: float, at_start: Callable[[], None], at_end: Callable[[], None]
    ) -> LoadResult:
        """Warm up unrecorded, then record for ``duration`` seconds; ``at_start`` and ``at_end``
        (measurements, run in a thread) mark the recorded window."""
        for user in self.users:  # an initial sync, so long-polls only see new events
            await self.sync_once(user, 0)
        tasks = [
            asyncio.create_task(coroutine)
            for coroutine in (
                *(self.syncer(u) for u in self.users),
                *(self.sender(u) for u in self.users),
                self.media(),
            )
        ]
        try:
            await asyncio.sleep(warmup)
            await asyncio.to_thread(at_start)
            self.recording = True
            started = time.monotonic()
            await asyncio.sleep(duration)
            self.recording = False
            self.result.duration = time.monotonic() - started
            await asyncio.to_thread(at_end)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.aclose()
        return self.result


async def populate(base_url: str, users: list[BenchUser], rooms: int, seed: int) -> None:
    """Rooms with real-world skew: one with everyone (so every user has a room), one with half, the
    rest with 2-3 members."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for index in range(rooms):
            size = len(users) if index == 0 else max(2, len(users) // 2) if index == 1 else rng.randint(2, 3)
            members = rng.sample(users, min(size, len(users)))
            creator = members[0]
            created = await client.post(
                "/_matrix/client/v3/createRoom",
                json={"preset": "public_chat"},
                headers={"Authorization": f"Bearer {creator.token}"},
            )
            created.raise_for_status()
            room = created.json()["room_id"]
            creator.rooms.append(room)
            for member in members[1:]:
                joined = await client.post(
                    f"/_matrix/client/v3/join/{quote(room, safe='')}",
                    json={},
                    headers={"Authorization": f"Bearer {member.token}"},
                )
                joined.raise_for_status()
                member.rooms.append(room)
