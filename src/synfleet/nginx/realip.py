"""Client addresses as nginx sees them: the realip module and ``allow``/``deny`` networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def in_networks(address: str, networks: Iterable[str]) -> bool:
    """Whether ``address`` is in one of ``networks`` (CIDRs); an address that is not an IP is in none."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def real_client(remote_addr: str, forwarded_for: str, trusted: tuple[str, ...]) -> str:
    """The client address nginx's realip module settles on (``real_ip_recursive on``): when the
    peer is a trusted proxy, the rightmost X-Forwarded-For address that is not trusted."""
    if not trusted or not forwarded_for or not in_networks(remote_addr, trusted):
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted):
            return hop if is_ip(hop) else remote_addr
    return hops[0] if hops and is_ip(hops[0]) else remote_addr
