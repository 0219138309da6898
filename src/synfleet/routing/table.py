"""The route table: the one place that decides which Synapse process serves a request.

Rules are tried in order against ``"<METHOD> <uri>"`` (``$uri``: decoded and normalised) and the
first match wins. Order encodes precedence: main-only endpoints, then stream writers (typing,
receipts, ... must reach their writer even though their paths name a room), then media (and the
admin endpoints generic workers serve, before the rest of the admin API), then every endpoint that
names a room and that a generic worker serves, then sync, federation and the other generic-worker
endpoints. Anything else goes to main.

Sources: Synapse's ``docs/workers.md`` (generic worker and stream writer endpoints) and the
servlets Synapse registers on each process. :mod:`synfleet.check.endpoints` proves the table
against the installed Synapse's registrations: every endpoint goes to a process that registers it,
and a MAIN rule that keeps endpoints a worker registers says why (``reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from synfleet.model.fleet import Role, Stream


class Key(StrEnum):
    """What a rule balances on when its upstream has several servers."""

    ROOM = "room"  # the room ID's opaque part: same for !x:s, %21x%3As and v12 !<43 chars>
    USER = "user"  # the localpart in a syt_ access token, else the token, else the client address
    ORIGIN = "origin"  # the origin server of a federation request (X-Matrix), else the client address
    NONE = "none"  # single-process targets


class Access(StrEnum):
    """Who may reach a path through nginx."""

    PUBLIC = "public"
    PRIVATE = "private"  # only addresses on the admin allow list
    DENIED = "denied"  # never proxied


Target = Role | Stream

ANY_METHOD: frozenset[str] = frozenset()
READ = frozenset({"GET", "HEAD"})
WRITE = frozenset({"PUT", "POST", "DELETE"})

# Building blocks, applied to the decoded $uri. A room segment starts with "!" and has at least one
# character of opaque part; the key itself is cut at ":" or "/".
CLIENT = "/_matrix/client/(?:api/v1|r0|v1|v3|unstable)"
CLIENT_R0 = "/_matrix/client/(?:r0|v3|unstable)"
ROOM = "![^/:][^/]*"
SEGMENT = "[^/]+"
FED = "/_matrix/federation/v1"
FED_V12 = "/_matrix/federation/v[12]"


@dataclass(frozen=True)
class Rule:
    """One route: requests whose method is in ``methods`` (empty: any), whose ``$uri`` matches
    ``path`` (anchored at the start) and whose query has none of ``without_args`` go to ``target``,
    balanced on ``key``.

    An ``optional`` rule is left out of a fleet that has no worker for its target, so that its
    requests go to the next rule that matches them instead of to main: a pool that takes part of
    another pool's requests when the fleet has one."""

    name: str
    path: str
    target: Target
    key: Key = Key.NONE
    methods: frozenset[str] = ANY_METHOD
    #: Query arguments the request must not have (nginx's ``$arg_<name>`` empty: absent or empty).
    without_args: frozenset[str] = frozenset()
    optional: bool = False
    #: Why a MAIN rule keeps endpoints that a worker registers (the endpoint proof lists them).
    reason: str = ""

    @property
    def map_regex(self) -> str:
        """The regex for nginx's ``map "$request_method $uri"``; Python's ``re`` reads it alike."""
        return self.map_regex_over(())

    def map_regex_over(self, args: tuple[str, ...]) -> str:
        """The regex for a map over ``"$request_method <token per argument> $uri"``: one token per
        query argument in ``args``, ``-`` when the request lacks it, else the argument's name."""
        methods = "|".join(sorted(self.methods)) if self.methods else "[A-Z_-]+"
        tokens = "".join("- " if arg in self.without_args else "[^ ]+ " for arg in args)
        return f"^(?:{methods}) {tokens}{self.path}"


def _rule(
    name: str,
    path: str,
    target: Target,
    key: Key = Key.NONE,
    methods: frozenset[str] = ANY_METHOD,
    reason: str = "",
) -> Rule:
    return Rule(name=name, path=path, target=target, key=key, methods=methods, reason=reason)


MAIN, SYNC, ROOMS = Role.MAIN, Role.CLIENT_SYNC, Role.ROOMS
READER, FED_READER, MEDIA = Role.CLIENT_READER, Role.FEDERATION_READER, Role.MEDIA

ROUTES: tuple[Rule, ...] = (
    # --- main only: endpoints no worker serves (some would otherwise match broader rules below)
    _rule("main_logout", f"{CLIENT}/logout(?:/all)?$", MAIN),
    _rule("main_pushers", f"{CLIENT}/pushers", MAIN),
    _rule("main_room_admin", f"{CLIENT}/rooms/{SEGMENT}/(?:forget|upgrade|report)(?:/|$)", MAIN),
    _rule("main_user_report", f"{CLIENT}/users/{SEGMENT}/report$", MAIN),
    _rule("main_account", f"{CLIENT}/account/(?:password|3pid/)", MAIN),
    _rule("main_request_token", f"{CLIENT}/.*/requestToken$", MAIN),
    _rule("main_directory_list", f"{CLIENT}/directory/list/room/", MAIN),
    _rule("main_thirdparty", f"{CLIENT}/thirdparty/", MAIN),
    _rule("main_openid", f"{CLIENT}/user/{SEGMENT}/openid/request_token$", MAIN),
    _rule("main_login_token", f"{CLIENT}/login/get_token$", MAIN),
    _rule("main_refresh", f"{CLIENT}/refresh$", MAIN),
    _rule("main_rendezvous", "/_matrix/client/(?:unstable/org.matrix.msc4108|v1)/rendezvous", MAIN),
    _rule(
        "main_sso",
        f"(?:{CLIENT}/login/(?:sso/redirect|cas/)|/_synapse/client/(?:pick_idp|pick_username/|new_user_consent"
        "|sso_register|oidc/|saml2/|password_reset/))",
        MAIN,
        reason="SSO sessions live in one process's memory: every step of a login must reach the same one",
    ),
    _rule(
        "main_health",
        "/health$",
        MAIN,
        reason="every process answers it; through nginx it reports main, which all the others need",
    ),
    _rule(
        "main_federation_openid",
        f"{FED}/openid/userinfo$",
        MAIN,
        reason="a worker registers it but answers 500: only main looks up OpenID tokens",
    ),
    # --- stream writers: before any room rule, their paths name rooms too
    _rule("stream_typing", f"{CLIENT}/rooms/{SEGMENT}/typing(?:/|$)", Stream.TYPING, Key.USER),
    _rule("stream_to_device", f"{CLIENT_R0}/sendToDevice/", Stream.TO_DEVICE, Key.USER),
    _rule(
        "stream_receipts",
        f"{CLIENT_R0}/rooms/{SEGMENT}/(?:receipt|read_markers)(?:/|$)",
        Stream.RECEIPTS,
        Key.ROOM,
    ),
    _rule(
        "stream_account_data",
        f"{CLIENT_R0}/(?:.*/)?user/{SEGMENT}/(?:rooms/{SEGMENT}/)?(?:tags|account_data)(?:/|$)",
        Stream.ACCOUNT_DATA,
        Key.USER,
    ),
    _rule("stream_presence", f"{CLIENT}/presence/", Stream.PRESENCE, Key.USER),
    _rule("stream_push_rules", f"{CLIENT}/pushrules/", Stream.PUSH_RULES, Key.USER, WRITE),
    _rule(
        "stream_device_lists",
        f"(?:{CLIENT_R0}/(?:delete_devices$|keys/upload)|{CLIENT}/(?:devices(?:/|$)"
        "|keys/(?:device_signing|signatures)/upload$)"
        "|/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device(?:/|$))",
        Stream.DEVICE_LISTS,
        Key.USER,
    ),
    _rule(
        "stream_thread_subscriptions",
        f"/_matrix/client/unstable/io.element.msc4306/rooms/{SEGMENT}/thread/{SEGMENT}/subscription",
        Stream.THREAD_SUBSCRIPTIONS,
        Key.USER,
    ),
    # --- media repository (client, legacy and federation prefixes) and media admin
    _rule("media", "/_(?:matrix/(?:media|client/v1/media|federation/v1/media)|synapse/media)/", MEDIA, Key.USER),
    # Quarantine records each change in the quarantined_media_changes stream on the process that
    # serves it: only processes with the media repository serve it, and those the model makes the
    # stream's writers (media workers, main without them: Fleet.media_repository).
    _rule(
        "media_quarantine",
        "/_synapse/admin/v1/(?:media/(?:un)?quarantine/|quarantine_media/"
        f"|room/{SEGMENT}/media/quarantine$|user/{SEGMENT}/media/quarantine$)",
        MEDIA,
        Key.USER,
    ),
    _rule(
        "media_admin",
        "/_synapse/admin/v1/(?:purge_media_cache$|media/|quarantine_media/"
        f"|room/{SEGMENT}/media|user/{SEGMENT}/media|users/{SEGMENT}/media$)",
        MEDIA,
        Key.USER,
    ),
    # --- the admin endpoints generic workers serve: one room's details (and its deletion), a user's
    # account (reading only); the rest of the admin API is main's
    _rule("rooms_admin", f"/_synapse/admin/v1/rooms/{ROOM}$", ROOMS, Key.ROOM),
    _rule("client_reader_admin", f"/_synapse/admin/v2/users/{SEGMENT}$", READER, Key.USER, READ),
    _rule("main_admin", "/_synapse/admin/", MAIN),
    # --- requests naming a room that generic workers serve: one room, one worker
    _rule(
        "rooms_client",
        f"{CLIENT}/rooms/{ROOM}/(?:joined_members$|members$|state$|state/|messages$|context/|event/"
        "|relations/|threads$|hierarchy$|timestamp_to_event$|aliases|initialSync$|redact/|send/"
        "|(?:join|invite|leave|ban|unban|kick)(?:/[^/]+)?$)",
        ROOMS,
        Key.ROOM,
    ),
    _rule("rooms_aliases", f"/_matrix/client/unstable/org.matrix.msc2432/rooms/{ROOM}/aliases$", ROOMS, Key.ROOM),
    _rule("rooms_join", f"{CLIENT}/(?:join|knock)/{ROOM}(?:/[^/]+)?$", ROOMS, Key.ROOM),
    _rule(
        "rooms_summary",
        f"/_matrix/client/(?:unstable/im.nheko.summary/(?:summary/{ROOM}$|rooms/{ROOM}/summary$)"
        f"|v1/room_summary/{ROOM}$)",
        ROOMS,
        Key.ROOM,
    ),
    _rule(
        "rooms_federation",
        f"(?:{FED}/(?:state|state_ids|backfill|get_missing_events|make_join|make_leave|make_knock"
        f"|send_knock|event_auth|timestamp_to_event|exchange_third_party_invite|hierarchy)"
        f"|{FED_V12}/(?:send_join|send_leave|invite))/{ROOM}"
        f"|/_matrix/federation/unstable/rooms/{ROOM}/complexity$",
        ROOMS,
        Key.ROOM,
    ),
    # --- sync, sticky per user. Initial syncs (no since; sliding sync's first request has no pos)
    # build a whole account's state from scratch: with an initial-sync pool, a burst of them does not
    # hold up live sync. Without one, they are syncs like the others.
    Rule(
        "initial_sync",
        "/_matrix/client/(?:r0|v3|unstable)/sync$",
        Role.INITIAL_SYNC,
        Key.USER,
        READ,
        without_args=frozenset({"since"}),
        optional=True,
    ),
    Rule(
        "initial_sliding_sync",
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync$",
        Role.INITIAL_SYNC,
        Key.USER,
        frozenset({"POST"}),
        without_args=frozenset({"pos"}),
        optional=True,
    ),
    Rule(
        "initial_sync_legacy",
        "/_matrix/client/(?:api/v1|r0|v3|unstable)/initialSync$",
        Role.INITIAL_SYNC,
        Key.USER,
        optional=True,
    ),
    _rule(
        "sync",
        "/_matrix/client/(?:(?:r0|v3|unstable)/sync|(?:api/v1|r0|v3|unstable)/(?:events|initialSync)"
        "|unstable/org.matrix.simplified_msc3575/sync)$",
        SYNC,
        Key.USER,
    ),
    # --- inbound federation, sticky per origin server
    _rule("federation_send", f"{FED}/send/", FED_READER, Key.ORIGIN),
    _rule(
        "federation_reader",
        f"(?:{FED}/(?:version$|event/|state/|state_ids/|backfill/|get_missing_events/|publicRooms"
        "|query/|make_join/|make_leave/|make_knock/|send_knock/|event_auth/|timestamp_to_event/"
        "|exchange_third_party_invite/|user/devices/|user/keys/(?:query|claim)$|hierarchy/|3pid/onbind$)"
        f"|{FED_V12}/(?:send_join|send_leave|invite)/|/_matrix/key/v2/(?:query|server)"
        "|/_matrix/federation/unstable/org.matrix.msc3720/query/account_status$)",
        FED_READER,
        Key.ORIGIN,
    ),
    # --- the other generic-worker client endpoints
    _rule(
        "client_reader",
        f"(?:{CLIENT}/(?:createRoom(?:/[^/]+)?$|publicRooms$|events/[^/]+$|account/(?:3pid|whoami|deactivate)$|voip/turnServer$"
        "|joined_rooms$|search$|user/[^/]+/filter(?:/|$)|directory/room/|capabilities$|notifications$"
        "|keys/(?:query|changes|claim)$|room_keys/|login$|register(?:/available)?$|password_policy$"
        "|join/|knock/|profile/|user_directory/search$|rooms/[^/]+/(?:joined_members$|members$"
        "|state|messages$|context/|event/|relations/|threads$|hierarchy$|timestamp_to_event$|aliases"
        "|redact/|send/|(?:join|invite|leave|ban|unban|kick)$))"
        "|/_matrix/client/versions$|/_matrix/client/(?:v1|unstable)/register/m.login.registration_token/validity$"
        "|/_matrix/client/(?:unstable/im.nheko.summary/(?:summary|rooms)/|v1/room_summary/)"
        "|/_matrix/client/(?:v1|unstable)/appservice/[^/]+/ping$"
        "|/_matrix/client/unstable/org.matrix.msc4140/delayed_events/[^/]+/restart$"
        "|/_matrix/client/unstable/org.matrix.msc3720/account_status$"
        "|/_matrix/client/unstable/org.matrix.msc2432/rooms/[^/]+/aliases$"
        "|/_synapse/client/(?:unsubscribe|media_upload_limit_exceeded)$|/.well-known/matrix/)",
        READER,
        Key.USER,
    ),
    _rule(
        "client_reader_get",
        f"(?:{CLIENT}/pushrules/|/_matrix/client/unstable/(?:org.matrix.msc4140/delayed_events"
        "|io.element.msc4308/thread_subscriptions$))",
        READER,
        Key.USER,
        READ,
    ),
)

#: Where a request that no rule matches goes.
DEFAULT_RULE = Rule(name="main_default", path="/", target=Role.MAIN)


@dataclass(frozen=True)
class Zone:
    """A path prefix with an access policy, checked before routing (an nginx prefix location)."""

    prefix: str
    access: Access


ZONES: tuple[Zone, ...] = (
    Zone("/_synapse/admin", Access.PRIVATE),
    Zone("/_synapse/replication", Access.DENIED),
    Zone("/_synapse/metrics", Access.DENIED),
)


#: Media uploads: the only requests whose body may be larger than Synapse's limit for the others
#: (up to the fleet's ``media.max_upload_size``). Synapse serves them under these prefixes alone.
MEDIA_UPLOAD_PREFIXES = tuple(f"/_matrix/media/{version}/upload" for version in ("r0", "v1", "v3"))


def zone_for(uri: str) -> Access:
    """The access policy of ``uri``: the longest matching zone prefix, else public."""
    best = max((z for z in ZONES if uri.startswith(z.prefix)), key=lambda z: len(z.prefix), default=None)
    return best.access if best else Access.PUBLIC
