"""Output conversion before storing (pure): formats, quality, alpha, what is left alone, inline bounds."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from comfyfleet.convert import convert_output, inline_data
from comfyfleet.jobs.model import OutputSpec


def png(mode: str = "RGB", size: tuple[int, int] = (64, 48), color: object = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "content_type", "filename", "pil_format"), [
    ("webp", "image/webp", "ComfyUI_00001_.webp", "WEBP"),
    ("jpeg", "image/jpeg", "ComfyUI_00001_.jpg", "JPEG"),
])
def test_png_becomes_the_asked_format(fmt: str, content_type: str, filename: str, pil_format: str) -> None:
    out = convert_output(png(), "ComfyUI_00001_.png", "image/png", OutputSpec(format=fmt))  # type: ignore[arg-type]
    assert (out.content_type, out.filename) == (content_type, filename)
    with Image.open(io.BytesIO(out.data)) as image:
        assert image.format == pil_format and image.size == (64, 48)
        r, g, b = image.convert("RGB").getpixel((10, 10))  # type: ignore[misc]
        assert abs(r - 200) < 12 and g < 45 and b < 45


def test_quality_changes_the_size() -> None:
    noisy = Image.effect_noise((256, 256), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    low = convert_output(buf.getvalue(), "a.png", "image/png", OutputSpec(format="jpeg", quality=10))
    high = convert_output(buf.getvalue(), "a.png", "image/png", OutputSpec(format="jpeg", quality=95))
    assert len(low.data) < len(high.data)


def test_transparency_is_flattened_on_white_for_jpeg() -> None:
    out = convert_output(png("RGBA", color=(0, 0, 0, 0)), "a.png", "image/png", OutputSpec(format="jpeg"))
    with Image.open(io.BytesIO(out.data)) as image:
        assert image.mode == "RGB" and min(image.getpixel((5, 5))) > 245  # type: ignore[arg-type]


@pytest.mark.parametrize(("data", "filename", "content_type", "spec"), [
    (png(), "a.png", "image/png", None),
    (png(), "a.png", "image/png", OutputSpec(inline=True)),
    (png(), "a.png", "image/png", OutputSpec(format="png")),  # already PNG
    (b"\x00\x00\x00\x18ftypmp42 not an image", "clip.mp4", "video/mp4", OutputSpec(format="webp")),
])
def test_left_unchanged(data: bytes, filename: str, content_type: str, spec: OutputSpec | None) -> None:
    out = convert_output(data, filename, content_type, spec)
    assert (out.data, out.filename, out.content_type) == (data, filename, content_type)


def test_animations_are_not_flattened() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = convert_output(buf.getvalue(), "anim.gif", "image/gif", OutputSpec(format="webp"))
    assert out.data == buf.getvalue() and out.content_type == "image/gif"


@pytest.mark.parametrize(("size", "spec", "limit", "inlined"), [
    (100, OutputSpec(inline=True), 1000, True),
    (1000, OutputSpec(inline=True), 1000, True),
    (1001, OutputSpec(inline=True), 1000, False),
    (100, OutputSpec(inline=False), 1000, False),
    (100, None, 1000, False),
])
def test_inline_bounds(size: int, spec: OutputSpec | None, limit: int, inlined: bool) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    result = inline_data(data, spec, limit)
    assert (result is not None) == inlined
    if result is not None:
        assert base64.b64decode(result) == data
