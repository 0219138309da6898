"""Balancing keys: one key per room whatever the spelling, never past the path segment."""

from __future__ import annotations

import pytest

from synfleet.model.fleet import seed_fleet
from synfleet.routing.evaluate import evaluate
from synfleet.routing.plan import RoutingPlan

PLAN = RoutingPlan(seed_fleet())
V12 = "!" + "A" * 10 + "b-_9" + "z" * 29  # 43 characters after "!"
C = "/_matrix/client/v3"


def key(method: str, url: str, **headers: str) -> str:
    return evaluate(PLAN, method, url, headers).key


@pytest.mark.parametrize(
    "url",
    [
        f"{C}/rooms/!abc:example.org/messages",
        f"{C}/rooms/%21abc%3Aexample.org/messages",
        f"{C}/rooms/%21abc%3aexample.org/messages",
        f"{C}/rooms/!abc%3Aexample.org/messages",
        f"{C}/rooms/%21abc:example.org:8448/messages",
        f"{C}//rooms/!abc:other.server/messages?dir=b",
    ],
)
def test_legacy_room_id_spellings_share_one_key(url: str) -> None:
    assert key("GET", url) == "abc"


@pytest.mark.parametrize("spelling", [V12, V12.replace("!", "%21")])
def test_v12_room_ids_are_sharded(spelling: str) -> None:
    decision = evaluate(PLAN, "PUT", f"{C}/rooms/{spelling}/send/m.room.message/t1")
    assert decision.rule == "rooms_client"
    assert decision.key == V12[1:]
    assert len(decision.key) == 43


def test_v12_and_legacy_ids_of_different_rooms_differ() -> None:
    assert key("GET", f"{C}/rooms/{V12}/members") != key("GET", f"{C}/rooms/!abc:s/members")


def test_key_stops_at_the_room_segment() -> None:
    # The user ID after the room must not leak into the key (federation make_join, member state).
    assert key("GET", "/_matrix/federation/v1/make_join/!r:s/@u:other.org") == "r"
    assert key("GET", f"{C}/rooms/!r:s/state/m.room.member/@u:other.org") == "r"
    assert key("GET", f"{V12.join(['/_matrix/federation/v1/make_join/', '/%40u%3Aother'])}") == V12[1:]


def test_event_ids_are_not_room_ids() -> None:
    assert key("GET", f"{C}/rooms/!r:s/context/$ev!ent:s") == "r"
    assert key("GET", f"{C}/rooms/%21r%3As/event/%24event") == "r"
    # The event endpoint without a room is not a room request at all.
    assert evaluate(PLAN, "GET", "/_matrix/federation/v1/event/$e").rule == "federation_reader"


def test_aliases_are_not_room_ids() -> None:
    decision = evaluate(PLAN, "GET", f"{C}/directory/room/%23room:example.org")
    assert decision.rule == "client_reader"
    assert decision.key != "room"
    assert evaluate(PLAN, "POST", f"{C}/join/%23room%3Aexample.org").rule == "client_reader"
    assert evaluate(PLAN, "POST", f"{C}/join/%21room%3Aexample.org").rule == "rooms_join"


def test_empty_opaque_part_is_not_a_room() -> None:
    assert evaluate(PLAN, "GET", f"{C}/rooms/!:example.org/messages").rule == "client_reader"


def test_user_key_from_synapse_tokens() -> None:
    token = "syt_YWxpY2U_abcdefghijABCDEFGHIJ_1a2B3c"
    assert key("GET", f"{C}/sync", Authorization=f"Bearer {token}") == "YWxpY2U"
    assert key("GET", f"{C}/sync?since=s1&access_token={token}") == "YWxpY2U"
    assert key("GET", f"{C}/sync?ACCESS_TOKEN={token}") == "YWxpY2U"  # nginx matches $arg_ names in any case
    assert key("GET", f"{C}/sync?xaccess_token=other&access_token={token}") == "YWxpY2U"


def test_user_key_falls_back_to_token_then_client() -> None:
    assert key("GET", f"{C}/sync", Authorization="Bearer mat_opaque123") == "mat_opaque123"
    assert evaluate(PLAN, "GET", f"{C}/sync", remote_addr="127.0.0.9").key == "127.0.0.9"
    # A malformed Authorization header does not hide the query token.
    assert key("GET", f"{C}/sync?access_token=tok", Authorization="Basic abc") == "tok"


@pytest.mark.parametrize(
    "header",
    [
        'X-Matrix origin=remote.example,destination="us",key="ed25519:a",sig="x"',
        'X-Matrix key="ed25519:a",origin="remote.example",sig="x"',
        'X-Matrix destination="us", origin=remote.example, key="ed25519:a", sig="x"',
    ],
)
def test_federation_key_is_the_origin(header: str) -> None:
    assert key("PUT", "/_matrix/federation/v1/send/txn1", Authorization=header) == "remote.example"


def test_federation_key_falls_back_to_client_address() -> None:
    assert evaluate(PLAN, "PUT", "/_matrix/federation/v1/send/t", remote_addr="127.0.0.3").key == "127.0.0.3"
