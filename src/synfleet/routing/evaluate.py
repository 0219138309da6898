"""Where nginx sends one request: rule, upstream and the exact worker, computed in Python."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from synfleet.nginx.realip import in_networks, real_client
from synfleet.nginx.uri import parse_method, parse_request_target
from synfleet.nginx.variables import Variables
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import Access, zone_for


@dataclass(frozen=True)
class Decision:
    """The outcome for one request. ``worker`` is None when nginx answers itself (denied) or
    balances without a key (round robin)."""

    method: str
    url: str
    uri: str
    rule: str | None
    target: str | None
    upstream: str | None
    worker: str | None
    key: str
    access: Access
    status: int | None  # the status nginx answers itself with, if it does not proxy

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["access"] = self.access.value
        return data


def evaluate(
    plan: RoutingPlan,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    remote_addr: str = "127.0.0.1",
) -> Decision:
    """Route one request with nginx's semantics. Raises BadRequest for what nginx would reject."""
    method = parse_method(method)
    uri, args = parse_request_target(url)
    headers = headers or {}
    forwarded = next((v for k, v in headers.items() if k.lower() == "x-forwarded-for"), "")
    remote_addr = real_client(remote_addr, forwarded, plan.fleet.trusted_proxies)
    access = zone_for(uri)
    if access is Access.DENIED or (access is Access.PRIVATE and not in_networks(remote_addr, plan.fleet.admin_allow)):
        status = 404 if access is Access.DENIED else 403
        return Decision(method, url, uri, None, None, None, None, "", access, status)
    variables = Variables(method, uri, args, headers, remote_addr, plan.maps)
    rule = variables.get("synfleet_route")
    upstream = plan.upstreams[variables.get("synfleet_upstream")]
    key = variables.get("synfleet_key")
    target = plan.rule(rule).target.value
    return Decision(method, url, uri, rule, target, upstream.name, upstream.worker_for(key), key, access, None)
