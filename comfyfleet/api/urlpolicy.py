"""Which ComfyUI endpoint URLs an admin may register: no link-local, cloud metadata or disguised IP hosts.

The health monitor probes every registered URL from inside the cluster, so a URL is a request the
API makes on the admin's behalf. Loopback and private addresses stay allowed (ComfyUI on a LAN box or
the same host is the normal case); what is refused can only be a mistake or an attack.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                  "instance-data.ec2.internal"}
_DOTTED_DECIMAL = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def endpoint_url_problem(url: str) -> str | None:
    """Why the URL may not be registered, or None when it may (pure)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in {"http", "https"}:
        return "the scheme must be http or https"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not accepted (they would be shown and logged)"
    if parts.query or parts.fragment:
        return "a ComfyUI base URL has no query or fragment"
    if port == 0:
        return "port 0 is not a valid port"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "the URL has no host"
    if host in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if all(_NUMERIC_LABEL.match(label) for label in host.split(".")):
            # 2130706433, 0x7f000001, 0177.0.0.1, 127.1: resolvers read these as IPs; nobody types them by mistake
            return f"{host} is an IP address in decimal, hex, octal or short form; write it as a dotted quad"
        return None
    if ip.version == 4 and not _DOTTED_DECIMAL.match(host):
        return f"{host} is not a canonical dotted-quad address"
    return _address_problem(ip)


def _address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _address_problem(ip.ipv4_mapped)
    if ip.is_link_local:
        return f"{ip} is link-local (cloud metadata lives there)"
    if ip == ipaddress.ip_address("fd00:ec2::254"):
        return f"{ip} is a cloud metadata service"
    if ip.is_loopback:
        return None
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return f"{ip} is not a unicast host address"
    return None
