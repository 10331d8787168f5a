"""One outbound HTTP request under a UrlPolicy, with the address checked at connect time.

The host is resolved once, every address is checked, and the connection goes to that checked IP (the Host header
and TLS SNI/certificate check still use the name), so a DNS answer cannot change between the check and the
connect (no rebinding window). Redirects are followed by hand, each hop under the same policy; the body is read
up to the policy's byte limit and the whole exchange is bounded by its timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlunsplit

import certifi
import httpx

from comfyfleet.net.policy import IPAddress, Target, UrlPolicy, UrlPolicyError, check_addresses, parse_url

REDIRECTS = {301, 302, 303, 307, 308}
_TLS = ssl.create_default_context(cafile=certifi.where())


class FetchError(Exception):
    """The request could not be made or completed (network error, timeout, too large)."""


@dataclass
class FetchResult:
    status: int
    headers: httpx.Headers
    body: bytes
    url: str  # the final URL, after redirects


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlPolicyError(f"cannot resolve {host}: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def pinned_url(target: Target, ip: IPAddress) -> str:
    """The URL with its host replaced by the checked IP."""
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    parts = target.url
    return urlunsplit((target.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def fetch(url: str, policy: UrlPolicy, *, method: str = "GET", content: bytes | None = None,
                headers: dict[str, str] | None = None, verify: ssl.SSLContext | None = None,
                resolver: Resolver = resolve) -> FetchResult:
    """Make one request under the policy; raise UrlPolicyError (refused) or FetchError (failed).

    `verify` replaces the CA bundle and `resolver` the system DNS (tests use them to stand up names).
    """
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            return await _follow(url, policy, method, content, headers or {}, verify or _TLS, resolver)
    except TimeoutError:
        raise FetchError(f"no complete answer within {policy.timeout_seconds:g} s") from None


async def _follow(url: str, policy: UrlPolicy, method: str, content: bytes | None, headers: dict[str, str],
                  verify: ssl.SSLContext, resolver: Resolver) -> FetchResult:
    for _hop in range(policy.max_redirects + 1):
        target = parse_url(url, policy)
        [ip, *_] = check_addresses(target.host, await resolver(target.host, target.port), policy)
        # A client per hop: a pooled TLS connection verified for one name must never carry another name's request.
        # trust_env=False: no proxy from the environment may carry a request around the address check.
        async with httpx.AsyncClient(verify=verify, trust_env=False, follow_redirects=False,
                                     timeout=policy.timeout_seconds) as client:
            request = client.build_request(
                method, pinned_url(target, ip), content=content,
                headers={**headers, "Host": target.host_header},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise FetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECTS and location:
                    url = urljoin(url, location)
                    if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                        method, content = "GET", None
                    continue
                body = await _read_limited(response, policy.max_bytes)
                return FetchResult(response.status_code, response.headers, body, url)
            finally:
                await response.aclose()
    raise FetchError(f"more than {policy.max_redirects} redirects")


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FetchError(f"the answer is {int(declared)} bytes, over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError(f"the answer is over the limit of {limit} bytes")
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise FetchError(f"reading the answer failed: {type(exc).__name__}: {exc}") from None
    return b"".join(chunks)
