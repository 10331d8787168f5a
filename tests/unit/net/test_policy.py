"""The outbound and endpoint URL policies as tables of URLs and addresses (no sockets, no DNS)."""

from __future__ import annotations

import ipaddress

import pytest

from comfyfleet.net.fetch import pinned_url
from comfyfleet.net.policy import (
    UrlPolicy,
    UrlPolicyError,
    address_refusal,
    check_addresses,
    endpoint_url_refusal,
    parse_url,
)

STRICT = UrlPolicy()
LOOPBACK_ALLOWED = UrlPolicy.build(["127.0.0.1", "hooks.internal"])


@pytest.mark.parametrize(("url", "policy", "refusal"), [
    ("https://hooks.example.com/cf", STRICT, None),
    ("http://hooks.example.com/cf", STRICT, "plain http"),
    ("http://hooks.example.com/cf", UrlPolicy(allow_http=True), None),
    ("http://127.0.0.1:9000/hook", LOOPBACK_ALLOWED, None),  # an allow-listed address may use http
    ("http://hooks.internal/x", LOOPBACK_ALLOWED, None),
    ("ftp://example.com/x", STRICT, "scheme"),
    ("file:///etc/passwd", STRICT, "scheme"),
    ("https://user:pw@example.com/", STRICT, "credentials"),
    ("https:///nohost", STRICT, "no host"),
    ("https://metadata.google.internal/computeMetadata/v1/", STRICT, "metadata"),
    ("https://example.com:99999/", STRICT, "not a valid URL"),
    ("https://2852039166/", STRICT, "non-standard form"),
    ("https://0xA9FEA9FE/", STRICT, "non-standard form"),
    ("https://0251.0376.0251.0376/", STRICT, "non-standard form"),
    ("https://127.1/", STRICT, "non-standard form"),
    ("https://93.184.215.14/", STRICT, None),
    ("https://cafe.be/", STRICT, None),
    ("https://1e100.net/", STRICT, None),
])
def test_url_shapes(url: str, policy: UrlPolicy, refusal: str | None) -> None:
    if refusal is None:
        parse_url(url, policy)
    else:
        with pytest.raises(UrlPolicyError, match=refusal):
            parse_url(url, policy)


@pytest.mark.parametrize(("address", "policy", "refused"), [
    ("93.184.215.14", STRICT, None),
    ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", STRICT, None),
    ("127.0.0.1", STRICT, "loopback"),
    ("::1", STRICT, "loopback"),
    ("10.1.2.3", STRICT, "private"),
    ("172.16.0.1", STRICT, "private"),
    ("192.168.1.1", STRICT, "private"),
    ("100.64.0.1", STRICT, "private"),  # carrier-grade NAT
    ("fd12:3456::1", STRICT, "private"),
    ("169.254.169.254", STRICT, "metadata"),
    ("169.254.169.254", LOOPBACK_ALLOWED, "metadata"),
    ("fd00:ec2::254", UrlPolicy(allow_private=True), "metadata"),
    ("100.100.100.200", UrlPolicy(allow_private=True), "metadata"),
    ("169.254.1.1", STRICT, "link-local"),
    ("fe80::1", STRICT, "link-local"),
    ("224.0.0.1", STRICT, "not a unicast"),
    ("0.0.0.0", STRICT, "not a unicast"),
    ("::ffff:127.0.0.1", STRICT, "loopback"),  # IPv4-mapped IPv6 is judged as the IPv4 address
    ("::ffff:169.254.169.254", UrlPolicy(allow_private=True), "metadata"),
    ("127.0.0.1", LOOPBACK_ALLOWED, None),
    ("127.0.0.2", LOOPBACK_ALLOWED, "loopback"),
    ("10.1.2.3", UrlPolicy.build(["10.0.0.0/8"]), None),
    ("10.1.2.3", UrlPolicy(allow_private=True), None),
])
def test_addresses(address: str, policy: UrlPolicy, refused: str | None) -> None:
    reason = address_refusal(ipaddress.ip_address(address), "host.example", policy)
    assert (reason is None) if refused is None else (reason is not None and refused in reason), reason


def test_an_allow_listed_host_name_trusts_what_it_resolves_to_but_never_metadata() -> None:
    loop = [ipaddress.ip_address("127.0.0.1")]
    assert check_addresses("hooks.internal", loop, LOOPBACK_ALLOWED) == loop
    with pytest.raises(UrlPolicyError, match="loopback"):  # 127.0.0.2 is neither an allowed name nor network
        check_addresses("evil.example", [ipaddress.ip_address("127.0.0.2")], LOOPBACK_ALLOWED)
    with pytest.raises(UrlPolicyError, match="metadata"):
        check_addresses("hooks.internal", [ipaddress.ip_address("169.254.169.254")], LOOPBACK_ALLOWED)


def test_a_name_with_one_inside_address_among_public_ones_is_refused() -> None:
    mixed = [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.0.0.5")]
    with pytest.raises(UrlPolicyError, match="private"):
        check_addresses("mixed.example", mixed, STRICT)
    with pytest.raises(UrlPolicyError, match="did not resolve"):
        check_addresses("empty.example", [], STRICT)


@pytest.mark.parametrize(("url", "addresses", "refused"), [
    ("http://comfyui-0.comfyui.gpu.svc.cluster.local:8188", ["10.42.0.17"], None),
    ("http://127.0.0.1:8188", ["127.0.0.1"], None),
    ("https://gpu-box.example:8188/", ["203.0.113.9"], None),
    ("http://169.254.169.254/latest/meta-data/", ["169.254.169.254"], "metadata"),
    ("http://sneaky.example:8188", ["169.254.169.254"], "metadata"),
    ("http://metadata.google.internal/", ["169.254.169.254"], "metadata"),
    ("http://[fd00:ec2::254]/", ["fd00:ec2::254"], "metadata"),
    ("http://link.example:8188", ["169.254.10.10"], "link-local"),
    ("ftp://gpu-box:8188", ["10.0.0.1"], "scheme"),
    ("http://gpu-box:8188/?x=1", ["10.0.0.1"], "query"),
    ("http://2852039166:8188", ["169.254.169.254"], "non-standard"),
    ("http://0xA9FEA9FE/", ["169.254.169.254"], "non-standard"),
])
def test_endpoint_policy(url: str, addresses: list[str], refused: str | None) -> None:
    reason = endpoint_url_refusal(url, [ipaddress.ip_address(a) for a in addresses])
    assert (reason is None) if refused is None else (reason is not None and refused in reason), reason


def test_the_connection_goes_to_the_checked_address_with_the_name_kept_for_host_and_sni() -> None:
    target = parse_url("https://hooks.example.com/in/cf?x=1", STRICT)
    assert pinned_url(target, ipaddress.ip_address("93.184.215.14")) == "https://93.184.215.14:443/in/cf?x=1"
    assert target.host_header == "hooks.example.com"
    six = parse_url("https://[2606:2800::1]:8443/", STRICT)
    assert pinned_url(six, ipaddress.ip_address("2606:2800::1")) == "https://[2606:2800::1]:8443/"
    assert six.host_header == "[2606:2800::1]:8443"
