"""The client's address behind trusted proxies (`TRUSTED_PROXIES`).

A forwarded header is believed only when the connection comes from a trusted proxy. Each proxy
appends the address it saw to `X-Forwarded-For`, so reading the list from the right and
skipping trusted proxies gives the address that the nearest trusted proxy saw; everything
further left was written by the client and may be forged. `X-Real-Ip` (one value, set by the
proxy) is used only when there is no `X-Forwarded-For`.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Loopback and private ranges: where the website facade and the orchestrator's proxy sit.
DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR ranges; ValueError naming the bad entry."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 from a dual-stack socket
    return mapped or address


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, real_ip: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address for a connection from `peer` carrying these headers."""
    peer_address = _address(peer)
    if peer_address is None or not _trusted(peer_address, trusted):
        return peer
    if forwarded_for:
        nearest = peer_address
        for entry in reversed(forwarded_for.split(",")):
            address = _address(entry)
            if address is None:
                break  # a malformed entry: believe no further; the proxy that wrote it is the client
            nearest = address
            if not _trusted(address, trusted):
                break
        return str(nearest)
    if real_ip:
        address = _address(real_ip)
        if address is not None:
            return str(address)
    return str(peer_address)
