"""The routing plan of one fleet: the route table resolved to upstreams, and the nginx maps that
compute route, upstream and balancing key for a request.

The same :class:`~synfleet.nginx.variables.Map` records are rendered into ``maps.conf`` and evaluated
by :mod:`synfleet.routing.evaluate`, so nginx and Python cannot disagree about what they contain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from synfleet.layout import COMPOSE, INBOUND_PREFIX, inbound_socket
from synfleet.model.fleet import Fleet, Role, Stream, Worker
from synfleet.nginx.upstream import Balancing, Upstream
from synfleet.nginx.variables import Map, MapEntry
from synfleet.routing.table import DEFAULT_RULE, ROUTES, Key, Rule, Target

#: Weight of every server in a hashed upstream. nginx places 160 ring points per unit of weight; with
#: the default weight 1 four room workers can differ by +-20% in load, with 8 (1,280 points each)
#: by about +-6%. Equal weights keep shares equal; only the evenness improves.
HASH_WEIGHT = 8


class Variable(StrEnum):
    """The nginx variables the rendered config computes (in maps.conf), read by its templates, the
    checks and the access log."""

    BEARER = "$synfleet_bearer"  # the access token
    USER = "$synfleet_user"  # the user's key
    ORIGIN = "$synfleet_origin"  # the origin server of a federation request
    ROOM = "$synfleet_room"  # the room key
    CONNECTION = "$synfleet_connection"  # the Connection header sent upstream
    ROUTE = "$synfleet_route"  # the rule a request matched
    UPSTREAM = "$synfleet_upstream"  # that rule's upstream
    KEY = "$synfleet_key"  # what hashed upstreams hash on


#: The nginx variable hashed upstreams hash on.
HASH_KEY = Variable.KEY.value
#: Every upstream's name begins like the inbound sockets' names (the seed's names).
UPSTREAM_PREFIX = INBOUND_PREFIX

_GROUP_NAMES = {
    Role.MAIN: "main",
    Role.CLIENT_SYNC: "client_syncs",
    Role.INITIAL_SYNC: "initial_syncs",
    Role.ROOMS: "room_workers",
    Role.CLIENT_READER: "client_readers",
    Role.FEDERATION_READER: "federation_readers",
    Role.MEDIA: "media",
}

#: Roles whose upstream can grow by adding workers (``synfleet ring``).
GROWABLE = (Role.ROOMS, Role.CLIENT_SYNC, Role.INITIAL_SYNC, Role.CLIENT_READER, Role.FEDERATION_READER, Role.MEDIA)

#: The nginx variable each balancing key is computed into.
KEY_VARIABLES = {
    Key.ROOM: Variable.ROOM.value,
    Key.USER: Variable.USER.value,
    Key.ORIGIN: Variable.ORIGIN.value,
    Key.NONE: "",
}


def upstream_name(target: Target) -> str:
    """The upstream of a target's workers: ``synapse_inbound_room_workers``, ``..._typing_writers``."""
    if isinstance(target, Stream):
        return f"{UPSTREAM_PREFIX}{target.value}_writers"
    return f"{UPSTREAM_PREFIX}{_GROUP_NAMES[target]}"


def group_of_upstream(name: str) -> str:
    """The group an upstream serves, as :func:`upstream_name` named it (``room_workers``)."""
    return name.removeprefix(UPSTREAM_PREFIX)


def group_upstream(
    names: tuple[str, ...], name: str, socket_dir: str, balancing: Balancing, remote: Mapping[str, str] | None = None
) -> Upstream:
    """The upstream of one group of workers, each on its inbound socket (or, on another host, at its
    ``remote`` address:port); hashed over several workers with :data:`HASH_WEIGHT` each."""
    hashed = balancing is Balancing.CONSISTENT_HASH and len(names) > 1
    remote = remote or {}
    return Upstream(
        name,
        servers=tuple(remote.get(n) or f"unix:{inbound_socket(socket_dir, n)}" for n in names),
        workers=names,
        weights=(HASH_WEIGHT if hashed else 1,) * len(names),
        balancing=balancing,
        key=HASH_KEY if balancing is Balancing.CONSISTENT_HASH else "",
    )


# The balancing keys. Synapse's access tokens look like syt_<base64 localpart>_<random>_<crc>; the
# base64 alphabet has no "_", so the localpart is everything up to the next "_".
KEY_MAPS: tuple[Map, ...] = (
    Map(
        "$http_authorization",
        Variable.BEARER,
        (MapEntry("~^Bearer (?P<bearer>[^ ]+)$", "$bearer"),),
        default="$arg_access_token",
        comment="Access token: Authorization header, else the access_token query parameter",
    ),
    Map(
        Variable.BEARER,
        Variable.USER,
        (MapEntry("", "$remote_addr"), MapEntry("~^syt_(?P<localpart>[^_]+)_", "$localpart")),
        default=Variable.BEARER,
        comment="User key: the localpart in a Synapse token, else the whole token, else the client",
    ),
    Map(
        "$http_authorization",
        Variable.ORIGIN,
        (MapEntry('~^X-Matrix +(?:.*,)? *origin="?(?P<origin>[^",]+)', "$origin"),),
        default="$remote_addr",
        comment="Federation key: the origin server in the X-Matrix header, else the client",
    ),
    Map(
        "$uri",
        Variable.ROOM,
        (MapEntry("~^/_(?:matrix|synapse/admin)/.*?/!(?P<room>[^/:]+)", "$room"),),
        default="",
        comment="Room key: the opaque part of the first room ID (decoded $uri: ! and %21 alike)",
    ),
)


def arg_variable(name: str) -> str:
    """The nginx variable that says whether a request has the query argument ``name``."""
    return f"$synfleet_arg_{name}"


def arg_map(name: str) -> Map:
    """``-`` when the request lacks the query argument ``name`` (``$arg_<name>`` empty), else
    ``name``: a token without spaces, so that the route map can test it before ``$uri``."""
    return Map(
        f"$arg_{name}",
        arg_variable(name),
        (MapEntry("", "-"),),
        default=name,
        comment=f"Whether the request has the query argument {name} (routes that require its absence)",
    )


CONNECTION_MAP = Map(
    "$http_upgrade",
    Variable.CONNECTION,
    (MapEntry("", ""),),
    default="upgrade",
    comment='Upstream keepalive: send "Connection: upgrade" only when upgrading, else no header',
)


@dataclass(frozen=True)
class RoutingPlan:
    """Route table + fleet: where each rule's requests go, and the maps nginx uses to get there."""

    fleet: Fleet
    socket_dir: str = COMPOSE.socket_dir
    rules: tuple[Rule, ...] = ROUTES
    #: Workers on another host than nginx: their inbound address:port there.
    remote: Mapping[str, str] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(init=False)
    rule_upstream: dict[str, str] = field(init=False)
    #: The rules in force: ``rules`` without the optional ones whose target has no worker here.
    active: tuple[Rule, ...] = field(init=False)

    def __post_init__(self) -> None:
        active = tuple(rule for rule in self.rules if not rule.optional or self.serving(rule.target))
        object.__setattr__(self, "active", active)
        upstreams: dict[str, Upstream] = {}
        rule_upstream: dict[str, str] = {}
        for rule in (*active, DEFAULT_RULE):
            workers = self.serving(rule.target) or (self.fleet.main,)
            target = rule.target if workers != (self.fleet.main,) else Role.MAIN
            name = upstream_name(target)
            if name not in upstreams:
                balancing = Balancing(self.fleet.room_balancing if target is Role.ROOMS else Balancing.CONSISTENT_HASH)
                upstreams[name] = group_upstream(
                    tuple(w.name for w in workers), name, self.socket_dir, balancing, self.remote
                )
            rule_upstream[rule.name] = name
        object.__setattr__(self, "upstreams", dict(sorted(upstreams.items())))
        object.__setattr__(self, "rule_upstream", rule_upstream)

    def serving(self, target: Target) -> tuple[Worker, ...]:
        """The HTTP workers for a target; empty if the fleet has none (the rule falls back to main)."""
        if isinstance(target, Stream):
            return tuple(w for w in self.fleet.writers(target) if w.serves_http)
        return self.fleet.with_role(target)

    @cached_property
    def query_args(self) -> tuple[str, ...]:
        """The query arguments some rule in force tests, in the order the route map reads them."""
        return tuple(sorted({arg for rule in self.active for arg in rule.without_args}))

    @cached_property
    def route_map(self) -> Map:
        # Each tested argument is a token between the method and $uri: both have fixed forms there,
        # while $uri may hold spaces and anything else after decoding.
        args = self.query_args
        entries = tuple(MapEntry(f"~{rule.map_regex_over(args)}", rule.name) for rule in self.active)
        return Map(
            " ".join(["$request_method", *map(arg_variable, args), "$uri"]),
            Variable.ROUTE,
            entries,
            default=DEFAULT_RULE.name,
            comment="Route: the first matching rule of synfleet's route table",
        )

    @cached_property
    def upstream_map(self) -> Map:
        entries = tuple(MapEntry(rule.name, self.rule_upstream[rule.name]) for rule in self.active)
        return Map(
            Variable.ROUTE,
            Variable.UPSTREAM,
            entries,
            default=upstream_name(Role.MAIN),
            comment="Upstream group of each route",
        )

    @cached_property
    def key_map(self) -> Map:
        # Listed for every route; nginx only evaluates it for upstreams that hash.
        entries = tuple(
            MapEntry(rule.name, KEY_VARIABLES[rule.key]) for rule in self.active if rule.key is not Key.NONE
        )
        return Map(
            Variable.ROUTE,
            Variable.KEY,
            entries,
            default="",
            comment="Balancing key of each route (used by upstreams with several workers)",
        )

    @property
    def maps(self) -> tuple[Map, ...]:
        arg_maps = tuple(arg_map(name) for name in self.query_args)
        return (*KEY_MAPS, CONNECTION_MAP, *arg_maps, self.route_map, self.upstream_map, self.key_map)

    def rule(self, name: str) -> Rule:
        return next(r for r in (*self.active, DEFAULT_RULE) if r.name == name)

    def grown(self, role: Role, extra: int) -> RoutingPlan:
        """This plan with ``extra`` more workers of ``role``."""
        return RoutingPlan(self.fleet.grown(role, extra), self.socket_dir, self.rules, self.remote)
