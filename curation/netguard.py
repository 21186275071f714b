"""The address guard: which URLs a crawler may fetch.

Every URL (seeds, every redirect hop, every image URL handed to the downloader) is checked after
DNS resolution: a public web page can link to or redirect to http://10.0.0.1/admin or
http://169.254.169.254/ (cloud metadata), and a crawler that follows blindly becomes a proxy into
the network it runs in. Refused unless explicitly allowed: private (RFC 1918, fc00::/7),
loopback, shared (100.64/10); opened one network at a time by `allow_networks` (CIDR, e.g.
127.0.0.0/8 for the loopback test web). Always refused, whatever is allowed: link-local
(169.254.0.0/16, fe80::/10: cloud metadata lives there), the metadata address fd00:ec2::254,
multicast, unspecified and reserved addresses.

    check_url("http://example.org/a.html")                     # -> resolved addresses, or raises
    check_url("http://127.0.0.1:8765/", allowed_networks=["127.0.0.0/8"])   # tests: loopback only
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Sequence

from common.errors import UserError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
ALLOWED_SCHEMES = ("http", "https")


class UrlRefused(UserError, ValueError):
    """The URL may not be fetched; the message says why (and how to allow it when that is legitimate)."""


def _as_address(ip: str | IPAddress) -> IPAddress:
    address = ipaddress.ip_address(ip.split("%", 1)[0] if isinstance(ip, str) else ip)  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 reaches the same host: judge the IPv4 one.
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


def address_problem(ip: str | IPAddress) -> str | None:
    """Why `ip` is not a public unicast address (e.g. "private address 10.0.0.1"), or None when it is."""
    address = _as_address(ip)
    checks = [
        (address.is_unspecified, "unspecified address"),
        (address.is_loopback, "loopback address"),
        (address.is_link_local, "link-local address"),
        (address.is_multicast, "multicast address"),
        (address.is_reserved, "reserved address"),
        (address.is_private, "private address"),
        (not address.is_global, "non-global address"),
    ]
    for failed, what in checks:
        if failed:
            return f"{what} {address}"
    return None


def is_public_address(ip: str | IPAddress) -> bool:
    """True for a public unicast address (IPv4 or IPv6, IPv4-mapped judged as IPv4)."""
    return address_problem(ip) is None


# Cloud metadata services: 169.254.169.254 (inside link-local) and AWS's IPv6 one (inside fc00::/7).
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


def _never_allowed(address: IPAddress) -> bool:
    # No web server of ours lives there: 0.0.0.0 connects to this host on Linux, multicast is not TCP,
    # link-local holds the cloud metadata service (credentials of the machine we run on).
    # (::1 sits inside IPv6's reserved ::/8, so loopback is excepted.)
    reserved = address.is_reserved and not address.is_loopback
    return (
        address.is_unspecified
        or address.is_multicast
        or reserved
        or address.is_link_local
        or address in METADATA_ADDRESSES
    )


def parse_networks(networks: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDR strings as networks, or UrlRefused naming the one that is not a network."""
    parsed = []
    for network in networks:
        try:
            parsed.append(ipaddress.ip_network(str(network).strip(), strict=False))
        except ValueError as exc:
            raise UrlRefused(f"allow_networks: {network!r} is not a CIDR network (e.g. 127.0.0.0/8)") from exc
    return parsed


def address_allowed(ip: str | IPAddress, allowed_networks: Iterable[str] = ()) -> str | None:
    """None when we may connect to `ip`, else the reason: public, or inside an allowed network.

    Link-local, metadata, multicast, unspecified and reserved addresses are refused even when an
    allowed network contains them (an `allow_networks = ["0.0.0.0/0"]` opens private networks only).
    """
    address = _as_address(ip)
    problem = address_problem(address)
    if problem is None:
        return None
    if _never_allowed(address):
        if address in METADATA_ADDRESSES:
            return f"{problem} (cloud metadata, never allowed)"
        return f"{problem} (never allowed)"
    for network in parse_networks(allowed_networks):
        if address.version == network.version and address in network:
            return None
    return problem


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))  # resolver order (IPv4 first, usually)


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or UrlRefused naming what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"{url!r}: not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UrlRefused(f"{url!r}: scheme {scheme or '(none)'!r} is not http or https")
    host = (parts.hostname or "").lower()
    if not host:
        raise UrlRefused(f"{url!r}: no host name")
    return scheme, host, port or (443 if scheme == "https" else 80)


def _judge(url: str, host: str, addresses: Sequence[str], allowed_networks: Iterable[str]) -> list[str]:
    if not addresses:
        raise UrlRefused(f"{url}: host {host} has no address")
    networks = list(allowed_networks)
    for address in addresses:
        problem = address_allowed(address, networks)
        if problem is not None:
            # All addresses must pass: a name resolving to one public and one private address is refused.
            hint = "" if _never_allowed(_as_address(address)) else f" ({allow_hint(address)})"
            raise UrlRefused(f"{url}: {host} resolves to {problem}{hint}")
    return list(addresses)


def allow_hint(address: str | IPAddress) -> str:
    """How to allow one refused address: the narrowest --allow-networks that opens it."""
    ip = _as_address(address)
    return f"pass --allow-networks {ip}/{ip.max_prefixlen}, or your network's CIDR, to allow it"


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def check_url(url: str, allowed_networks: Iterable[str] = (), resolver: Resolver | None = None) -> list[str]:
    """Resolve the URL's host and return its addresses, or raise UrlRefused (scheme, host or address)."""
    _, host, port = split_url(url)
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = list((resolver or system_resolver)(host, port))
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(f"{url}: cannot resolve host {host} ({exc})") from exc
    return _judge(url, host, addresses, allowed_networks)


async def check_url_async(
    url: str, allowed_networks: Iterable[str] = (), resolver: Resolver | None = None
) -> list[str]:
    """`check_url` without blocking the event loop on DNS."""
    _, host, port = split_url(url)
    literal = _literal(host)
    if literal is not None:
        return _judge(url, host, [literal], allowed_networks)
    try:
        if resolver is not None:
            addresses = list(resolver(host, port))
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(info[4][0] for info in infos))
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"{url}: cannot resolve host {host} ({exc})") from exc
    return _judge(url, host, addresses, allowed_networks)
