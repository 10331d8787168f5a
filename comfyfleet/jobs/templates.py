"""Named workflow templates: an app sends a template name and parameters instead of a graph."""

from __future__ import annotations

import secrets

import orjson

from comfyfleet.jobs.model import Workflow
from comfyfleet.jobs.params import MAX_SEED, GenerateParams
from comfyfleet.jobs.workflow import Slot, write_params

_TXT2IMG: Workflow = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 0,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "comfyfleet", "images": ["8", 0]}},
}

# The same graph needs no weights: EmptyImage -> ImageBlur -> ImageInvert -> SaveImage.
_WEIGHTLESS: Workflow = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 3355443}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "comfyfleet"}},
}

TEMPLATES: dict[str, Workflow] = {"txt2img": _TXT2IMG, "weightless": _WEIGHTLESS}
# Each template as JSON text: a request's own copy is parsed from it (orjson builds a fresh graph at a fraction
# of a recursive copy's cost; templates hold plain JSON values only).
_TEMPLATE_JSON = {name: orjson.dumps(graph) for name, graph in TEMPLATES.items()}


class UnknownTemplate(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown template {self.name!r}; known: {', '.join(sorted(TEMPLATES))}"


def render_template(name: str, params: GenerateParams, written: list[Slot] | None = None) -> Workflow:
    """The template's graph with params applied; a txt2img without a seed gets a random one. `written`: as
    apply_params's."""
    if name not in TEMPLATES:
        raise UnknownTemplate(name)
    if name == "txt2img" and params.seed is None:
        params = params.model_copy(update={"seed": secrets.randbelow(MAX_SEED)})
    return write_params(orjson.loads(_TEMPLATE_JSON[name]), params, written)
