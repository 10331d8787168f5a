"""Output conversion before storing: image format (Pillow) and inline base64 (pure apart from `store_output`).

`convert_output` is a pure function of bytes and the job's OutputSpec; `store_output` is the one call the runner
makes instead of `store.put`: convert, store, and embed the result inline when asked and small enough.
"""

from __future__ import annotations

import base64
import io
import logging
import posixpath
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from comfyfleet.jobs.model import Job, OutputFile, OutputSpec
from comfyfleet.store.outputs import OutputStore

log = logging.getLogger(__name__)

FORMATS = {"png": ("PNG", "image/png", ".png"), "webp": ("WEBP", "image/webp", ".webp"),
           "jpeg": ("JPEG", "image/jpeg", ".jpg")}
# Pillow's own default is 75; 90 is visually lossless for generated images at roughly a third of the PNG size.
DEFAULT_QUALITY = 90
# Refuse to decode images above this many pixels (decompression bombs); 8K x 8K covers any real generation.
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Converted:
    data: bytes
    filename: str
    content_type: str


def convert_output(data: bytes, filename: str, content_type: str, spec: OutputSpec | None) -> Converted:
    """The output as the spec asks: re-encoded still images; anything else (video, animations) unchanged."""
    unchanged = Converted(data, filename, content_type)
    if spec is None or spec.format is None:
        return unchanged
    pil_format, new_type, suffix = FORMATS[spec.format]
    if content_type == new_type and spec.quality is None:
        return unchanged
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS or getattr(image, "n_frames", 1) > 1:
                return unchanged
            image.load()
            out = io.BytesIO()
            if pil_format == "JPEG":
                _flatten(image).save(out, "JPEG", quality=spec.quality or DEFAULT_QUALITY, optimize=True)
            elif pil_format == "WEBP":
                image.save(out, "WEBP", quality=spec.quality or DEFAULT_QUALITY, method=4)
            else:
                image.save(out, "PNG", optimize=False)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("output %s left as %s: Pillow cannot convert it (%s)", filename, content_type, exc)
        return unchanged
    stem, _ = posixpath.splitext(filename)
    return Converted(out.getvalue(), stem + suffix, new_type)


def _flatten(image: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite transparent images on white, convert the rest to RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def inline_data(data: bytes, spec: OutputSpec | None, max_bytes: int) -> str | None:
    """Base64 of the file when the job asked for inline outputs and it fits the limit (pure)."""
    if spec is None or not spec.inline or len(data) > max_bytes:
        return None
    return base64.b64encode(data).decode()


def store_output(store: OutputStore, job: Job, node_id: str, filename: str, data: bytes, content_type: str,
                 inline_max_bytes: int) -> OutputFile:
    """Convert one output per the job's spec, store it, and embed it inline when asked (the runner's hook)."""
    converted = convert_output(data, filename, content_type, job.output)
    stored = store.put(job, node_id, converted.filename, converted.data, converted.content_type)
    inline = inline_data(converted.data, job.output, inline_max_bytes)
    return stored.model_copy(update={"data": inline}) if inline else stored
