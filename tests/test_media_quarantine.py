"""Media quarantine on a running seed fleet, through nginx from an address allowed the admin API:
an admin quarantines a file by its ID, a user's files and a room's files, and clients can no longer
download them; unquarantined, they are served again. The five quarantine endpoints record each
change in the quarantined_media_changes stream, so they must reach a process that writes it:
main and every media worker write it, and the fleet file refuses a list that leaves one out."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from conftest import RunningFleet, fleet_under_test
from helpers import profile_with
from synfleet.errors import FleetError
from synfleet.layout import COMPOSE
from synfleet.model.fleet import Stream
from synfleet.model.schema import FleetSpec, parse_fleet
from synfleet.render.secrets import Secret
from synfleet.render.synapse import render_synapse
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.run.paths import RunPaths
from synfleet.run.register import register_user

PASSWORD = "long enough to be a password"
ADMIN = "/_synapse/admin/v1"
QUARANTINE = Stream.QUARANTINED_MEDIA_CHANGES
#: The five quarantine endpoints, as an admin calls them.
QUARANTINE_PATHS = (
    "/media/quarantine/example.org/abcdefMEDIA",
    "/media/unquarantine/example.org/abcdefMEDIA",
    "/quarantine_media/!room:example.org",
    "/room/%21room%3Aexample.org/media/quarantine",
    "/user/@alice:example.org/media/quarantine",
)
#: (profile, media workers, who must write the stream and who serves quarantine).
FLEETS = [
    pytest.param("seed", None, ["main", "media1"], ("media1",), id="seed"),
    pytest.param("small", None, ["main", "media1"], ("media1",), id="small"),
    pytest.param("monolith", None, ["main"], ("main",), id="monolith"),
    pytest.param("seed", 2, ["main", "media1", "media2"], ("media1", "media2"), id="two_media_workers"),
]


def _spec(profile: str, media: int | None) -> FleetSpec:
    return profile_with(profile, "example.org", **({"workers": {"media": media}} if media else {}))


@pytest.mark.parametrize(("profile", "media", "writers", "_"), FLEETS)
def test_homeserver_yaml_makes_main_and_every_media_worker_quarantine_writers(
    profile: str, media: int | None, writers: list[str], _: tuple[str, ...]
) -> None:
    files = render_synapse(_spec(profile, media), COMPOSE, dict.fromkeys(Secret, "x"))
    shared = yaml.safe_load(files["homeserver.yaml"])
    # Synapse's lists of instances call main "master" (instance_map calls it "main").
    assert writers[0] == "main" and shared["stream_writers"][QUARANTINE.value] == ["master", *writers[1:]]
    for name in writers:  # Synapse refuses a writer outside instance_map, which needs its listener
        assert shared["instance_map"][name] == {"path": f"/sockets/synapse_replication_{name}.sock"}
        if name != "main":
            listeners = yaml.safe_load(files[f"workers/{name}.yaml"])["worker_listeners"]
            assert {"path": f"/sockets/synapse_replication_{name}.sock"}.items() <= listeners[1].items()


@pytest.mark.parametrize(("profile", "media", "writers", "served_by"), FLEETS)
def test_quarantine_endpoints_reach_writers_with_the_media_repository(
    profile: str, media: int | None, writers: list[str], served_by: tuple[str, ...]
) -> None:
    fleet = _spec(profile, media).fleet
    plan = RoutingPlan(fleet)
    for path in QUARANTINE_PATHS:
        decision = evaluate(plan, "POST", f"{ADMIN}{path}")
        assert decision.rule == "media_quarantine", path
        assert decision.upstream is not None
        assert plan.upstreams[decision.upstream].workers == served_by, path
    assert [w.name for w in fleet.writers(QUARANTINE)] == writers
    assert set(served_by) <= set(writers)


def test_quarantine_writers_must_include_main() -> None:
    text = 'server_name = "example.org"\n[workers]\nmedia = 0\n[stream_writers]\nquarantined_media_changes = ["q1"]\n'
    with pytest.raises(FleetError, match=r"stream_writers.quarantined_media_changes: leaves out main;"):
        parse_fleet(text)
    # Main and every media worker listed: more writers (a dedicated one) are allowed.
    listed = 'server_name = "example.org"\n[stream_writers]\nquarantined_media_changes = ["main", "media1", "q1"]\n'
    fleet = parse_fleet(listed).fleet
    assert [w.name for w in fleet.writers(QUARANTINE)] == ["main", "media1", "q1"]


@dataclass(frozen=True)
class Media:
    server: str
    media_id: str

    @property
    def mxc(self) -> str:
        return f"mxc://{self.server}/{self.media_id}"


@dataclass
class QuarantineFleet(RunningFleet):
    user_id: str = ""
    token: str = ""
    admin_token: str = ""

    def after_up(self) -> None:
        paths = RunPaths(self.directory)
        alice = register_user(paths, "alice", PASSWORD, admin=False)
        self.user_id, self.token = alice["user_id"], alice["access_token"]
        self.admin_token = register_user(paths, "admin", PASSWORD, admin=True)["access_token"]

    def client(self, token: str) -> httpx.Client:
        """A client of nginx (from 127.0.0.1) with ``token``."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def upload(self) -> Media:
        with self.client(self.token) as alice:
            content = secrets.token_bytes(64)
            answer = alice.post("/_matrix/media/v3/upload", content=content, headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        server, media_id = answer.json()["content_uri"].removeprefix("mxc://").split("/")
        return Media(server, media_id)

    def download(self, media: Media) -> httpx.Response:
        with self.client(self.token) as alice:
            return alice.get(f"/_matrix/client/v1/media/download/{media.server}/{media.media_id}")

    def admin(self, method: str, path: str) -> httpx.Response:
        with self.client(self.admin_token) as admin:
            return admin.request(method, f"{ADMIN}{path}", json={} if method == "POST" else None)

    def room_with_image(self, media: Media) -> str:
        """A new room of alice's with an m.image event showing ``media``."""
        with self.client(self.token) as alice:
            created = alice.post("/_matrix/client/v3/createRoom", json={})
            assert created.status_code == 200, created.text
            room_id: str = created.json()["room_id"]
            content = {"msgtype": "m.image", "body": "picture.png", "url": media.mxc}
            sent = alice.put(
                f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(8)}", json=content
            )
            assert sent.status_code == 200, sent.text
        return room_id

    def changes(self) -> list[dict[str, Any]]:
        answer = self.admin("GET", "/media/quarantine_changes")
        assert answer.status_code == 200, answer.text
        changes: list[dict[str, Any]] = answer.json()["changes"]
        return changes


# One fleet for the module: 127.0.0.1 (the tests' client address) may use the admin API.
fleet = fleet_under_test(QuarantineFleet, "seed", access={"admin_allow": ["127.0.0.1/32"]})


def _served(fleet: QuarantineFleet, media: Media) -> bool:
    answer = fleet.download(media)
    assert answer.status_code in (200, 404), answer.text
    return answer.status_code == 200


@pytest.fixture
def media(fleet: QuarantineFleet) -> Iterator[Media]:
    """A file alice uploaded, served; released from quarantine again after the test."""
    uploaded = fleet.upload()
    assert _served(fleet, uploaded)
    yield uploaded
    fleet.admin("POST", f"/media/unquarantine/{uploaded.server}/{uploaded.media_id}")


@pytest.mark.integration
def test_quarantine_by_id_hides_the_file_until_unquarantined(fleet: QuarantineFleet, media: Media) -> None:
    quarantined = fleet.admin("POST", f"/media/quarantine/{media.server}/{media.media_id}")
    assert quarantined.status_code == 200, quarantined.text
    assert not _served(fleet, media)
    assert {"origin": media.server, "media_id": media.media_id, "quarantined": True} in fleet.changes()

    released = fleet.admin("POST", f"/media/unquarantine/{media.server}/{media.media_id}")
    assert released.status_code == 200, released.text
    assert _served(fleet, media)
    assert fleet.changes()[-1] == {"origin": media.server, "media_id": media.media_id, "quarantined": False}


@pytest.mark.integration
def test_quarantine_a_users_media(fleet: QuarantineFleet, media: Media) -> None:
    answer = fleet.admin("POST", f"/user/{quote(fleet.user_id)}/media/quarantine")
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_quarantined"] >= 1
    assert not _served(fleet, media)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/room/{room}/media/quarantine", "/quarantine_media/{room}"])
def test_quarantine_a_rooms_media(fleet: QuarantineFleet, media: Media, path: str) -> None:
    room_id = fleet.room_with_image(media)
    answer = fleet.admin("POST", path.format(room=quote(room_id)))
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_quarantined"] == 1
    assert not _served(fleet, media)
