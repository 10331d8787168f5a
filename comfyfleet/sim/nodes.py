"""What each simulated node computes.

Image nodes really compute with Pillow. Model nodes carry small descriptors; KSampler reports one progress
step per sampler step and VAEDecode renders a deterministic picture from a fingerprint of everything
upstream (checkpoint, LoRAs, prompt texts, seed, sampler settings), so outputs differ per seed and are
identical for identical inputs, across processes too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from comfyfleet.sim.paths import DataDirs, input_file_path, save_image_path

Images = list[Image.Image]
UI = dict[str, Any]

# PreviewImage's random suffix alphabet, exactly as nodes.py spells it (two p's, no w).
_TEMP_ALPHABET = "abcdefghijklmnopqrstupvxyz"


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Model:
    """A loaded diffusion model: its checkpoint plus applied LoRAs."""

    ckpt: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<comfy.model_patcher.ModelPatcher object at 0x{id(self):x}>"


@dataclass(frozen=True)
class Clip:
    ckpt: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<comfy.sd.CLIP object at 0x{id(self):x}>"


@dataclass(frozen=True)
class Vae:
    ckpt: str

    def __str__(self) -> str:
        return f"<comfy.sd.VAE object at 0x{id(self):x}>"


@dataclass(frozen=True)
class Conditioning:
    text: str
    clip: Clip


@dataclass(frozen=True)
class Latent:
    """A latent batch: pixel size, batch size, a fingerprint of how it was made, and img2img sources."""

    width: int
    height: int
    batch: int
    fingerprint: str
    source: tuple[Image.Image, ...] = field(default=(), compare=False)
    denoise: float = 1.0


@dataclass
class NodeContext:
    """What a node may use besides its inputs."""

    node_id: str
    prompt: dict[str, Any]
    extra_pnginfo: dict[str, Any] | None
    dirs: DataDirs
    step_seconds: float
    # progress(value, total, preview): preview() renders the latent preview, called only when enabled.
    progress: Callable[[int, int, Callable[[], Image.Image] | None], None]
    temp_prefix: Callable[[], str]


@dataclass
class NodeResult:
    outputs: tuple[Any, ...]
    ui: UI | None = None


def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    return NodeResult((Model(ckpt_name), Clip(ckpt_name), Vae(ckpt_name)))


def lora_loader(
    ctx: NodeContext, model: Model, clip: Clip, lora_name: str, strength_model: float, strength_clip: float
) -> NodeResult:
    if strength_model == 0 and strength_clip == 0:
        return NodeResult((model, clip))
    return NodeResult(
        (
            Model(model.ckpt, (*model.loras, (lora_name, strength_model))),
            Clip(clip.ckpt, (*clip.loras, (lora_name, strength_clip))),
        )
    )


def lora_loader_model_only(ctx: NodeContext, model: Model, lora_name: str, strength_model: float) -> NodeResult:
    if strength_model == 0:
        return NodeResult((model,))
    return NodeResult((Model(model.ckpt, (*model.loras, (lora_name, strength_model))),))


def clip_text_encode(ctx: NodeContext, text: str, clip: Clip) -> NodeResult:
    return NodeResult((Conditioning(text, clip),))


def empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int) -> NodeResult:
    w, h = width // 8 * 8, height // 8 * 8
    return NodeResult((Latent(w, h, batch_size, _fingerprint("empty", w, h, batch_size)),))


def vae_encode(ctx: NodeContext, pixels: Images, vae: Vae) -> NodeResult:
    w, h = pixels[0].width // 8 * 8, pixels[0].height // 8 * 8
    cropped = tuple(img.crop((0, 0, w, h)) for img in pixels)
    digest = hashlib.sha256(b"".join(img.tobytes() for img in cropped)).hexdigest()
    return NodeResult((Latent(w, h, len(cropped), _fingerprint("encode", vae.ckpt, digest), cropped),))


def ksampler(
    ctx: NodeContext,
    model: Model,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    denoise: float,
) -> NodeResult:
    lat = latent_image
    # Each step ends on a fixed schedule from the start, so a late wake-up (a busy machine, hundreds of pods
    # in one process) is made up by the next step instead of adding up: the node takes steps x step_seconds.
    start = time.monotonic()
    for step in range(steps):
        if ctx.step_seconds:
            time.sleep(max(0.0, start + (step + 1) * ctx.step_seconds - time.monotonic()))
        ctx.progress(step + 1, steps, functools.partial(_preview, seed, lat, step + 1, steps))
    fp = _fingerprint(
        "sample", model.ckpt, model.loras, seed, steps, cfg, sampler_name, scheduler,
        positive.text, positive.clip.loras, negative.text, latent_image.fingerprint, denoise,
    )  # fmt: skip
    return NodeResult((Latent(lat.width, lat.height, lat.batch, fp, lat.source, denoise),))


def _preview(seed: int, latent: Latent, step: int, steps: int) -> Image.Image:
    """A latent-sized preview that sharpens from grey noise towards the final colours as steps go by."""
    size = (max(8, latent.width // 8), max(8, latent.height // 8))
    target = render(_fingerprint("preview", seed, latent.fingerprint), *size)
    return Image.blend(Image.new("RGB", size, (128, 128, 128)), target, step / steps)


def render(fingerprint: str, width: int, height: int) -> Image.Image:
    """A deterministic picture for a fingerprint: a tinted gradient with a few soft shapes."""
    rng = random.Random(fingerprint)

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    gradient = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize((width, height))
    img = ImageOps.colorize(gradient, colour(), colour())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 7)):
        x, y = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
        draw.ellipse((x, y, x + w, y + h), fill=colour())
    return img.filter(ImageFilter.GaussianBlur(max(1, min(width, height) // 96)))


def vae_decode(ctx: NodeContext, samples: Latent, vae: Vae) -> NodeResult:
    images = []
    for i in range(samples.batch):
        img = render(_fingerprint(samples.fingerprint, vae.ckpt, i), samples.width, samples.height)
        if samples.source and samples.denoise < 1.0:
            base = samples.source[i % len(samples.source)].convert("RGB").resize(img.size)
            img = Image.blend(base, img, samples.denoise)
        images.append(img)
    return NodeResult((images,))


def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int, color: int) -> NodeResult:
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return NodeResult(([Image.new("RGB", (width, height), rgb) for _ in range(batch_size)],))


def image_invert(ctx: NodeContext, image: Images) -> NodeResult:
    return NodeResult(([ImageOps.invert(img.convert("RGB")) for img in image],))


def image_blur(ctx: NodeContext, image: Images, blur_radius: int, sigma: float) -> NodeResult:
    if blur_radius == 0:
        return NodeResult((image,))
    # ComfyUI convolves with a (2r+1)-wide Gaussian of the given sigma; Pillow's blur takes sigma and
    # is not truncated, so a sigma far above the radius blurs a little more than the real node.
    return NodeResult(([img.filter(ImageFilter.GaussianBlur(sigma)) for img in image],))


_RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def image_scale(
    ctx: NodeContext, image: Images, upscale_method: str, width: int, height: int, crop: str
) -> NodeResult:
    if width == 0 and height == 0:
        return NodeResult((image,))
    first = image[0]
    if width == 0:
        width = max(1, round(first.width * height / first.height))
    elif height == 0:
        height = max(1, round(first.height * width / first.width))
    out = []
    for img in image:
        if crop == "center":
            old_aspect, new_aspect = img.width / img.height, width / height
            x = round((img.width - img.width * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
            y = round((img.height - img.height * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
            img = img.crop((x, y, img.width - x, img.height - y))
        out.append(img.resize((width, height), _RESAMPLE[upscale_method]))
    return NodeResult((out,))


def load_image(ctx: NodeContext, image: str) -> NodeResult:
    path = input_file_path(image, ctx.dirs)
    img = Image.open(str(path))  # a non-image raises PIL.UnidentifiedImageError, as in ComfyUI
    frames: list[Image.Image] = []
    masks: list[Image.Image] = []
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame) or frame
        if frames and frame.size != frames[0].size:
            continue
        frames.append(frame.convert("RGB"))
        if "A" in frame.getbands():
            masks.append(ImageOps.invert(frame.getchannel("A")))
        else:
            masks.append(Image.new("L", (64, 64), 0))
    return NodeResult((frames, masks))


def _save(ctx: NodeContext, images: Images, prefix: str, kind: str, compress_level: int) -> NodeResult:
    base = ctx.dirs.output if kind == "output" else ctx.dirs.temp
    folder, stem, counter, subfolder = save_image_path(prefix, base, images[0].width, images[0].height)
    results = []
    for batch_number, img in enumerate(images):
        meta = PngInfo()
        meta.add_text("prompt", json.dumps(ctx.prompt))
        for key, value in (ctx.extra_pnginfo or {}).items():
            meta.add_text(key, json.dumps(value))
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        img.save(folder / name, pnginfo=meta, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeResult((), {"images": results})


def save_image(ctx: NodeContext, images: Images, filename_prefix: str = "ComfyUI") -> NodeResult:
    return _save(ctx, images, filename_prefix, "output", compress_level=4)


def preview_image(ctx: NodeContext, images: Images) -> NodeResult:
    return _save(ctx, images, "ComfyUI" + ctx.temp_prefix(), "temp", compress_level=1)


def new_temp_prefix(rng: random.Random) -> str:
    """PreviewImage's per-instance suffix, e.g. `_temp_klkyc`."""
    return "_temp_" + "".join(rng.choice(_TEMP_ALPHABET) for _ in range(5))


RUNNERS: dict[str, Callable[..., NodeResult]] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "LoraLoader": lora_loader,
    "LoraLoaderModelOnly": lora_loader_model_only,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent,
    "KSampler": ksampler,
    "VAEDecode": vae_decode,
    "VAEEncode": vae_encode,
    "SaveImage": save_image,
    "PreviewImage": preview_image,
    "LoadImage": load_image,
    "ImageScale": image_scale,
    "EmptyImage": empty_image,
    "ImageInvert": image_invert,
    "ImageBlur": image_blur,
}
