"""Pure operations on ComfyUI API-format graphs: shape checks, model needs, parameter overrides."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.jobs.model import Workflow
from comfyfleet.jobs.params import GenerateParams

SAMPLERS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed"}
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name"}
LORA_LOADERS = {"LoraLoader": "lora_name", "LoraLoaderModelOnly": "lora_name"}
LATENT_SOURCES = {"EmptyLatentImage", "EmptyImage", "EmptySD3LatentImage"}


@dataclass(frozen=True)
class NodeIssue:
    """One problem with one node (and input), for 422 bodies and job errors."""

    node_id: str
    message: str
    class_type: str | None = None
    input_name: str | None = None
    type: str = "invalid_node"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ModelNeeds:
    """The checkpoints and LoRAs a graph loads; selection sends it only to pods having all of them."""

    checkpoints: frozenset[str] = field(default_factory=frozenset)
    loras: frozenset[str] = field(default_factory=frozenset)

    def missing_on(self, checkpoints: set[str] | frozenset[str], loras: set[str] | frozenset[str]) -> list[str]:
        return sorted((self.checkpoints - set(checkpoints)) | (self.loras - set(loras)))


class ParamError(ValueError):
    """A parameter cannot be applied to this workflow; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


def is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def check_shape(workflow: Workflow) -> list[NodeIssue]:
    """Structural checks that need no node catalog: node form, link targets, something to output."""
    issues: list[NodeIssue] = []
    if not workflow:
        return [NodeIssue("", "workflow has no nodes", type="prompt_no_outputs")]
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            issues.append(NodeIssue(node_id, "node must be an object with class_type and inputs"))
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            issues.append(NodeIssue(node_id, "node is missing the class_type property", type="invalid_prompt"))
            continue
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            issues.append(NodeIssue(node_id, "inputs must be an object", class_type))
            continue
        for name, value in inputs.items():
            if is_link(value) and value[0] not in workflow:
                issues.append(
                    NodeIssue(node_id, f"links to node {value[0]!r}, which is not in the workflow", class_type, name,
                              type="missing_link_target")
                )
    return issues


def model_needs(workflow: Workflow) -> ModelNeeds:
    """Checkpoints and LoRAs named by loader nodes (literal values only)."""
    ckpts: set[str] = set()
    loras: set[str] = set()
    for node in workflow.values():
        if not isinstance(node, dict):
            continue
        cls, inputs = node.get("class_type"), node.get("inputs") or {}
        if cls in CHECKPOINT_LOADERS and isinstance(inputs.get(CHECKPOINT_LOADERS[cls]), str):
            ckpts.add(inputs[CHECKPOINT_LOADERS[cls]])
        if cls in LORA_LOADERS and isinstance(inputs.get(LORA_LOADERS[cls]), str):
            loras.add(inputs[LORA_LOADERS[cls]])
    return ModelNeeds(frozenset(ckpts), frozenset(loras))


def workflow_hash(workflow: Workflow) -> str:
    """sha256 of the graph as canonical JSON: equal graphs hash equal whatever their key order.

    Stored with outputs (Storage metadata) and job records (Firestore): changing the canonical form
    changes every stored hash.
    """
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _nodes_of(workflow: Workflow, classes: set[str] | dict[str, str]) -> list[str]:
    return sorted((nid for nid, n in workflow.items() if n.get("class_type") in classes), key=_node_sort_key)


def _node_sort_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _linked(workflow: Workflow, node_id: str, input_name: str) -> str | None:
    value = workflow[node_id]["inputs"].get(input_name)
    return value[0] if is_link(value) and value[0] in workflow else None


def _next_node_id(workflow: Workflow) -> str:
    numeric = [int(n) for n in workflow if n.isdigit()]
    return str(max(numeric, default=0) + 1)


# Where a parameter was written: (node id, input name). apply_params lists them for jobs/validation.py's
# TemplateChecks, which then checks only the values there on every later request with the same parameters.
Slot = tuple[str, str]


def insert_lora(workflow: Workflow, lora: str, strength: float, written: list[Slot] | None = None) -> Workflow:
    """Put a LoraLoader after the checkpoint loader and rewire every consumer of its MODEL and CLIP."""
    loaders = _nodes_of(workflow, CHECKPOINT_LOADERS)
    if not loaders:
        raise ParamError("lora", "the workflow has no checkpoint loader to attach a LoRA to")
    ckpt = loaders[0]
    lora_id = _next_node_id(workflow)
    for node in workflow.values():
        for name, value in node.get("inputs", {}).items():
            if is_link(value) and value[0] == ckpt and value[1] in (0, 1):
                node["inputs"][name] = [lora_id, value[1]]
    workflow[lora_id] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": [ckpt, 0],
            "clip": [ckpt, 1],
            "lora_name": lora,
            "strength_model": strength,
            "strength_clip": strength,
        },
    }
    if written is not None:
        written.extend((lora_id, name) for name in ("lora_name", "strength_model", "strength_clip"))
    return workflow


_LEAVES = frozenset({str, int, float, bool, type(None)})


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists and immutable scalars): a sixth of copy.deepcopy's cost, which
    the front door pays when a request's own graph comes with params (scalars, most of a graph, are taken
    without a call; templates are parsed afresh from their JSON text instead, jobs/templates.py)."""
    if isinstance(value, dict):
        return {k: v if type(v) in _LEAVES else copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _LEAVES else copy_json(v) for v in value]
    return value


def apply_params(workflow: Workflow, params: GenerateParams, written: list[Slot] | None = None) -> Workflow:
    """Return a copy of workflow with params written into the nodes they belong to.

    Raises ParamError naming the parameter when the graph has no node it could apply to. With `written`, every
    (node, input) a parameter's value went to is appended to it: which ones depends only on the graph and the
    names of the parameters given, never on their values.
    """
    return write_params(copy_json(workflow), params, written)


def write_params(wf: Workflow, params: GenerateParams, written: list[Slot] | None = None) -> Workflow:
    """apply_params on a graph the caller owns (a copy already): written into in place, and returned."""
    given = params.given()
    samplers = _nodes_of(wf, SAMPLERS)

    def require(nodes: list[str], param: str, what: str) -> list[str]:
        if not nodes:
            raise ParamError(param, f"the workflow has no {what} node to apply it to")
        return nodes

    def put(node_id: str, input_name: str, value: Any) -> None:
        wf[node_id]["inputs"][input_name] = value
        if written is not None:
            written.append((node_id, input_name))

    for param in ("prompt", "negative_prompt"):
        if param in given:
            side = "positive" if param == "prompt" else "negative"
            targets = [t for s in samplers if (t := _linked(wf, s, side)) and "text" in wf[t]["inputs"]]
            for t in require(targets, param, f"text encoder linked to a sampler's {side} input"):
                put(t, "text", given[param])
    sampler_fields = {"seed": None, "steps": "steps", "cfg": "cfg", "sampler_name": "sampler_name",
                      "scheduler": "scheduler", "denoise": "denoise"}
    for param, input_name in sampler_fields.items():
        if param in given:
            for s in require(samplers, param, "KSampler"):
                name = SAMPLERS[wf[s]["class_type"]] if input_name is None else input_name
                if param == "denoise" and wf[s]["class_type"] != "KSampler":
                    continue
                put(s, name, given[param])
    for param in ("width", "height", "batch_size"):
        if param in given:
            for n in require(_nodes_of(wf, LATENT_SOURCES), param, "EmptyLatentImage or EmptyImage"):
                put(n, param, given[param])
    if "checkpoint" in given:
        for n in require(_nodes_of(wf, CHECKPOINT_LOADERS), "checkpoint", "checkpoint loader"):
            put(n, CHECKPOINT_LOADERS[wf[n]["class_type"]], given["checkpoint"])
    if "image" in given:
        for n in require(_nodes_of(wf, {"LoadImage"}), "image", "LoadImage"):
            put(n, "image", given["image"])
    if "filename_prefix" in given:
        for n in require(_nodes_of(wf, {"SaveImage"}), "filename_prefix", "SaveImage"):
            put(n, "filename_prefix", given["filename_prefix"])
    _apply_lora(wf, given, put, written)
    return wf


def _apply_lora(wf: Workflow, given: dict[str, Any], put: Callable[[str, str, Any], None],
                written: list[Slot] | None) -> None:
    if "lora" not in given and "lora_strength" not in given:
        return
    existing = _nodes_of(wf, {"LoraLoader"})
    strength = given.get("lora_strength")
    if existing:
        for n in existing:
            if "lora" in given:
                put(n, "lora_name", given["lora"])
            if strength is not None:
                put(n, "strength_model", strength)
                put(n, "strength_clip", strength)
    elif "lora" in given:
        insert_lora(wf, given["lora"], 1.0 if strength is None else strength, written)
    else:
        raise ParamError("lora_strength", "the workflow has no LoraLoader and no lora was given")


def rename_input_images(workflow: Workflow, names: dict[str, str]) -> Workflow:
    """Point LoadImage nodes at the names the pod gave our uploaded images (pure, returns a copy)."""
    wf: Workflow = copy.deepcopy(workflow)
    for node in wf.values():
        if node.get("class_type") == "LoadImage":
            image = node.get("inputs", {}).get("image")
            if isinstance(image, str) and image in names:
                node["inputs"]["image"] = names[image]
    return wf


def job_output_folder(job_id: str) -> str:
    """The pod-side output subfolder of one job (also the name the pod's cleanup route accepts)."""
    return f"comfyfleet-{job_id}"


def isolate_outputs(workflow: Workflow, job_id: str) -> Workflow:
    """Save this job's files into its own output subfolder on the pod (pure, returns a copy).

    Every literal `filename_prefix` becomes `comfyfleet-<job>/<prefix>`, so the saving nodes' inputs differ
    from any earlier job's: ComfyUI runs them again (upstream nodes still come from its cache) and writes new
    files, which the pod may delete once they are stored, instead of answering a repeated graph with the file
    names of an earlier job whose files are gone. File names themselves are unchanged.
    """
    wf: Workflow = copy.deepcopy(workflow)
    folder = job_output_folder(job_id)
    for node in wf.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = f"{folder}/{inputs['filename_prefix'].lstrip('/')}"
    return wf
