"""Input images for a job: base64, `data:` URLs or URLs fetched under the outbound policy, checked as images.

Each value is resolved once, at submit; the bytes are then stored with the job (retries read the store).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from urllib.parse import unquote_to_bytes

from comfyfleet.net.fetch import FetchError, fetch
from comfyfleet.net.policy import UrlPolicy, UrlPolicyError

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}


class InputImageError(ValueError):
    """An input image is refused; `field` names it (`inputImages.<name>`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def sniff_image(data: bytes) -> str | None:
    """The content type the bytes actually are (PNG, JPEG or WebP by magic bytes), or None (pure)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 128:
        raise InputImageError(f"inputImages.{name}", "image names must be plain file names")


def decode_inline(field: str, text: str, max_bytes: int) -> bytes:
    """Base64 or a `data:image/...;base64,` URL (pure)."""
    if text.startswith("data:"):
        header, sep, rest = text[5:].partition(",")
        if not sep:
            raise InputImageError(field, "a data URL needs a comma before its data")
        media, *flags = header.split(";")
        if media and media.lower() not in IMAGE_TYPES:
            raise InputImageError(field, f"data URL type {media!r} is not PNG, JPEG or WebP")
        text = rest
        if "base64" not in flags:
            data = unquote_to_bytes(rest)
            return _checked(field, data, max_bytes)
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise InputImageError(field, f"the image is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputImageError(field, "not valid base64 (nor an https:// or data: URL)") from None
    return _checked(field, data, max_bytes)


def _checked(field: str, data: bytes, max_bytes: int, declared: str | None = None) -> bytes:
    if len(data) > max_bytes:
        raise InputImageError(field, f"the image is larger than {max_bytes} bytes")
    actual = sniff_image(data)
    if actual is None:
        raise InputImageError(field, "not a PNG, JPEG or WebP image")
    if declared is not None and declared != actual:
        raise InputImageError(field, f"served as {declared} but the bytes are {IMAGE_TYPES[actual]}")
    return data


def is_url(text: str) -> bool:
    head = text[:8].lower()
    return head.startswith("https://") or head.startswith("http://")


async def fetch_image(field: str, url: str, policy: UrlPolicy) -> bytes:
    """GET an image under the policy: 200, an image content type, magic bytes that agree, within the size limit."""
    try:
        answer = await fetch(url, policy, headers={"accept": ", ".join(IMAGE_TYPES)})
    except UrlPolicyError as exc:
        raise InputImageError(field, f"URL refused: {exc}") from None
    except FetchError as exc:
        raise InputImageError(field, f"could not fetch the image: {exc}") from None
    if answer.status != 200:
        raise InputImageError(field, f"fetching the image answered HTTP {answer.status}")
    declared = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared not in IMAGE_TYPES:
        raise InputImageError(field, f"the URL serves {declared or 'no content type'}, not PNG, JPEG or WebP")
    return _checked(field, answer.body, policy.max_bytes, declared)


async def resolve_input_images(encoded: dict[str, str], policy: UrlPolicy) -> dict[str, bytes]:
    """All input images as bytes; URLs are fetched concurrently. The first refusal raises InputImageError."""
    for name in encoded:
        check_name(name)
    fields = {name: f"inputImages.{name}" for name in encoded}
    images = {name: decode_inline(fields[name], text, policy.max_bytes)
              for name, text in encoded.items() if not is_url(text)}
    urls = {name: text for name, text in encoded.items() if is_url(text)}
    fetched = await asyncio.gather(*(fetch_image(fields[n], u, policy) for n, u in urls.items()))
    images.update(zip(urls, fetched, strict=True))
    return {name: images[name] for name in encoded}
