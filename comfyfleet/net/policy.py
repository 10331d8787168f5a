"""Which URLs and addresses the server may reach (pure: no sockets, no DNS; the fetcher resolves).

Two policies:
- the *outbound* policy (`UrlPolicy`) for URLs users hand us (webhooks, input images): https only, public
  addresses only, unless a host or network is on the allow-list;
- the *endpoint* policy for ComfyUI URLs an admin adds: http or https, cluster-internal addresses are normal,
  but cloud metadata services (and the rest of link-local) never.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services: the credentials of the node live there. Most sit in link-local 169.254/16 (refused
# as a range too); these are listed because some clouds put them elsewhere (Alibaba, AWS's IPv6 IMDS).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.123", "100.100.100.200", "fd00:ec2::254", "fd00:ec2::23",
))
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal", "metadata.azure.com"})
# IPv4 space for carrier-grade NAT / shared address space is not public either.
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")


class UrlPolicyError(ValueError):
    """A URL or the address it resolves to is not allowed; the message says why."""


class EndpointUrlError(UrlPolicyError):
    """An admin-given ComfyUI endpoint URL is not allowed (e.g. a metadata address)."""


@dataclass(frozen=True)
class Target:
    """Where a URL points: scheme, host (IP literals unbracketed), port."""

    scheme: str
    host: str
    port: int
    url: SplitResult

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class UrlPolicy:
    """The outbound policy: what users' URLs may point at, and the limits of one fetch."""

    # Host names (exact, case-insensitive) and networks (CIDR or single IPs) trusted beyond the public internet.
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False
    max_bytes: int = 10 * 1024 * 1024
    timeout_seconds: float = 10.0
    max_redirects: int = 3
    # Set by the endpoint policy: private and loopback addresses are allowed (metadata stays refused).
    allow_private: bool = False
    allowed_schemes: frozenset[str] = field(default_factory=lambda: frozenset({"https", "http"}))

    @classmethod
    def build(cls, allow: Iterable[str] = (), **kw: object) -> UrlPolicy:
        """A policy from an allow-list mixing host names and networks (`hooks.internal`, `127.0.0.1`, `10.0.0.0/8`)."""
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(allow_hosts=frozenset(hosts), allow_networks=tuple(nets), **kw)  # type: ignore[arg-type]

    def host_trusted(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allow_hosts

    def address_trusted(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.allow_networks if net.version == ip.version)


def parse_url(url: str, policy: UrlPolicy) -> Target:
    """Check a URL's shape against the policy (scheme, credentials, host); the address check comes after DNS."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlPolicyError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or scheme not in policy.allowed_schemes:
        raise UrlPolicyError(f"scheme {parts.scheme or '(none)'!r} is not allowed; use https")
    if not host:
        raise UrlPolicyError("the URL has no host")
    if parts.username or parts.password:
        raise UrlPolicyError("credentials in URLs are not allowed")
    if host.lower() in METADATA_HOSTS:
        raise UrlPolicyError(f"host {host!r} is a cloud metadata service")
    if _odd_numeric_host(host):
        raise UrlPolicyError(f"host {host!r} is an IP address in a non-standard form (decimal, hex or octal)")
    trusted = policy.host_trusted(host) or _literal_trusted(host, policy)
    if scheme == "http" and not (policy.allow_http or trusted):
        raise UrlPolicyError("plain http is not allowed; use https")
    return Target(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), url=parts)


_NUMERIC_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


def _odd_numeric_host(host: str) -> bool:
    """`2852039166`, `0xA9FEA9FE`, `0251.0376.0251.0376`, `127.1`: resolvers read these as IPv4 addresses, so
    they would dodge a check on the written form; only the dotted-decimal form is accepted."""
    if not all(_NUMERIC_PART.fullmatch(part) for part in host.split(".")):
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


def _literal_trusted(host: str, policy: UrlPolicy) -> bool:
    try:
        return policy.address_trusted(ipaddress.ip_address(host))
    except ValueError:
        return False


def address_refusal(ip: IPAddress, host: str, policy: UrlPolicy) -> str | None:
    """Why `host` resolving to `ip` may not be connected to, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    trusted = policy.allow_private or policy.host_trusted(host) or policy.address_trusted(ip)
    if ip.is_loopback:  # before is_reserved: ::1 sits in IPv6's reserved ::/8
        return None if trusted else f"{ip} is a loopback address"
    if ip.is_reserved:
        return f"{ip} is not a unicast address"
    if trusted:
        return None
    if ip.is_private or ip in _SHARED_ADDRESS_SPACE or not ip.is_global:
        return f"{ip} is a private or non-public address"
    return None


def check_addresses(host: str, addresses: Iterable[IPAddress], policy: UrlPolicy) -> list[IPAddress]:
    """All resolved addresses must pass (a name that also points inside is refused); returns them in order."""
    found = list(dict.fromkeys(addresses))
    if not found:
        raise UrlPolicyError(f"{host} did not resolve to any address")
    for ip in found:
        reason = address_refusal(ip, host, policy)
        if reason:
            raise UrlPolicyError(reason if host == str(ip) else f"{host} resolves to {reason}")
    return found


# ---- the endpoint policy (admin-added ComfyUI URLs) ----

ENDPOINT_POLICY = UrlPolicy(allow_http=True, allow_private=True)


def endpoint_url_refusal(url: str, addresses: Iterable[IPAddress] | None = None) -> str | None:
    """Why an admin-given ComfyUI URL may not be used, or None (pure when `addresses` is given).

    Cluster-internal, private and loopback addresses are fine; metadata and other link-local addresses are not.
    Without `addresses` the host is resolved here (blocking: call it in a thread from async code).
    """
    try:
        target = parse_url(url, ENDPOINT_POLICY)
        if target.url.query or target.url.fragment:
            return "an endpoint URL takes no query or fragment"
        if addresses is None:
            addresses = resolve_blocking(target.host, target.port)
        check_addresses(target.host, addresses, ENDPOINT_POLICY)
    except UrlPolicyError as exc:
        return str(exc)
    return None


def check_endpoint_url(url: str) -> None:
    """Raise EndpointUrlError when an admin-given ComfyUI URL is refused (resolves DNS: blocking)."""
    reason = endpoint_url_refusal(url)
    if reason:
        raise EndpointUrlError(reason)


def resolve_blocking(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlPolicyError(f"cannot resolve {host}: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
