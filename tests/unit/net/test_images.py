"""Inline input images: base64 and data URLs, magic bytes, limits, and errors that name the field (pure)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from comfyfleet.net.images import InputImageError, check_name, decode_inline, sniff_image


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                                   ("WEBP", "image/webp"), ("GIF", None), ("BMP", None)])
def test_sniff(fmt: str, content_type: str | None) -> None:
    assert sniff_image(image_bytes(fmt)) == content_type


def test_riff_that_is_not_webp_is_refused() -> None:
    assert sniff_image(b"RIFF\x10\x00\x00\x00WAVEfmt ") is None


def test_base64_and_data_urls_decode_to_the_same_bytes() -> None:
    data = image_bytes("PNG")
    b64 = base64.b64encode(data).decode()
    assert decode_inline("inputImages.a", b64, 1 << 20) == data
    assert decode_inline("inputImages.a", "data:image/png;base64," + b64, 1 << 20) == data
    assert decode_inline("inputImages.a", "data:;base64," + b64, 1 << 20) == data


@pytest.mark.parametrize(("text", "message"), [
    ("!!not base64", "not valid base64"),
    (base64.b64encode(b"GIF89a....").decode(), "not a PNG, JPEG or WebP"),
    ("data:text/html;base64,PGgxPg==", "data URL type 'text/html'"),
    ("data:image/png;base64", "comma"),
    ("data:image/png;base64," + base64.b64encode(image_bytes("JPEG")).decode(), None),  # type from magic bytes
])
def test_refusals_name_the_field(text: str, message: str | None) -> None:
    if message is None:
        decode_inline("inputImages.face.png", text, 1 << 20)
        return
    with pytest.raises(InputImageError, match=message) as info:
        decode_inline("inputImages.face.png", text, 1 << 20)
    assert info.value.field == "inputImages.face.png"


def test_size_limit() -> None:
    data = image_bytes("PNG")
    with pytest.raises(InputImageError, match="larger than"):
        decode_inline("inputImages.a", base64.b64encode(data).decode(), len(data) - 1)


@pytest.mark.parametrize("name", ["", "../x.png", "a/b.png", ".hidden", "a\\b.png"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InputImageError, match="plain file names"):
        check_name(name)
