"""Two fleets on two lab hosts that federate over TLS with the lab's CA; and a command that measures
how long a message takes to cross from one to the other::

    python -m synfleet.lab.federation [--messages 200] [--chatters 20]

Server ``a`` runs the small profile with two federation readers and two senders, server ``b`` the
small profile with one federation reader. Needs root (network namespaces) and dnsmasq.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from synfleet.bench.percentiles import percentile
from synfleet.lab.ca import CertificateAuthority
from synfleet.lab.hosts import Host, Lab
from synfleet.model.ports import CLIENT_PORT, FEDERATION_PORT
from synfleet.model.profiles import profile_spec
from synfleet.model.schema import FleetSpec
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.nginx import access_lines
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_user
from synfleet.run.supervisor import Supervisor

#: Worker counts of each server, over the small profile.
SHAPES: dict[str, dict[str, int]] = {"a": {"federation_reader": 2, "sender": 2}, "b": {"federation_reader": 1}}
T = TypeVar("T")


@dataclass
class Server:
    """One fleet of the lab: its host, deployment directory, and a TLS context that trusts the lab."""

    host: Host
    directory: Path
    context: ssl.SSLContext

    @property
    def name(self) -> str:
        return self.host.fqdn

    @property
    def url(self) -> str:
        """By address: programs of this process resolve names outside the lab; the chain is checked."""
        return f"https://{self.host.address}:{FEDERATION_PORT}"

    def synfleet(self, *args: str, timeout: float = 600) -> str:
        done = self.host.run(
            [sys.executable, "-m", "synfleet", *args, "--dir", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"synfleet {' '.join(args)} on {self.name}: {done.stdout}{done.stderr}")
        return str(done.stdout)

    def register(self, user: str, password: str) -> str:
        """A new user's access token (through main's socket, which needs no network)."""
        return register_user(RunPaths(self.directory), user, password, admin=False)["access_token"]

    def access_log(self) -> list[dict[str, str]]:
        return access_lines(RunPaths(self.directory).access_log)

    def pid(self, process: str) -> int | None:
        """A process's pid, from its supervisor; None while it is not running."""
        info = Supervisor(RunPaths(self.directory)).info()[process]
        return info.pid if info.state == "RUNNING" else None


def server_spec(host: Host, lab: Lab, ca: CertificateAuthority, root: Path, workers: dict[str, int]) -> FleetSpec:
    certificate, key = ca.issue([host.fqdn], root / f"tls-{host.name}")
    data = profile_spec(host.fqdn, "small").model_dump(mode="json")
    data["listen"].update(bind=host.address, http_port=CLIENT_PORT, https_port=FEDERATION_PORT)
    data["tls"].update(enabled=True, certificate=str(certificate), key=str(key))
    data["federation"].update(
        trusted_ca=str(ca.certificate_path), ip_range_whitelist=[str(lab.subnet)], trusted_key_servers=[]
    )
    data["workers"].update(workers)
    data["synapse"].update(relaxed_rate_limits=True)
    return FleetSpec.model_validate(data)


@contextmanager
def federated_pair(root: Path) -> Iterator[tuple[Lab, Server, Server]]:
    """Servers ``a`` and ``b`` up in a new lab under ``root`` (which other users must reach); both
    are stopped and the lab removed at the end, also on failure."""
    with Lab(list(SHAPES), domain="fed.test") as lab:
        ca = CertificateAuthority.create(root / "ca")
        context = ssl.create_default_context(cafile=str(ca.certificate_path))
        context.check_hostname = False
        servers = []
        for name, workers in SHAPES.items():
            directory = root / name
            directory.mkdir()
            spec = server_spec(lab[name], lab, ca, root, workers)
            (directory / "fleet.toml").write_text(fleet_toml(spec))
            servers.append(Server(lab[name], directory, context))
        try:
            for server in servers:
                server.synfleet("up")
            yield lab, servers[0], servers[1]
        finally:
            for server in servers:
                down = [sys.executable, "-m", "synfleet", "down", "--dir", str(server.directory)]
                server.host.run(down, capture_output=True, timeout=300)


def in_host(host: Host, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` on an event loop in a thread inside ``host``'s network: the only way this process
    reaches the lab's addresses."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        with host.entered():
            try:
                result.append(asyncio.run(work()))
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class Client:
    """A logged-in user on one server, over HTTPS."""

    def __init__(self, server: Server, token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=server.url, verify=server.context, headers={"Authorization": f"Bearer {token}"}, timeout=90
        )
        self.since = ""
        self.transactions = 0

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    async def send(self, room: str, text: str) -> None:
        self.transactions += 1
        await self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{self.transactions}-{time.time()}",
            {"msgtype": "m.text", "body": text},
        )

    async def sync(self, timeout_ms: int = 10000) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms), **({"since": self.since} if self.since else {})}
        response = await self.http.get("/_matrix/client/v3/sync", params=params)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        self.since = data["next_batch"]
        return data


async def measure(a: Server, b: Server, messages: int, chatters: int) -> list[float]:
    """Seconds from alice's send on a to bob's /sync on b, for each of ``messages`` messages, while
    ``chatters`` users on each side talk in a room of their own."""
    password = "measuring federation"
    alice, bob = Client(a, a.register("alice", password)), Client(b, b.register("bob", password))
    room = (await alice.call("POST", "/_matrix/client/v3/createRoom", {"invite": [f"@bob:{b.name}"]}))["room_id"]
    await _until_invited(bob, room)
    await bob.call("POST", f"/_matrix/client/v3/join/{room}", {})
    talkers = [Client(a, a.register(f"chat_a{n}", password)) for n in range(chatters)]
    talkers += [Client(b, b.register(f"chat_b{n}", password)) for n in range(chatters)]
    stop = asyncio.Event()
    chat = asyncio.create_task(_chatter(talkers, a, stop)) if talkers else None
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    await bob.sync(0)
    reader = asyncio.create_task(_receive(bob, room, arrived, messages))
    for n in range(messages):
        body = f"latency {n}"
        sent[body] = time.monotonic()
        await alice.send(room, body)
        await asyncio.sleep(0.1)
    await asyncio.wait_for(reader, timeout=300)
    stop.set()
    if chat:
        await chat
    for client in (alice, bob, *talkers):
        await client.http.aclose()
    return [arrived[body] - sent[body] for body in sent]


async def _until_invited(client: Client, room: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if room in (await client.sync(2000)).get("rooms", {}).get("invite", {}):
            return
    raise RuntimeError(f"the invite to {room} never reached the other server")


async def _receive(bob: Client, room: str, arrived: dict[str, float], expected: int) -> None:
    while len(arrived) < expected:
        data = await bob.sync()
        events = data.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        now = time.monotonic()
        for event in events:
            body = event.get("content", {}).get("body", "")
            if body.startswith("latency "):
                arrived.setdefault(body, now)


async def _chatter(talkers: list[Client], a: Server, stop: asyncio.Event) -> None:
    """Everyone in one room made on a, each sending about one message a second until ``stop``."""
    host = talkers[0]
    room = (await host.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
    for talker in talkers[1:]:
        await talker.call("POST", f"/_matrix/client/v3/join/{room}?server_name={a.name}", {})

    async def talk(talker: Client, n: int) -> None:
        while not stop.is_set():
            await talker.send(room, f"chatter {n}")
            await asyncio.sleep(1.0)

    await asyncio.gather(*(talk(t, n) for n, t in enumerate(talkers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200, help="messages from a to b to time (default 200)")
    parser.add_argument("--chatters", type=int, default=0, help="users per side talking meanwhile (default 0)")
    options = parser.parse_args()
    with world_readable_tempdir("synfleet-federation-") as root, federated_pair(root) as (_, a, b):
        latencies = in_host(a.host, lambda: measure(a, b, options.messages, options.chatters))
    ms = [1000 * s for s in latencies]
    print(
        f"federation delivery a -> b over {len(ms)} messages, {options.chatters} chatters per side: "
        f"p50 {percentile(ms, 0.5):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
        f"mean {statistics.fmean(ms):.0f} ms, max {max(ms):.0f} ms"
    )


if __name__ == "__main__":
    main()
