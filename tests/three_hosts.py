"""A fleet on three hosts of a lab (network namespaces on one private network): a runs nginx,
main, PostgreSQL and Redis; b runs rooms1 and client_sync1; c runs rooms2 and tasks1 (the event
persister); x is on the network but not in the fleet. What the native run and the compose projects
per host must both show."""

from __future__ import annotations

import datetime
import json
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers
from capture import BridgeCapture
from conftest import FLEET_TIMEOUT, synfleet
from flows import PASSWORD, check_routing, conversation, login, sync_until
from synfleet.lab import Lab
from synfleet.lab.federation import in_host
from synfleet.model.load import load_spec
from synfleet.model.schema import FleetSpec
from synfleet.pki.certificates import CLIENT, SERVER, authority, certificate_pem, issue, key_pem, new_key
from synfleet.pki.fleet import FRONT_NAME, Role, subject
from synfleet.render.fleet_file import fleet_toml
from synfleet.render.nginx import access_lines
from synfleet.routing.plan import RoutingPlan
from synfleet.run.paths import RunPaths, deployed_plan
from synfleet.run.postgres import query

HOSTS = ("a", "b", "c")
#: The secrets of D/secrets that travel between the hosts (in the clear, were the links not sealed).
LINK_SECRETS = ("worker_replication_secret", "redis_password", "postgres_password")
WORKERS = {"client_sync": 1, "rooms": 2, "tasks": 1, "client_reader": 0, "federation_reader": 0, "media": 0}
WORKERS["sender"] = 0
PLACEMENT = {"default": "a", "rooms": ["b", "c"], "client_sync": "b", "tasks": "c"}
ROOMS = "synapse_inbound_room_workers"
#: What each host runs.
SHARES = {
    "a": {"postgres", "redis", "main", "nginx"},
    "b": {"client_sync1", "rooms1", "nginx"},
    "c": {"rooms2", "tasks1", "nginx"},
}


def write_fleet(lab: Lab, directory: Path, port: int, **sections: dict[str, Any]) -> None:
    """The small profile with the workers above, placed on the lab's hosts a, b and c."""
    spec = helpers.profile_with(
        "small", listen={"http_port": port}, synapse={"relaxed_rate_limits": True}, workers=WORKERS, **sections
    )
    data = spec.model_dump(mode="json")
    data["hosts"] = {name: {"address": lab[name].address} for name in HOSTS}
    data["placement"] = PLACEMENT
    (directory / "fleet.toml").write_text(fleet_toml(FleetSpec.model_validate(data)))


@dataclass
class Hosts:
    """The fleet as the flows see it (clients on host a, where nginx listens on 127.0.0.1), run
    natively (`synfleet up --host`) on each host."""

    lab: Lab
    directory: Path
    port: int
    profile: str = "three hosts"
    rooms: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spec(self) -> FleetSpec:
        return load_spec(self.directory)

    @property
    def plan(self) -> RoutingPlan:
        return deployed_plan(RunPaths(self.directory), self.spec)

    def access_log(self) -> list[dict[str, str]]:
        return access_lines(RunPaths(self.directory, "a").access_log)

    def query(self, sql: str) -> list[str]:
        """Rows of ``sql`` on the fleet's database (on host a), as psql prints them."""
        return query(RunPaths(self.directory, "a"), self.spec.database, sql, "cannot query the database")

    def address_of(self, process: str) -> str:
        """The private address of ``process``'s host."""
        return self.lab[self.spec.fleet.host_of(process)].address

    def synfleet(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """:func:`synfleet` on this directory, run in lab host ``host``."""
        return synfleet(*args, directory=self.directory, timeout=FLEET_TIMEOUT, runner=self.lab[host].run)

    def client(self, work: Any) -> Any:
        """``work()`` (a coroutine function) run by a client on host a."""
        return in_host(self.lab["a"], work)

    def room_on(self, worker: str) -> str:
        """A new room that nginx hashes to room worker ``worker``."""

        async def make() -> str:
            alice, bob = await login(self, "alice"), await login(self, "bob")
            try:
                for _ in range(50):
                    room = str((await alice.room_create(name=f"on {worker}", invite=[bob.user_id])).room_id)
                    if self.plan.upstreams[ROOMS].worker_for(room[1:]) == worker:
                        await bob.join(room)
                        self.rooms.append(room)
                        return room
            finally:
                await alice.close()
                await bob.close()
            raise AssertionError(f"no room hashed to {worker} in 50 tries")

        return str(self.client(make))


def server_of(plan: RoutingPlan, worker: str) -> str:
    """The front nginx's upstream ``server`` for ``worker`` (on another host: its relay there)."""
    return next(u.servers[u.workers.index(worker)] for u in plan.upstreams.values() if worker in u.workers)


def conversation_across_hosts(hosts: Hosts) -> None:
    """The conversation flow and 100 messages through nginx on a; every request on the worker
    `synfleet route` predicts; every event persisted by tasks1 on c and read by bob through the
    sync worker on b."""
    hosts.client(lambda: conversation(hosts))
    shared = [hosts.room_on(worker) for worker in ("rooms1", "rooms2")]  # alice and bob in each

    async def hundred() -> list[tuple[str, str]]:
        alice = await login(hosts, "alice")
        sent = []
        try:
            for i in range(100):
                room = shared[i % 2]
                answer = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"across {i}"})
                sent.append((room, answer.event_id))
        finally:
            await alice.close()
        return sent

    sent = hosts.client(hundred)
    assert len(sent) == 100
    check_routing(hosts)
    # every event was persisted by tasks1 on host c ...
    writers = hosts.query(
        "SELECT DISTINCT instance_name FROM events WHERE event_id IN ("
        + ",".join(f"'{event}'" for _, event in sent)
        + ")"
    )
    assert writers == ["tasks1"], writers

    # ... and reached bob, in the rooms he is in, through the sync worker on host b.
    async def bob_reads() -> tuple[set[str], set[str]]:
        bob = await login(hosts, "bob")
        try:
            joined = set((await bob.joined_rooms()).rooms)
            seen: set[str] = set()
            for room in joined & set(hosts.rooms):
                page = await bob.room_messages(room, limit=200)
                seen |= {e.event_id for e in page.chunk}
            return joined, seen
        finally:
            await bob.close()

    joined, seen = hosts.client(bob_reads)
    theirs = {event for room, event in sent if room in joined}
    assert len(theirs) == 100 and theirs <= seen
    b_sync = server_of(hosts.plan, "client_sync1")  # the front's relay to it
    syncs = [line for line in hosts.access_log() if "/sync" in line["url"]]
    assert syncs and all(line["addr"] == b_sync for line in syncs), {line["addr"] for line in syncs}


def sealed_conversation(hosts: Hosts) -> None:
    """An eavesdropper on the network between the hosts, during a conversation (logins, 50
    messages in rooms on both room workers, media, sync), sees TLS only: none of the access
    tokens, the password, the replication secret, the Redis and database passwords, or any
    message body crosses the bridge in the clear."""
    rooms = [hosts.room_on(worker) for worker in ("rooms1", "rooms2")]
    marker = secrets.token_hex(8)
    bodies = {f"body {i}": f"sealed {marker} {i}".encode() for i in range(50)}

    async def talk() -> dict[str, bytes]:
        alice, bob = await login(hosts, "alice"), await login(hosts, "bob")
        try:
            for i, body in enumerate(bodies.values()):
                answer = await alice.room_send(
                    rooms[i % 2], "m.room.message", {"msgtype": "m.text", "body": body.decode()}
                )
                assert hasattr(answer, "event_id"), answer
            payload = secrets.token_bytes(50_000)
            uploaded, _ = await alice.upload(
                lambda *_: payload,
                content_type="application/octet-stream",
                filename="sealed.bin",
                filesize=len(payload),
            )
            assert (await bob.download(uploaded.content_uri)).body == payload
            await sync_until(
                bob,
                lambda r: any(marker in str(e.source) for room in r.rooms.join.values() for e in room.timeline.events),
            )
            return {"alice's token": alice.access_token.encode(), "bob's token": bob.access_token.encode()}
        finally:
            await alice.close()
            await bob.close()

    with BridgeCapture(hosts.lab) as capture:
        tokens = hosts.client(talk)
    folder = hosts.directory / "secrets"
    hidden = {
        **tokens,
        **bodies,
        "the password": PASSWORD.encode(),
        **{name: (folder / name).read_bytes().strip() for name in LINK_SECRETS},
    }
    fleet = set(hosts.spec.fleet.host_addresses)
    between = {flow: data for flow, data in capture.streams().items() if flow[0] in fleet and flow[2] in fleet}
    crossing = sum(map(len, between.values()))
    print(f"\n[{hosts.profile}] {len(between)} TCP flows between the hosts, {crossing} bytes")
    assert crossing > 50_000, "the capture saw no traffic between the hosts"
    # Nor anything of the protocols inside: HTTP (inbound and replication), Redis's replication stream.
    hidden |= {"plain HTTP": b"HTTP/1.1 ", "Redis's replication stream": b"RDATA "}
    assert not capture.holding(hidden), {name: flows[:3] for name, flows in capture.holding(hidden).items()}


def foreign_identity(spec: FleetSpec, directory: Path) -> list[str]:
    """A certificate and key from another CA than the fleet's, with the subject and names of the
    front's (files anyone may read): what an impostor would present."""
    directory.mkdir(exist_ok=True)
    ca_key, key = new_key(), new_key()
    ca = authority(subject(spec, Role.AUTHORITY, "impostor CA"), ca_key, datetime.timedelta(days=1))
    made = issue(
        ca,
        ca_key,
        subject(spec, Role.FRONT, FRONT_NAME),
        key,
        [FRONT_NAME],
        [CLIENT, SERVER],
        ca.not_valid_after_utc - ca.not_valid_before_utc,
    )
    paths = [directory / "impostor.pem", directory / "impostor.key"]
    paths[0].write_bytes(certificate_pem(made))
    paths[1].write_bytes(key_pem(key))
    for path in paths:
        path.chmod(0o644)
    return [str(path) for path in paths]


def link_plan(hosts: Hosts, token: str, identities: dict[str, list[str] | None], **extra: Any) -> dict[str, Any]:
    """What :mod:`link_probe` knocks on: every inbound and replication link, Redis and PostgreSQL,
    with the right passwords."""
    spec = hosts.spec
    fleet = spec.fleet
    http = [
        (hosts.lab[fleet.host_of(n)].address, fleet.worker(n).replication_port)
        for n in ("main", "client_sync1", "tasks1")
    ]
    http += [
        (hosts.lab[fleet.host_of(n)].address, fleet.worker(n).inbound_port)
        for n in ("client_sync1", "rooms1", "rooms2")
    ]
    a = hosts.lab["a"].address
    folder = hosts.directory / "secrets"
    return {
        "http": http,
        "paths": ["/health", "/_synapse/admin/v1/server_version"],
        "token": token,
        "identities": identities,
        "redis": {"address": a, "port": spec.redis.port, "password": (folder / "redis_password").read_text().strip()},
        "postgres": {
            "address": a,
            "port": spec.database.port,
            "user": spec.database.user,
            "password": (folder / "postgres_password").read_text().strip(),
            "database": spec.database.name,
        },
        **extra,
    }


def probe_links(hosts: Hosts, host: str, plan: dict[str, Any], account: str | None = None) -> dict[str, str]:
    """:mod:`link_probe` run in lab host ``host`` (as ``account``, from a copy it can read), with ``plan``."""
    script = hosts.directory / "link_probe.py"
    shutil.copyfile(Path(__file__).with_name("link_probe.py"), script)
    script.chmod(0o644)
    command = [sys.executable, str(script), json.dumps(plan)]
    if account:
        command = ["runuser", "-u", account, "--", *command]
    done = hosts.lab[host].run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def refused(found: dict[str, str]) -> dict[str, str]:
    """The attempts of :mod:`link_probe` that got anything but a refusal: an HTTP link answers 400
    (no certificate, or one nginx cannot verify, or plain HTTP to its TLS port) or fails the
    handshake; Redis and PostgreSQL fail the handshake or refuse."""
    wrong = {}
    for name, answer in found.items():
        failed = answer.startswith("error") or answer == "closed"
        if (name.startswith(("redis", "postgres", "socket")) and not failed) or (
            not name.startswith(("redis", "postgres", "socket")) and not (failed or answer.startswith("HTTP/1.1 400"))
        ):
            wrong[name] = answer
    return wrong


def outsider_refused(hosts: Hosts) -> None:
    """From host x, not in the fleet, with the right passwords: every link refuses without a
    certificate and with one from another CA; Redis and PostgreSQL fail the handshake or refuse."""
    impostor = foreign_identity(hosts.spec, hosts.directory / "impostor")
    found = probe_links(hosts, "x", link_plan(hosts, "no-token", {"none": None, "impostor": impostor}))
    assert len(found) == 6 * 2 * 2 + 2 * 2 + 6 + 1
    assert not refused(found), refused(found)
