"""The open-loop load of ``synfleet bench --capacity``: messages arrive as a Poisson process at an
offered rate, whatever the fleet answers, while every user long-polls /sync.

Every message carries an id; each member's sync that returns it is one delivery. A message counts
as delivered when every member but its sender has it (counted, not assumed), and its delivery
latency is the time from its send until the last of them had it: one sample per message, whatever
the room's size. A sync whose timeline is ``limited`` skipped events, and is counted as an error.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from synfleet.bench.percentiles import percentile

SYNC_FILTER = json.dumps(
    {"room": {"timeline": {"limit": 200}, "state": {"lazy_load_members": True}}, "presence": {"not_types": ["*"]}},
    separators=(",", ":"),
)
MESSAGE_ID = "org.synfleet.message"
#: Sends in flight beyond this are not made (counted as not acknowledged): the generator's own limit.
MAX_IN_FLIGHT = 512
#: How long a long-poll /sync waits for news.
SYNC_TIMEOUT_MS = 30_000


@dataclass
class Member:
    user_id: str
    token: str
    since: str = ""


@dataclass
class Room:
    room_id: str
    members: list[int]  # indices into the users
    worker: str | None  # the room worker nginx sends it to (None: main, or room-blind balancing)


@dataclass
class Message:
    room: int
    sender: int
    sent_ns: int
    acked: bool = False
    received: set[int] = field(default_factory=set)
    last_ns: int = 0


@dataclass(frozen=True)
class StepFigures:
    """What one step of the offered rate gave."""

    offered_per_s: float
    duration_s: float
    offered: int
    acknowledged: int
    delivered: int  # acknowledged messages every member received
    deliveries_expected: int
    deliveries: int
    send_ms: dict[str, float]
    delivery_ms: dict[str, float]
    errors: dict[str, int]
    generator_cpu_s: float
    generator_late_ms: float  # how far behind its schedule the generator fell, at worst

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _quantiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), 1), "p99": round(percentile(values, 0.99), 1)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OpenLoad:
    """Users that long-poll /sync, and a Poisson stream of messages into rooms, step by step."""

    def __init__(self, base_url: str, users: list[Member], rooms: list[Room], seed: int) -> None:
        self.base_url = base_url
        self.users = users
        self.rooms = rooms
        self.rng = random.Random(seed)
        self.messages: dict[str, Message] = {}
        self.errors: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.syncers: list[asyncio.Task[None]] = []
        self.counter = 0

    async def __aenter__(self) -> OpenLoad:
        connector = aiohttp.TCPConnector(limit=len(self.users) + MAX_IN_FLIGHT + 16)
        self.session = aiohttp.ClientSession(
            self.base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=SYNC_TIMEOUT_MS / 1000 + 30)
        )
        await asyncio.gather(*(self._sync(i, 0) for i in range(len(self.users))))  # start from now
        self.errors.clear()
        self.syncers = [asyncio.create_task(self._syncer(i)) for i in range(len(self.users))]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self.syncers:
            task.cancel()
        await asyncio.gather(*self.syncers, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _request(self, kind: str, user: int, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.users[user].token}"}
        try:
            async with self.session.request(method, path, headers=headers, **kwargs) as response:
                if response.status != 200:
                    self.errors[f"{kind}: HTTP {response.status}"] += 1
                    return None
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[f"{kind}: {type(exc).__name__}"] += 1
            return None

    async def _sync(self, user: int, timeout_ms: int) -> None:
        member = self.users[user]
        params = {"filter": SYNC_FILTER, "timeout": str(timeout_ms)}
        if member.since:
            params["since"] = member.since
        body = await self._request("sync", user, "GET", "/_matrix/client/v3/sync", params=params)
        if body is None:
            await asyncio.sleep(0.5)
            return
        member.since = body["next_batch"]
        now = time.monotonic_ns()
        for room in body.get("rooms", {}).get("join", {}).values():
            timeline = room.get("timeline", {})
            if timeline.get("limited") and timeout_ms:
                self.errors["sync: limited timeline (events skipped)"] += 1
            for event in timeline.get("events", []):
                message = self.messages.get(event.get("content", {}).get(MESSAGE_ID, ""))
                if message is not None and message.sender != user and user not in message.received:
                    message.received.add(user)
                    message.last_ns = max(message.last_ns, now)

    async def _syncer(self, user: int) -> None:
        while True:
            await self._sync(user, SYNC_TIMEOUT_MS)

    async def _send(self, message_id: str, message: Message, send_ms: list[float]) -> None:
        room = self.rooms[message.room]
        path = (
            f"/_matrix/client/v3/rooms/{quote(room.room_id, safe='')}/send/m.room.message/{quote(message_id, safe='')}"
        )
        content = {"msgtype": "m.text", "body": f"bench {message_id}", MESSAGE_ID: message_id}
        body = await self._request("send", message.sender, "PUT", path, json=content)
        if body is not None:
            message.acked = True
            send_ms.append((time.monotonic_ns() - message.sent_ns) / 1e6)

    async def step(
        self, rate: float, seconds: float, drain: float, around: Callable[[], Awaitable[None]] | None = None
    ) -> StepFigures:
        """Offer ``rate`` messages/s for ``seconds``, then wait up to ``drain`` seconds for the
        sends to be answered and delivered. ``around`` is awaited at the start and at the end of the
        offered window (the caller's measurements)."""
        self.messages.clear()
        self.errors.clear()
        send_ms: list[float] = []
        in_flight: set[asyncio.Task[None]] = set()
        late = 0.0
        if around:
            await around()
        cpu_before = _cpu_seconds()
        loop = asyncio.get_running_loop()
        started = loop.time()
        due = started
        offered = 0
        while True:
            due += self.rng.expovariate(rate)
            if due >= started + seconds:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late = max(late, -delay)
            offered += 1
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.errors["generator: too many sends in flight"] += 1
                continue
            room = self.rng.randrange(len(self.rooms))
            self.counter += 1
            message_id = f"m{self.counter}"
            message = Message(room, self.rng.choice(self.rooms[room].members), time.monotonic_ns())
            self.messages[message_id] = message
            task = asyncio.create_task(self._send(message_id, message, send_ms))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.sleep(max(0.0, started + seconds - loop.time()))
        duration = loop.time() - started
        cpu = _cpu_seconds() - cpu_before
        if around:
            await around()
        deadline = loop.time() + drain
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=drain)
        while loop.time() < deadline and not self._all_delivered():
            await asyncio.sleep(0.1)
        return self._figures(rate, duration, offered, send_ms, cpu, late)

    def _expected(self, message: Message) -> int:
        return len(self.rooms[message.room].members) - 1

    def _all_delivered(self) -> bool:
        return all(len(m.received) >= self._expected(m) for m in self.messages.values() if m.acked)

    def _figures(
        self, rate: float, duration: float, offered: int, send_ms: list[float], cpu: float, late: float
    ) -> StepFigures:
        acked = [m for m in self.messages.values() if m.acked]
        complete = [m for m in acked if len(m.received) >= self._expected(m)]
        return StepFigures(
            offered_per_s=round(rate, 2),
            duration_s=round(duration, 2),
            offered=offered,
            acknowledged=len(acked),
            delivered=len(complete),
            deliveries_expected=sum(self._expected(m) for m in acked),
            deliveries=sum(len(m.received) for m in acked),
            send_ms=_quantiles(send_ms),
            delivery_ms=_quantiles([(m.last_ns - m.sent_ns) / 1e6 for m in complete]),
            errors=dict(self.errors),
            generator_cpu_s=round(cpu, 2),
            generator_late_ms=round(late * 1000, 1),
        )
