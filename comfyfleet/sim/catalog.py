"""Node classes the simulator knows, with input specs exactly as ComfyUI's /object_info reports them.

Specs for EmptyImage, ImageBlur, LoadImage and SaveImage are copied from captures of ComfyUI 0.3.64;
the rest follow ComfyUI's nodes.py. Tuples become JSON lists, so `("IMAGE",)` is served as `["IMAGE"]`
while V3 nodes such as ImageBlur serve `["IMAGE", {}]`, as the real server does.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_RESOLUTION = 16384
UINT64_MAX = 0xFFFFFFFFFFFFFFFF

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]  # fmt: skip
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]

# GET /models on ComfyUI 0.3.64 lists these folder names, in this order.
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models",
    "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "custom_nodes",
    "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
]  # fmt: skip


@dataclass(frozen=True)
class Models:
    """What the simulated pod has on disk: model files and the input folder."""

    checkpoints: list[str]
    loras: list[str]
    input_dir: Path

    def folder(self, name: str) -> list[str]:
        """File list for GET /models/{folder}."""
        return {"checkpoints": sorted(self.checkpoints), "loras": sorted(self.loras)}.get(name, [])


InputTypes = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class NodeClass:
    """One node class: its /object_info description and how validation treats it."""

    name: str
    input_types: Callable[[Models], InputTypes]
    return_types: tuple[str, ...]
    category: str
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    python_module: str = "nodes"
    output_tooltips: tuple[str | None, ...] | None = None
    # V3 nodes (comfy_api) report a few more keys, in a different order.
    v3: bool = False
    # Inputs passed to a VALIDATE_INPUTS function; their combo check is skipped, as in ComfyUI.
    validate_inputs: tuple[str, ...] = field(default_factory=tuple)


def _image_files(input_dir: Path) -> list[str]:
    """Top-level files in input/ whose extension says image, sorted (LoadImage's option list)."""
    try:
        names = [f for f in os.listdir(input_dir) if (input_dir / f).is_file()]
    except FileNotFoundError:
        return []
    return sorted(f for f in names if (mimetypes.guess_type(f)[0] or "").startswith("image/"))


def _int(default: int, lo: int, hi: int, step: int | None = 1, **extra: Any) -> tuple[str, dict[str, Any]]:
    spec: dict[str, Any] = {"default": default, "min": lo, "max": hi}
    if step is not None:
        spec["step"] = step
    return ("INT", {**spec, **extra})


_NODES: list[NodeClass] = [
    NodeClass(
        name="CheckpointLoaderSimple",
        input_types=lambda m: {
            "required": {
                "ckpt_name": (list(m.checkpoints), {"tooltip": "The name of the checkpoint (model) to load."}),
            }
        },
        return_types=("MODEL", "CLIP", "VAE"),
        category="loaders",
        display_name="Load Checkpoint",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        output_tooltips=(
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and from latent space.",
        ),
    ),
    NodeClass(
        name="LoraLoader",
        input_types=lambda m: {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
                "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
                "lora_name": (list(m.loras), {"tooltip": "The name of the LoRA."}),
                "strength_model": ("FLOAT", {
                    "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                    "tooltip": "How strongly to modify the diffusion model. This value can be negative.",
                }),
                "strength_clip": ("FLOAT", {
                    "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                    "tooltip": "How strongly to modify the CLIP model. This value can be negative.",
                }),
            }
        },  # fmt: skip
        return_types=("MODEL", "CLIP"),
        category="loaders",
        display_name="Load LoRA",
        description=(
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised "
            "such as applying styles. Multiple LoRA nodes can be linked together."
        ),
        output_tooltips=("The modified diffusion model.", "The modified CLIP model."),
    ),
    # A subclass of LoraLoader in nodes.py, so it inherits the description and both output tooltips.
    NodeClass(
        name="LoraLoaderModelOnly",
        input_types=lambda m: {
            "required": {
                "model": ("MODEL",),
                "lora_name": (list(m.loras),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        },
        return_types=("MODEL",),
        category="loaders",
        description=(
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised "
            "such as applying styles. Multiple LoRA nodes can be linked together."
        ),
        output_tooltips=("The modified diffusion model.", "The modified CLIP model."),
    ),
    NodeClass(
        name="CLIPTextEncode",
        input_types=lambda m: {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}),
                "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
            }
        },
        return_types=("CONDITIONING",),
        category="conditioning",
        display_name="CLIP Text Encode (Prompt)",
        description=(
            "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion "
            "model towards generating specific images."
        ),
        output_tooltips=("A conditioning containing the embedded text used to guide the diffusion model.",),
    ),
    NodeClass(
        name="EmptyLatentImage",
        input_types=lambda m: {
            "required": {
                "width": _int(512, 16, MAX_RESOLUTION, 8, tooltip="The width of the latent images in pixels."),
                "height": _int(512, 16, MAX_RESOLUTION, 8, tooltip="The height of the latent images in pixels."),
                "batch_size": _int(1, 1, 4096, None, tooltip="The number of latent images in the batch."),
            }
        },
        return_types=("LATENT",),
        category="latent",
        display_name="Empty Latent Image",
        description="Create a new batch of empty latent images to be denoised via sampling.",
        output_tooltips=("The empty latent image batch.",),
    ),
    NodeClass(
        name="KSampler",
        input_types=lambda m: {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": UINT64_MAX, "control_after_generate": True,
                    "tooltip": "The random seed used for creating the noise.",
                }),
                "steps": ("INT", {
                    "default": 20, "min": 1, "max": 10000,
                    "tooltip": "The number of steps used in the denoising process.",
                }),
                "cfg": ("FLOAT", {
                    "default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. "
                    "Higher values result in images more closely matching the prompt however too high values will "
                    "negatively impact quality.",
                }),
                "sampler_name": (list(SAMPLERS), {
                    "tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of "
                    "the generated output.",
                }),
                "scheduler": (list(SCHEDULERS), {
                    "tooltip": "The scheduler controls how noise is gradually removed to form the image.",
                }),
                "positive": ("CONDITIONING", {
                    "tooltip": "The conditioning describing the attributes you want to include in the image.",
                }),
                "negative": ("CONDITIONING", {
                    "tooltip": "The conditioning describing the attributes you want to exclude from the image.",
                }),
                "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
                "denoise": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "The amount of denoising applied, lower values will maintain the structure of the "
                    "initial image allowing for image to image sampling.",
                }),
            }
        },  # fmt: skip
        return_types=("LATENT",),
        category="sampling",
        display_name="KSampler",
        description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
        output_tooltips=("The denoised latent.",),
    ),
    NodeClass(
        name="VAEDecode",
        input_types=lambda m: {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
                "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."}),
            }
        },
        return_types=("IMAGE",),
        category="latent",
        display_name="VAE Decode",
        description="Decodes latent images back into pixel space images.",
        output_tooltips=("The decoded image.",),
    ),
    NodeClass(
        name="VAEEncode",
        input_types=lambda m: {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}},
        return_types=("LATENT",),
        category="latent",
        display_name="VAE Encode",
    ),
    NodeClass(
        name="SaveImage",
        input_types=lambda m: {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {
                    "default": "ComfyUI",
                    "tooltip": "The prefix for the file to save. This may include formatting information such as "
                    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                }),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },  # fmt: skip
        return_types=(),
        category="image",
        display_name="Save Image",
        description="Saves the input images to your ComfyUI output directory.",
        output_node=True,
    ),
    # A subclass of SaveImage in nodes.py: same description, category and output flag.
    NodeClass(
        name="PreviewImage",
        input_types=lambda m: {
            "required": {"images": ("IMAGE",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        return_types=(),
        category="image",
        display_name="Preview Image",
        description="Saves the input images to your ComfyUI output directory.",
        output_node=True,
    ),
    NodeClass(
        name="LoadImage",
        input_types=lambda m: {"required": {"image": (_image_files(m.input_dir), {"image_upload": True})}},
        return_types=("IMAGE", "MASK"),
        category="image",
        display_name="Load Image",
        validate_inputs=("image",),
    ),
    NodeClass(
        name="ImageScale",
        input_types=lambda m: {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (list(UPSCALE_METHODS),),
                "width": _int(512, 0, MAX_RESOLUTION),
                "height": _int(512, 0, MAX_RESOLUTION),
                "crop": (list(CROP_METHODS),),
            }
        },
        return_types=("IMAGE",),
        category="image/upscaling",
        display_name="Upscale Image",
    ),
    NodeClass(
        name="EmptyImage",
        input_types=lambda m: {
            "required": {
                "width": _int(512, 1, MAX_RESOLUTION),
                "height": _int(512, 1, MAX_RESOLUTION),
                "batch_size": _int(1, 1, 4096, None),
                "color": _int(0, 0, 0xFFFFFF, 1, display="color"),
            }
        },
        return_types=("IMAGE",),
        category="image",
        display_name=None,
    ),
    NodeClass(
        name="ImageInvert",
        input_types=lambda m: {"required": {"image": ("IMAGE",)}},
        return_types=("IMAGE",),
        category="image",
        display_name="Invert Image",
    ),
    NodeClass(
        name="ImageBlur",
        input_types=lambda m: {
            "required": {
                "image": ("IMAGE", {}),
                "blur_radius": _int(1, 1, 31),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            }
        },
        return_types=("IMAGE",),
        category="image/postprocessing",
        python_module="comfy_extras.nodes_post_processing",
        output_tooltips=(None,),
        v3=True,
    ),
]

NODE_CLASSES: dict[str, NodeClass] = {n.name: n for n in _NODES}


def is_output_node(class_type: str) -> bool:
    node = NODE_CLASSES.get(class_type)
    return bool(node and node.output_node)


def _jsonable(value: Any) -> Any:
    """Tuples become lists, as json.dumps would render them; copies so callers cannot mutate specs."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def node_info(name: str, models: Models) -> dict[str, Any]:
    """One entry of GET /object_info, keys in the order ComfyUI writes them."""
    node = NODE_CLASSES[name]
    inputs = _jsonable(node.input_types(models))
    outputs = list(node.return_types)
    common = {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": outputs,
        "output_is_list": [False] * len(outputs),
        "output_name": list(outputs),
    }
    if node.v3:
        return {
            **common,
            "output_tooltips": list(node.output_tooltips or [None] * len(outputs)),
            "name": name,
            "display_name": node.display_name,
            "description": node.description,
            "python_module": node.python_module,
            "category": node.category,
            "output_node": node.output_node,
            "deprecated": False,
            "experimental": False,
            "api_node": False,
        }
    info: dict[str, Any] = {
        **common,
        "name": name,
        "display_name": node.display_name or name,
        "description": node.description,
        "python_module": node.python_module,
        "category": node.category,
        "output_node": node.output_node,
    }
    if node.output_tooltips is not None:
        info["output_tooltips"] = list(node.output_tooltips)
    return info


def object_info(models: Models) -> dict[str, Any]:
    """The full GET /object_info map."""
    return {name: node_info(name, models) for name in NODE_CLASSES}
