"""Initial syncs against live sync: what an initial-sync pool buys.

A large account (many rooms, each with some messages) is synced from scratch over and over by
several clients at once, as when many clients restart or log in, while live clients long-poll
incremental ``/sync`` and a sender posts messages into their room. The figure that matters is the
live clients' delivery latency: from the send until each live member's sync returns the message
(one clock: the send time travels in the event).

A phase sends the initial syncs either through nginx (which routes them by the route table: to the
initial-sync pool when the fleet has one) or straight to one process's inbound socket, such as the
sync worker's: the same fleet then shows what happens without the pool. The CPU each process used
in a phase, divided by the syncs it served, gives the cost of an initial and of an incremental sync.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from synfleet.bench.percentiles import percentile
from synfleet.errors import SynfleetError
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_users

SENT_AT = "org.synfleet.sent_ns"
LIVE_FILTER = json.dumps(
    {"room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": True}}, "presence": {"not_types": ["*"]}},
    separators=(",", ":"),
)
#: What a client asks for on its first sync (Element's shape: lazy-loaded members, a page of timeline).
INITIAL_FILTER = json.dumps(
    {"room": {"timeline": {"limit": 20}, "state": {"lazy_load_members": True}}}, separators=(",", ":")
)
SYNC_PATH = "/_matrix/client/v3/sync"


@dataclass
class Account:
    user_id: str
    token: str
    since: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Population:
    """The accounts of the load: ``large`` is in ``rooms`` rooms; the live clients and the sender
    share ``live_room`` (one of them)."""

    large: Account
    live: list[Account]
    sender: Account
    rooms: list[str]
    live_room: str


@dataclass
class PhaseFigures:
    """One phase: where initial syncs went, how many of each sync were served, and the live
    clients' delivery latencies (one sample per message and member)."""

    name: str
    seconds: float
    initial_syncs: int = 0
    initial_ms: list[float] = field(default_factory=list)
    incremental_syncs: int = 0
    sent: int = 0
    expected_deliveries: int = 0
    delivery_ms: list[float] = field(default_factory=list)
    undelivered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    load_average: float = 0.0  # the machine's 1-minute load average at the phase's end

    def as_json(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 1),
            "initial_syncs": self.initial_syncs,
            "initial_sync_p50_ms": round(percentile(self.initial_ms, 0.5)),
            "incremental_syncs": self.incremental_syncs,
            "sent": self.sent,
            "deliveries": len(self.delivery_ms),
            "undelivered": self.undelivered,
            "delivery_p50_ms": round(percentile(self.delivery_ms, 0.5), 1),
            "delivery_p99_ms": round(percentile(self.delivery_ms, 0.99), 1),
            "errors": dict(self.errors),
            "cpu_seconds": {k: round(v, 2) for k, v in sorted(self.cpu_seconds.items())},
            "load_average": round(self.load_average, 1),
        }


def register_accounts(paths: RunPaths, prefix: str, count: int) -> list[Account]:
    return [Account(user, token) for user, token in register_users(paths, prefix, count)]


async def _call(client: httpx.AsyncClient, account: Account, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(method, path, json=body, headers=account.headers)
    if response.status_code != 200:
        raise SynfleetError(f"{method} {path}: HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


async def populate(
    base_url: str, large: Account, live: list[Account], sender: Account, rooms: int, messages: int
) -> Population:
    """``large`` creates ``rooms`` rooms with ``messages`` messages each; the live clients and the
    sender join the first."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        semaphore = asyncio.Semaphore(4)

        async def room(index: int) -> str:
            async with semaphore:
                body = {"preset": "public_chat", "name": f"large {index}", "topic": "initial sync bench"}
                room_id = str((await _call(client, large, "POST", "/_matrix/client/v3/createRoom", body))["room_id"])
                for n in range(messages):
                    path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/p{n}"
                    await _call(client, large, "PUT", path, {"msgtype": "m.text", "body": f"history {n} " * 8})
                return room_id

        room_ids = list(await asyncio.gather(*(room(i) for i in range(rooms))))
        live_room = room_ids[0]
        for account in (*live, sender):
            await _call(client, account, "POST", f"/_matrix/client/v3/join/{quote(live_room, safe='')}", {})
        for account in live:  # each live client's own initial sync: from here on it syncs incrementally
            params = {"filter": LIVE_FILTER, "timeout": "0"}
            response = await client.get(SYNC_PATH, params=params, headers=account.headers)
            response.raise_for_status()
            account.since = response.json()["next_batch"]
    return Population(large, live, sender, room_ids, live_room)


async def _sync(
    client: httpx.AsyncClient,
    params: dict[str, str],
    headers: dict[str, str],
    figures: PhaseFigures,
    kind: str,
    pause: float,
) -> httpx.Response | None:
    """One sync; None (counted in ``figures`` as an error of ``kind``, after ``pause`` s) if it failed."""
    try:
        response = await client.get(SYNC_PATH, params=params, headers=headers)
    except httpx.HTTPError as exc:
        figures.errors[f"{kind}: {type(exc).__name__}"] += 1
    else:
        if response.status_code == 200:
            return response
        figures.errors[f"{kind}: HTTP {response.status_code}"] += 1
    await asyncio.sleep(pause)
    return None


class BurstLoad:
    """Live clients and a burst of initial syncs for one phase at a time (see the module's text)."""

    def __init__(self, base_url: str, population: Population, seed: int = 1) -> None:
        self.base_url = base_url
        self.population = population
        self.rng = random.Random(seed)
        self.attempt = 0  # varies each initial sync's timeout: Synapse answers identical syncs from a cache

    async def _sync_live(
        self, client: httpx.AsyncClient, account: Account, figures: PhaseFigures, seen: dict[str, set[str]]
    ) -> None:
        while True:
            params = {"filter": LIVE_FILTER, "timeout": str(10_000 + self.rng.randrange(1000))}
            if account.since:
                params["since"] = account.since
            response = await _sync(client, params, account.headers, figures, "live sync", 0.2)
            if response is None:
                continue
            now = time.monotonic_ns()
            body = response.json()
            account.since = body["next_batch"]
            figures.incremental_syncs += 1
            room = body.get("rooms", {}).get("join", {}).get(self.population.live_room, {})
            if room.get("timeline", {}).get("limited"):
                figures.errors["live sync: limited timeline"] += 1
            for event in room.get("timeline", {}).get("events", []):
                sent = event.get("content", {}).get(SENT_AT)
                message = event.get("content", {}).get("body", "")
                if sent and message in seen and account.user_id not in seen[message]:
                    seen[message].add(account.user_id)
                    figures.delivery_ms.append((now - int(sent)) / 1e6)

    async def _initial(self, client: httpx.AsyncClient, figures: PhaseFigures, stop: asyncio.Event) -> None:
        large = self.population.large
        while not stop.is_set():
            self.attempt += 1
            params = {"filter": INITIAL_FILTER, "timeout": str(self.attempt)}
            started = time.monotonic()
            response = await _sync(client, params, large.headers, figures, "initial sync", 0.5)
            if response is None:
                continue
            joined = response.json().get("rooms", {}).get("join", {})
            if len(joined) < len(self.population.rooms):
                figures.errors["initial sync: rooms missing"] += 1
            figures.initial_syncs += 1
            figures.initial_ms.append((time.monotonic() - started) * 1000)

    async def _send(
        self, client: httpx.AsyncClient, figures: PhaseFigures, seen: dict[str, set[str]], rate: float, seconds: float
    ) -> None:
        sender = self.population.sender
        path_room = quote(self.population.live_room, safe="")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = f"live {secrets.token_hex(8)}"
            content = {"msgtype": "m.text", "body": message, SENT_AT: time.monotonic_ns()}
            seen[message] = set()
            path = f"/_matrix/client/v3/rooms/{path_room}/send/m.room.message/{secrets.token_hex(8)}"
            try:
                response = await client.put(path, json=content, headers=sender.headers)
            except httpx.HTTPError as exc:
                figures.errors[f"send: {type(exc).__name__}"] += 1
                del seen[message]
                continue
            if response.status_code != 200:
                figures.errors[f"send: HTTP {response.status_code}"] += 1
                del seen[message]
            else:
                figures.sent += 1
            await asyncio.sleep(self.rng.expovariate(rate))

    async def phase(
        self,
        name: str,
        seconds: float,
        initial_clients: int,
        initial_transport: httpx.AsyncBaseTransport | None = None,
        send_rate: float = 4.0,
        drain_seconds: float = 15.0,
    ) -> PhaseFigures:
        """``seconds`` of load: the live clients sync and receive the sender's messages (``send_rate``
        per second) while ``initial_clients`` initial-sync the large account, through nginx or
        ``initial_transport`` (a process's socket). Then up to ``drain_seconds`` for the last
        deliveries; what is still missing counts as undelivered."""
        figures = PhaseFigures(name, seconds)
        seen: dict[str, set[str]] = {}
        live = self.population.live
        limits = httpx.Limits(max_connections=len(live) + 8, max_keepalive_connections=len(live) + 8)
        initial_limits = httpx.Limits(max_connections=initial_clients, max_keepalive_connections=initial_clients)
        stop = asyncio.Event()
        async with (
            httpx.AsyncClient(base_url=self.base_url, timeout=120, limits=limits) as client,
            httpx.AsyncClient(
                base_url="http://localhost" if initial_transport else self.base_url,
                transport=initial_transport,
                timeout=120,
                limits=initial_limits,
            ) as initial,
        ):
            syncers = [asyncio.create_task(self._sync_live(client, account, figures, seen)) for account in live]
            await asyncio.sleep(1.0)  # every live client waiting in a long-poll
            bursts = [asyncio.create_task(self._initial(initial, figures, stop)) for _ in range(initial_clients)]
            started = time.monotonic()
            await self._send(client, figures, seen, send_rate, seconds)
            figures.seconds = time.monotonic() - started
            stop.set()
            await asyncio.gather(*bursts, return_exceptions=True)
            deadline = time.monotonic() + drain_seconds
            expected = len(live) * len(seen)
            while time.monotonic() < deadline and sum(len(members) for members in seen.values()) < expected:
                await asyncio.sleep(0.2)
            for task in syncers:
                task.cancel()
            await asyncio.gather(*syncers, return_exceptions=True)
        figures.expected_deliveries = expected
        figures.undelivered = expected - sum(len(members) for members in seen.values())
        return figures


def measured_phase(load: BurstLoad, cpu: Callable[[], dict[str, float]], name: str, **options: Any) -> PhaseFigures:
    """A phase of ``load`` with the CPU seconds each process used meanwhile (``cpu`` reads them)."""
    before = cpu()
    figures = asyncio.run(load.phase(name, **options))
    after = cpu()
    figures.cpu_seconds = {process: seconds - before.get(process, 0.0) for process, seconds in after.items()}
    figures.load_average = os.getloadavg()[0]
    return figures
