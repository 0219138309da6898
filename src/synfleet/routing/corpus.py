"""A corpus of requests covering every endpoint family of the route table.

Room IDs come in both forms (``!opaque:server`` and room version 12's ``!`` + 43 characters), raw
and percent-encoded; user and event IDs and aliases likewise. Requests carry Synapse access tokens
in the header or the query, other tokens, or none; federation requests carry X-Matrix headers.
Generated from a seed, so a corpus is reproducible.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass

from synfleet.nginx.binary.harness import Probe

C = "/_matrix/client/v3"
R0 = "/_matrix/client/r0"
V1 = "/_matrix/client/v1"
F = "/_matrix/federation/v1"
F2 = "/_matrix/federation/v2"
ADMIN = "/_synapse/admin/v1"

# (methods, path template, kind). Placeholders: {room} {user} {event} {alias} {txn} {media}.
# kind "client" gets client auth variants, "federation" X-Matrix variants, "none" no credentials.
ENDPOINTS: tuple[tuple[str, str, str], ...] = (
    # main only
    ("POST", f"{C}/logout", "client"),
    ("POST", f"{C}/logout/all", "client"),
    ("GET", f"{C}/pushers", "client"),
    ("POST", f"{C}/pushers/set", "client"),
    ("POST", f"{C}/rooms/{{room}}/forget", "client"),
    ("POST", f"{C}/rooms/{{room}}/upgrade", "client"),
    ("POST", f"{C}/rooms/{{room}}/report/{{event}}", "client"),
    ("POST", f"{C}/rooms/{{room}}/report", "client"),
    ("POST", f"{C}/users/{{user}}/report", "client"),
    ("POST", f"{C}/account/password", "client"),
    ("POST", f"{C}/account/3pid/add", "client"),
    ("POST", f"{C}/account/3pid/delete", "client"),
    ("POST", f"{C}/account/3pid/bind", "client"),
    ("POST", f"{C}/account/3pid/email/requestToken", "none"),
    ("POST", f"{C}/register/email/requestToken", "none"),
    ("POST", f"{C}/account/password/msisdn/requestToken", "none"),
    ("GET,PUT", f"{C}/directory/list/room/{{room}}", "client"),
    ("GET", f"{C}/thirdparty/protocols", "client"),
    ("POST", f"{C}/user/{{user}}/openid/request_token", "client"),
    ("POST", f"{V1}/login/get_token", "client"),
    ("POST", f"{C}/refresh", "none"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4108/rendezvous", "none"),
    ("GET", f"{C}/login/sso/redirect?redirectUrl=https%3A%2F%2Fapp.example", "none"),
    ("GET", f"{C}/login/sso/redirect/oidc-github", "none"),
    ("GET", "/_synapse/client/pick_idp", "none"),
    ("GET", "/_synapse/client/oidc/callback?code=x&state=y", "none"),
    ("GET,POST", "/_synapse/client/pick_username/account_details", "none"),
    ("GET", f"{F}/openid/userinfo?access_token=abc", "none"),
    ("GET,POST", f"{ADMIN}/register", "none"),
    ("GET,PUT", "/_synapse/admin/v2/users/{user}", "client"),
    ("GET,DELETE", f"{ADMIN}/rooms/{{room}}", "client"),
    ("POST", f"{ADMIN}/purge_history/{{room}}", "client"),
    # stream writers
    ("PUT", f"{C}/rooms/{{room}}/typing/{{user}}", "client"),
    ("PUT", f"{R0}/rooms/{{room}}/typing/{{user}}", "client"),
    ("PUT", f"{C}/sendToDevice/m.room_key_request/{{txn}}", "client"),
    ("PUT", f"{R0}/sendToDevice/m.room.encrypted/{{txn}}", "client"),
    ("POST", f"{C}/rooms/{{room}}/receipt/m.read/{{event}}", "client"),
    ("POST", f"{C}/rooms/{{room}}/receipt/m.read.private/{{event}}", "client"),
    ("POST", f"{C}/rooms/{{room}}/read_markers", "client"),
    ("GET,PUT,DELETE", f"{C}/user/{{user}}/rooms/{{room}}/tags/m.favourite", "client"),
    ("GET", f"{C}/user/{{user}}/rooms/{{room}}/tags", "client"),
    ("GET,PUT", f"{C}/user/{{user}}/account_data/m.direct", "client"),
    ("GET,PUT", f"{C}/user/{{user}}/rooms/{{room}}/account_data/m.fully_read", "client"),
    ("DELETE", "/_matrix/client/unstable/org.matrix.msc3391/user/{user}/account_data/m.x", "client"),
    ("GET,PUT", f"{C}/presence/{{user}}/status", "client"),
    ("PUT,DELETE,POST", f"{C}/pushrules/global/override/rule1", "client"),
    ("PUT", f"{C}/pushrules/global/room/{{room}}/enabled", "client"),
    ("GET", f"{C}/pushrules/", "client"),
    ("GET", f"{C}/pushrules/global/override/rule1", "client"),
    ("POST", f"{C}/delete_devices", "client"),
    ("GET", f"{C}/devices", "client"),
    ("GET,PUT,DELETE", f"{C}/devices/ABCDEFGH", "client"),
    ("POST", f"{C}/keys/upload", "client"),
    ("POST", f"{R0}/keys/upload/ABCDEFGH", "client"),
    ("POST", f"{C}/keys/device_signing/upload", "client"),
    ("POST", f"{C}/keys/signatures/upload", "client"),
    (
        "PUT,GET",
        "/_matrix/client/unstable/io.element.msc4306/rooms/{room}/thread/{event}/subscription",
        "client",
    ),
    # media, all three prefixes and the legacy endpoints
    ("GET", "/_matrix/media/v3/download/{media}", "none"),
    ("GET", "/_matrix/media/v3/download/{media}/cat.png", "none"),
    ("GET", "/_matrix/media/r0/thumbnail/{media}?width=32&height=32", "none"),
    ("POST", "/_matrix/media/v3/upload?filename=cat.png", "client"),
    ("PUT", "/_matrix/media/v3/upload/{media}", "client"),
    ("POST", "/_matrix/media/v1/create", "client"),
    ("GET", "/_matrix/media/v3/config", "client"),
    ("GET", "/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.org%2F", "client"),
    ("GET", f"{V1}/media/download/{{media}}", "client"),
    ("GET", f"{V1}/media/thumbnail/{{media}}?width=64&height=64&method=scale", "client"),
    ("GET", f"{V1}/media/config", "client"),
    ("GET", f"{V1}/media/preview_url?url=https%3A%2F%2Fexample.org%2F", "client"),
    ("GET", f"{F}/media/download/abcdefMEDIA", "federation"),
    ("GET", f"{F}/media/thumbnail/abcdefMEDIA?width=32&height=32", "federation"),
    ("POST", f"{ADMIN}/purge_media_cache?before_ts=1", "client"),
    ("GET,DELETE", f"{ADMIN}/media/{{media}}", "client"),
    ("POST", f"{ADMIN}/media/quarantine/{{media}}", "client"),
    ("POST", f"{ADMIN}/quarantine_media/{{room}}", "client"),
    ("POST", f"{ADMIN}/media/unquarantine/{{media}}", "client"),
    ("POST", f"{ADMIN}/room/{{room}}/media/quarantine", "client"),
    ("POST", f"{ADMIN}/user/{{user}}/media/quarantine", "client"),
    ("GET", f"{ADMIN}/room/{{room}}/media", "client"),
    ("GET,DELETE", f"{ADMIN}/users/{{user}}/media", "client"),
    ("GET", f"{ADMIN}/users/{{user}}/joined_rooms", "client"),
    ("GET", "/_synapse/admin/v2/users", "client"),
    # rooms: generic-worker endpoints naming a room
    ("GET", f"{C}/rooms/{{room}}/messages?dir=b&limit=20", "client"),
    ("GET", f"{R0}/rooms/{{room}}/messages?from=t1&dir=f", "client"),
    ("GET", f"{C}/rooms/{{room}}/members", "client"),
    ("GET", f"{C}/rooms/{{room}}/joined_members", "client"),
    ("GET", f"{C}/rooms/{{room}}/state", "client"),
    ("GET,PUT", f"{C}/rooms/{{room}}/state/m.room.name", "client"),
    ("GET,PUT", f"{C}/rooms/{{room}}/state/m.room.member/{{user}}", "client"),
    ("GET", f"{C}/rooms/{{room}}/context/{{event}}?limit=5", "client"),
    ("GET", f"{C}/rooms/{{room}}/event/{{event}}", "client"),
    ("GET", f"{V1}/rooms/{{room}}/relations/{{event}}", "client"),
    ("GET", f"{V1}/rooms/{{room}}/relations/{{event}}/m.thread", "client"),
    ("GET", f"{V1}/rooms/{{room}}/threads", "client"),
    ("GET", f"{V1}/rooms/{{room}}/hierarchy", "client"),
    ("GET", f"{V1}/rooms/{{room}}/timestamp_to_event?ts=1&dir=f", "client"),
    ("GET", f"{C}/rooms/{{room}}/aliases", "client"),
    ("GET", f"{C}/rooms/{{room}}/initialSync", "client"),
    ("PUT", f"{C}/rooms/{{room}}/redact/{{event}}/{{txn}}", "client"),
    ("PUT", f"{C}/rooms/{{room}}/send/m.room.message/{{txn}}", "client"),
    ("PUT", f"{R0}/rooms/{{room}}/send/m.reaction/{{txn}}", "client"),
    ("POST", f"{C}/rooms/{{room}}/join", "client"),
    ("POST", f"{C}/rooms/{{room}}/invite", "client"),
    ("POST", f"{C}/rooms/{{room}}/leave", "client"),
    ("POST", f"{C}/rooms/{{room}}/ban", "client"),
    ("POST", f"{C}/rooms/{{room}}/unban", "client"),
    ("POST", f"{C}/rooms/{{room}}/kick", "client"),
    ("POST", f"{C}/join/{{room}}?server_name=example.org", "client"),
    ("POST", f"{C}/knock/{{room}}", "client"),
    ("GET", "/_matrix/client/unstable/im.nheko.summary/summary/{room}", "client"),
    ("GET", f"{F}/state/{{room}}?event_id={{event}}", "federation"),
    ("GET", f"{F}/state_ids/{{room}}?event_id={{event}}", "federation"),
    ("GET", f"{F}/backfill/{{room}}?v={{event}}&limit=10", "federation"),
    ("POST", f"{F}/get_missing_events/{{room}}", "federation"),
    ("GET", f"{F}/make_join/{{room}}/{{user}}?ver=10&ver=12", "federation"),
    ("GET", f"{F}/make_leave/{{room}}/{{user}}", "federation"),
    ("GET", f"{F}/make_knock/{{room}}/{{user}}?ver=12", "federation"),
    ("PUT", f"{F}/send_knock/{{room}}/{{event}}", "federation"),
    ("PUT", f"{F2}/send_join/{{room}}/{{event}}", "federation"),
    ("PUT", f"{F}/send_join/{{room}}/{{event}}", "federation"),
    ("PUT", f"{F2}/send_leave/{{room}}/{{event}}", "federation"),
    ("PUT", f"{F2}/invite/{{room}}/{{event}}", "federation"),
    ("GET", f"{F}/event_auth/{{room}}/{{event}}", "federation"),
    ("GET", f"{F}/timestamp_to_event/{{room}}?ts=1&dir=b", "federation"),
    ("PUT", f"{F}/exchange_third_party_invite/{{room}}", "federation"),
    ("GET", f"{F}/hierarchy/{{room}}", "federation"),
    # sync
    ("GET", f"{C}/sync", "client"),
    ("GET", f"{C}/sync?since=s72594_4483_1934&timeout=30000", "client"),
    ("GET", f"{R0}/sync?filter=0&timeout=0", "client"),
    # with and without since (initial syncs: an initial-sync pool's), spelled as nginx's $arg_ reads it
    ("GET", f"{C}/sync?timeout=0&since=s1_2_3&full_state=true", "client"),
    ("GET", f"{C}/sync?since=&timeout=0", "client"),
    ("GET", f"{C}/sync?Since=s9&filter=1", "client"),
    ("GET", f"{C}/sync?nosince=s9&since_x=1", "client"),
    ("GET", f"{C}/sync?filter=%7B%7D&since=s2&since=", "client"),
    ("HEAD,POST", f"{C}/sync", "client"),
    ("GET", f"{C}/events?from=s1", "client"),
    ("GET", f"{C}/initialSync?limit=1", "client"),
    ("GET", "/_matrix/client/unstable/initialSync", "client"),
    ("GET", "/_matrix/client/unstable/sync?since=s3", "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos=0", "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0", "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos=&conn_id=a", "client"),
    # federation
    ("PUT", f"{F}/send/{{txn}}", "federation"),
    ("GET", f"{F}/version", "none"),
    ("GET", f"{F}/event/{{event}}", "federation"),
    ("GET,POST", f"{F}/publicRooms", "federation"),
    ("GET", f"{F}/query/directory?room_alias={{alias}}", "federation"),
    ("GET", f"{F}/query/profile?user_id={{user}}", "federation"),
    ("GET", f"{F}/user/devices/{{user}}", "federation"),
    ("POST", "/_matrix/key/v2/query", "federation"),
    ("GET", "/_matrix/key/v2/server", "none"),
    ("POST", f"{F}/user/keys/query", "federation"),
    # other generic worker endpoints
    ("POST", f"{C}/createRoom", "client"),
    ("GET,POST", f"{C}/publicRooms", "client"),
    ("GET", f"{C}/account/3pid", "client"),
    ("GET", f"{C}/account/whoami", "client"),
    ("POST", f"{C}/account/deactivate", "client"),
    ("GET", "/_matrix/client/versions", "none"),
    ("GET", f"{C}/voip/turnServer", "client"),
    ("GET", f"{C}/joined_rooms", "client"),
    ("POST", f"{C}/search?next_batch=x", "client"),
    ("POST", f"{C}/user/{{user}}/filter", "client"),
    ("GET", f"{C}/user/{{user}}/filter/12", "client"),
    ("GET,PUT,DELETE", f"{C}/directory/room/{{alias}}", "client"),
    ("GET", f"{C}/capabilities", "client"),
    ("GET", f"{C}/notifications?limit=5", "client"),
    ("POST", f"{C}/keys/query", "client"),
    ("GET", f"{C}/keys/changes?from=a&to=b", "client"),
    ("POST", f"{C}/keys/claim", "client"),
    ("GET,PUT", f"{C}/room_keys/version", "client"),
    ("GET", f"{C}/room_keys/keys/{{room}}?version=1", "client"),
    ("GET,POST", f"{C}/login", "none"),
    ("POST", f"{C}/register", "none"),
    ("GET", f"{C}/register/available?username=alice", "none"),
    ("GET", f"{V1}/register/m.login.registration_token/validity?token=x", "none"),
    ("GET", f"{C}/password_policy", "client"),
    ("POST", f"{C}/join/{{alias}}", "client"),
    ("GET,PUT", f"{C}/profile/{{user}}/displayname", "client"),
    ("GET", f"{C}/profile/{{user}}", "client"),
    ("POST", f"{C}/user_directory/search", "client"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events", "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/abc", "client"),
    ("GET", f"{C}/rooms/{{alias}}/messages", "client"),
    # endpoints generic workers serve beyond docs/workers.md (proven by tests/test_servlets.py)
    ("GET", f"{V1}/room_summary/{{room}}", "client"),
    ("GET", "/_matrix/client/unstable/im.nheko.summary/rooms/{room}/summary", "client"),
    ("GET", f"{V1}/room_summary/{{alias}}", "client"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc2432/rooms/{room}/aliases", "client"),
    ("PUT", f"{C}/rooms/{{room}}/invite/{{txn}}", "client"),
    ("PUT", f"{C}/join/{{room}}/{{txn}}", "client"),
    ("PUT", f"{C}/createRoom/{{txn}}", "client"),
    ("GET", f"{C}/events/{{event}}", "client"),
    ("GET", "/_matrix/client/unstable/sync", "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/abc/restart", "client"),
    ("POST", f"{V1}/appservice/irc/ping", "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc3720/account_status", "client"),
    ("GET", "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions", "client"),
    ("GET,PUT", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", "client"),
    ("GET", "/_synapse/client/unsubscribe?access_token=x", "none"),
    ("GET", "/_matrix/federation/unstable/rooms/{room}/complexity", "federation"),
    ("POST", f"{F}/3pid/onbind", "none"),
    ("POST", "/_matrix/federation/unstable/org.matrix.msc3720/query/account_status", "federation"),
    ("GET,DELETE", f"{ADMIN}/rooms/{{room}}", "client"),
    ("GET", "/_synapse/admin/v2/users/{user}", "client"),
    # never proxied, or not Matrix at all
    ("GET,POST", "/_synapse/replication/send_event/{event}/{txn}", "none"),
    ("GET", "/_synapse/metrics", "none"),
    ("GET", "/.well-known/matrix/client", "none"),
    ("GET", "/.well-known/matrix/server", "none"),
    ("GET", "/health", "none"),
    ("GET", "/", "none"),
    ("GET", f"{C}/not_an_endpoint", "client"),
)

SERVERS = ("example.org", "matrix.example.com", "other.net:8448", "chat.example-server.de")


def _choice_encoded(rng: random.Random, raw: str, reserved: str) -> str:
    """``raw`` with its sigil and ``:`` raw or percent-encoded (upper or lower case hex)."""
    out = []
    for ch in raw:
        if ch in reserved and rng.random() < 0.5:
            code = f"%{ord(ch):02X}"
            out.append(code if rng.random() < 0.7 else code.lower())
        else:
            out.append(ch)
    return "".join(out)


def v12_room_id(rng: random.Random) -> str:
    return "!" + base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")


def legacy_room_id(rng: random.Random) -> str:
    opaque = "".join(rng.choices(string.ascii_letters, k=18))
    return f"!{opaque}:{rng.choice(SERVERS)}"


def room_keys(count: int, seed: int | None = None) -> list[str]:
    """The room keys (opaque parts) of ``count`` random room version 12 IDs; ``seed`` repeats them."""
    rng = random.Random(seed)
    return [v12_room_id(rng)[1:] for _ in range(count)]


def user_localpart(rng: random.Random) -> str:
    return rng.choice(["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]) + str(rng.randrange(50))


def syt_token(localpart: str, rng: random.Random) -> str:
    b64 = base64.b64encode(localpart.encode()).decode().rstrip("=")
    rand = "".join(rng.choices(string.ascii_letters, k=20))
    crc = "".join(rng.choices(string.ascii_letters + string.digits, k=6))
    return f"syt_{b64}_{rand}_{crc}"


@dataclass(frozen=True)
class Corpus:
    """Probes for every endpoint family; ``size`` requests from ``seed``."""

    seed: int = 1
    size: int = 2400

    def fill(self, template: str, rng: random.Random) -> str:
        room = legacy_room_id(rng) if rng.random() < 0.5 else v12_room_id(rng)
        user = f"@{user_localpart(rng)}:{rng.choice(SERVERS)}"
        event = "$" + base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")
        values = {
            "room": _choice_encoded(rng, room, "!:"),
            "user": _choice_encoded(rng, user, "@:"),
            "event": _choice_encoded(rng, event, "$"),
            "alias": _choice_encoded(rng, f"#room{rng.randrange(99)}:{rng.choice(SERVERS)}", "#:").replace("#", "%23"),
            "txn": f"m{rng.randrange(10**12)}.{rng.randrange(100)}",
            "media": rng.choice(SERVERS).split(":")[0] + "/" + "".join(rng.choices(string.ascii_letters, k=24)),
        }
        return template.format(**values)

    def headers(self, kind: str, url: str, rng: random.Random) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Credentials for one request: possibly moves the token into the query string."""
        if kind == "federation":
            origin = rng.choice(SERVERS)
            variant = rng.randrange(4)
            if variant == 0:
                return url, ()
            if variant == 1:
                value = f'X-Matrix origin={origin},destination="example.org",key="ed25519:a",sig="c2ln"'
            elif variant == 2:
                value = f'X-Matrix key="ed25519:a", origin="{origin}", sig="c2ln"'
            else:
                value = f'X-Matrix destination="example.org",origin="{origin}",key="ed25519:a",sig="c2ln"'
            return url, (("Authorization", value),)
        if kind == "none":
            return url, ()
        token = syt_token(user_localpart(rng), rng)
        variant = rng.randrange(5)
        if variant == 0:
            return url, ()
        if variant == 1:
            token = "mat_" + "".join(rng.choices(string.ascii_letters + string.digits, k=30))
        if variant == 2:
            joiner = "&" if "?" in url else "?"
            name = rng.choice(["access_token", "access_token", "ACCESS_TOKEN"])
            return f"{url}{joiner}{name}={token}", ()
        return url, (("Authorization", f"Bearer {token}"),)

    def path_noise(self, url: str, rng: random.Random) -> str:
        """Equivalent spellings nginx normalises: doubled slashes, ``/./``, encoded letters."""
        path, sep, query = url.partition("?")
        roll = rng.random()
        if roll < 0.05:
            path = path.replace("/_matrix/", "//_matrix//", 1)
        elif roll < 0.08:
            path = path.replace("/_matrix/", "/_matrix/./", 1)
        elif roll < 0.10:
            path = path.replace("/rooms/", "/r%6Foms/", 1)
        elif roll < 0.12:
            path = path.replace("/_matrix/", "/x/../_matrix/", 1)
        return path + sep + query

    def __iter__(self) -> Iterator[Probe]:
        rng = random.Random(self.seed)
        expanded = [(m, path, kind) for methods, path, kind in ENDPOINTS for m in methods.split(",")]
        for number in range(self.size):
            # Every endpoint at least once, in order; then random ones.
            method, template, kind = expanded[number] if number < len(expanded) else rng.choice(expanded)
            url = self.path_noise(self.fill(template, rng), rng)
            url, headers = self.headers(kind, url, rng)
            yield Probe(method, url, headers)
