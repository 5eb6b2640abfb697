"""The client's IP address, believed only from configured trusted proxies (CHK-BF-07, BI-08).

`X-Forwarded-For` is read right to left, skipping hops that are trusted proxies; the first
untrusted hop is the client. From an untrusted peer the header is ignored entirely. Limits key
IPv6 clients by their /64, so rotating addresses inside one allocation buys no fresh bucket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # IPv4 with a port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip(request: Request, trusted: Sequence[Network]) -> str:
    """The canonical text of the client's address (see module doc)."""
    peer = _parse(request.client.host) if request.client else None
    if peer is None:
        return "unknown"
    if not any(peer in net for net in trusted):
        return str(peer)
    hops = [h for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            return str(peer)
        if not any(address in net for net in trusted):
            return str(address)
    return str(peer)


def limiter_key(ip: str) -> str:
    """The bucket an address counts against: itself for IPv4, its /64 for IPv6."""
    address = _parse(ip)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address) if address else ip
