"""The CRDs in crds/ are valid structural schemas, agree with the pydantic models, and accept the samples.

The apiserver is not needed here: the structural rules are checked directly, the OpenAPI schema is
converted to JSON Schema (unknown fields rejected, as pruning would silently drop them), defaults
are applied the way the apiserver applies them, and each CEL rule has a Python twin in CEL_TWINS
(a new rule without a twin fails the tests). The k8s tier then applies the same YAML for real.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from comfyfleet.operator import models

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
SAMPLES = REPO / "crds" / "samples"
CHART_CRDS = REPO / "helm" / "comfyfleet" / "crds"

# kind -> (spec model, status model)
MODELS: dict[str, tuple[type[models.CamelModel], type[models.CamelModel]]] = {
    "ComfyUIWorker": (models.ComfyUIWorkerSpec, models.ComfyUIWorkerStatus),
    "GenerationJob": (models.GenerationJobSpec, models.GenerationJobStatus),
}

# Every x-kubernetes-validations rule in crds/, with a Python equivalent over the (defaulted) object.
CEL_TWINS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "has(self.workflow) != has(self.template)": lambda s: ("workflow" in s) != ("template" in s),
    "!has(self.enabled) || !self.enabled || has(self.maxReplicas)": (
        lambda s: not s.get("enabled") or "maxReplicas" in s
    ),
    "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas": (
        lambda s: "minReplicas" not in s or "maxReplicas" not in s or s["minReplicas"] <= s["maxReplicas"]
    ),
}

# Keywords a structural schema may use (apiextensions.k8s.io/v1 JSONSchemaProps, minus the ones
# structural schemas forbid: $ref, definitions, dependencies, patternProperties, uniqueItems, ...).
STRUCTURAL_KEYWORDS = {
    "type", "properties", "items", "additionalProperties", "required", "description", "default",
    "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "format", "minItems", "maxItems", "minProperties", "maxProperties", "multipleOf",
    "nullable", "title", "example", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-embedded-resource",
}  # fmt: skip
CONSTRAINT_KEYS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "multipleOf")


# ---------------------------------------------------------------------------------------------
# Helpers


def load_crds() -> dict[str, dict[str, Any]]:
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


CRDS = load_crds()


def version_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def schema_of(kind: str) -> dict[str, Any]:
    return version_of(CRDS[kind])["schema"]["openAPIV3Schema"]


def load_samples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`.spec.gpu.count`, `.status.workers[]`)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema; unknown fields fail instead of being pruned."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "example"):
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Default missing fields as the apiserver does: set the default, then recurse into it."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        if isinstance(schema.get("additionalProperties"), dict):
            for key in value:
                if key not in schema.get("properties", {}):
                    value[key] = apply_defaults(schema["additionalProperties"], value[key])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def cel_violations(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Messages of the x-kubernetes-validations rules that `value` breaks (via CEL_TWINS)."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not CEL_TWINS[rule["rule"]](value):
            errors.append(f"{path or '.'}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += cel_violations(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += cel_violations(schema["items"], item, f"{path}[{i}]")
    return errors


def admit(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver would store for `obj`: defaults applied, schema + CEL checked (raises)."""
    schema = schema_of(kind)
    stored = apply_defaults(schema, obj)
    jsonschema.validate(stored, to_jsonschema(schema))
    errors = cel_violations(schema, stored)
    if errors:
        raise jsonschema.ValidationError("; ".join(errors))
    return stored


def unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return Union[tuple(args)]  # noqa: UP007 - rebuilding a runtime union
    return annotation


def model_constraints(field: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            found["minimum"] = meta.ge
        elif isinstance(meta, annotated_types.Le):
            found["maximum"] = meta.le
        elif isinstance(meta, annotated_types.MinLen):
            found["minLength"] = meta.min_length
        elif isinstance(meta, annotated_types.MaxLen):
            found["maxLength"] = meta.max_length
        elif isinstance(meta, annotated_types.MultipleOf):
            found["multipleOf"] = meta.multiple_of
        elif getattr(meta, "pattern", None) is not None:
            found["pattern"] = meta.pattern
    return found


def check_model(schema: dict[str, Any], model: type[BaseModel], path: str) -> None:
    """Each schema property is a model field (by alias) and vice versa, with matching shape and rules."""
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    props = schema.get("properties", {})
    assert set(props) == set(fields), f"{path}: schema {sorted(props)} vs {model.__name__} {sorted(fields)}"
    required = {alias for alias, info in fields.items() if info.is_required()}
    assert set(schema.get("required", [])) == required, f"{path}: required fields differ"
    for alias, info in fields.items():
        sub, where = props[alias], f"{path}.{alias}"
        check_type(sub, info.annotation, where)
        expected = {k: sub[k] for k in CONSTRAINT_KEYS if k in sub}
        assert model_constraints(info) == expected, f"{where}: constraints differ"
        check_default(sub, info, where)


def check_default(sub: dict[str, Any], info: FieldInfo, where: str) -> None:
    if info.default_factory is not None:
        made = info.default_factory()  # type: ignore[call-arg]
        assert "default" in sub, f"{where}: model has a default, schema has none"
        assert apply_defaults(sub, sub["default"]) == made.to_k8s(), f"{where}: defaults differ"
    elif info.is_required() or info.default is None:
        assert "default" not in sub, f"{where}: schema has a default, model has none"
    else:
        assert sub.get("default") == info.default, f"{where}: default {sub.get('default')} vs {info.default}"


def check_type(sub: dict[str, Any], annotation: Any, where: str) -> None:
    annotation = unwrap_optional(annotation)
    origin = get_origin(annotation)
    if sub.get("x-kubernetes-int-or-string"):
        assert set(get_args(annotation)) == {int, str}, f"{where}: int-or-string must be int | str"
        return
    kind = sub["type"]
    if kind == "object":
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert sub.get("properties"), f"{where}: a model needs schema properties"
            check_model(sub, annotation, where)
        else:
            assert origin is dict, f"{where}: free-form object must be a dict, got {annotation}"
            key_type, value_type = get_args(annotation)
            if sub.get("x-kubernetes-preserve-unknown-fields"):
                assert value_type is Any, f"{where}: preserved object must be dict[str, Any]"
            else:
                check_type(sub["additionalProperties"], value_type, f"{where}{{}}")
    elif kind == "array":
        assert origin is list, f"{where}: array must be a list, got {annotation}"
        check_type(sub["items"], get_args(annotation)[0], f"{where}[]")
    elif "enum" in sub:
        assert origin is Literal, f"{where}: enum must be a Literal"
        assert list(get_args(annotation)) == sub["enum"], f"{where}: enum values differ"
    elif sub.get("format") == "date-time":
        assert annotation is datetime, f"{where}: date-time must be a datetime"
    else:
        python = {"string": str, "integer": int, "number": float, "boolean": bool}[kind]
        assert annotation is python, f"{where}: {kind} must be {python.__name__}, got {annotation}"


# ---------------------------------------------------------------------------------------------
# Structure


def test_both_crds_exist_with_group_version_and_names() -> None:
    assert set(CRDS) == {"ComfyUIWorker", "GenerationJob"}
    for crd in CRDS.values():
        spec = crd["spec"]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{models.GROUP}"
        assert spec["group"] == models.GROUP and spec["scope"] == "Namespaced"
        assert spec["names"]["categories"] == ["comfyfleet"]
        version = version_of(crd)
        assert version["name"] == models.VERSION and version["served"] and version["storage"]
        assert version["subresources"]["status"] == {}
    assert CRDS["ComfyUIWorker"]["spec"]["names"]["shortNames"] == ["cw", "cfw"]
    assert CRDS["GenerationJob"]["spec"]["names"]["shortNames"] == ["gj"]
    assert CRDS["ComfyUIWorker"]["spec"]["names"]["plural"] == models.WORKER_PLURAL
    assert CRDS["GenerationJob"]["spec"]["names"]["plural"] == models.JOB_PLURAL


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    root = schema_of(kind)
    assert root["type"] == "object"
    assert root["properties"]["metadata"] == {"type": "object"}, "metadata may not be restricted"
    for path, node in nodes(root):
        where = path or "<root>"
        assert set(node) <= STRUCTURAL_KEYWORDS, f"{where}: {set(node) - STRUCTURAL_KEYWORDS}"
        exempt = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or exempt, f"{where}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), f"{where}: both kinds of object"
        if node.get("type") == "array":
            assert "items" in node, f"{where}: array without items"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), f"{where}: map keys must be required"
        for name in node.get("required", []):
            assert name in node.get("properties", {}), f"{where}: required {name} is not a property"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_preserve_unknown_fields_only_on_free_form_objects(kind: str) -> None:
    preserved = {p for p, node in nodes(schema_of(kind)) if node.get("x-kubernetes-preserve-unknown-fields")}
    allowed = {".spec.workflow", ".spec.env[].valueFrom"}
    assert preserved <= allowed, preserved - allowed


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_defaults_are_valid_and_never_pruned(kind: str) -> None:
    for path, node in nodes(schema_of(kind)):
        if "default" in node:
            jsonschema.validate(apply_defaults(node, node["default"]), to_jsonschema(node))
            # The apiserver runs CEL rules on the default as written, before nested defaulting.
            assert not cel_violations(node, node["default"], path), f"{path}: default breaks a rule"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_cel_rule_has_a_python_twin(kind: str) -> None:
    for path, node in nodes(schema_of(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["rule"] in CEL_TWINS, f"{path}: add a twin for {rule['rule']!r}"
            assert rule.get("message"), f"{path}: rule without a message"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    version = version_of(CRDS[kind])
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    expected = {
        "ComfyUIWorker": ["Desired", "Ready", "Busy", "Queue", "Phase", "Age"],
        "GenerationJob": ["Phase", "Progress", "Pool", "Age"],
    }[kind]
    default_view = [name for name, c in columns.items() if not c.get("priority")]
    assert default_view == expected
    paths = dict(nodes(schema_of(kind)))
    for name, column in columns.items():
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = paths.get(column["jsonPath"])
        assert node is not None, f"column {name}: {column['jsonPath']} is not in the schema"
        assert column["type"] == node["type"], f"column {name}: {column['type']} vs {node['type']}"


def test_worker_scale_subresource_paths_exist_with_right_types() -> None:
    scale = version_of(CRDS["ComfyUIWorker"])["subresources"]["scale"]
    paths = dict(nodes(schema_of("ComfyUIWorker")))
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert paths[scale["specReplicasPath"]]["type"] == "integer"
    assert paths[scale["statusReplicasPath"]]["type"] == "integer"
    assert paths[scale["labelSelectorPath"]]["type"] == "string"


def test_chart_crds_are_copies_of_crds_dir() -> None:
    copies = sorted(CHART_CRDS.glob("*.yaml")) if CHART_CRDS.is_dir() else []
    if not copies:
        pytest.skip("helm/comfyfleet/crds/ not synced yet (make sync-crds)")
    for source in sorted(CRD_DIR.glob("*.yaml")):
        copy_path = CHART_CRDS / source.name
        assert copy_path.is_file(), f"{copy_path} missing: run make sync-crds"
        assert copy_path.read_text() == source.read_text(), f"{copy_path} drifted: run make sync-crds"


# ---------------------------------------------------------------------------------------------
# Model <-> schema drift


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("part", ["spec", "status"])
def test_models_mirror_schema(kind: str, part: str) -> None:
    spec_model, status_model = MODELS[kind]
    model = spec_model if part == "spec" else status_model
    check_model(schema_of(kind)["properties"][part], model, f".{part}")


def test_drift_check_catches_a_missing_field() -> None:
    schema = copy.deepcopy(schema_of("ComfyUIWorker")["properties"]["spec"])
    schema["properties"]["gpu"]["properties"]["memoryGb"] = {"type": "integer"}
    with pytest.raises(AssertionError, match="memoryGb"):
        check_model(schema, models.ComfyUIWorkerSpec, ".spec")


def test_drift_check_catches_a_changed_default() -> None:
    schema = copy.deepcopy(schema_of("GenerationJob")["properties"]["spec"])
    schema["properties"]["priority"]["default"] = 3
    with pytest.raises(AssertionError, match="priority"):
        check_model(schema, models.GenerationJobSpec, ".spec")


# ---------------------------------------------------------------------------------------------
# Samples


def test_samples_cover_both_kinds() -> None:
    kinds = [doc["kind"] for _, doc in load_samples()]
    assert kinds.count("ComfyUIWorker") >= 2 and kinds.count("GenerationJob") >= 2


@pytest.mark.parametrize(("name", "doc"), load_samples(), ids=[n for n, _ in load_samples()])
def test_sample_is_admitted_and_parses_into_the_model(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == models.API_VERSION
    stored = admit(doc["kind"], doc)
    spec_model, _ = MODELS[doc["kind"]]
    parsed = spec_model.model_validate(stored["spec"])
    # The model reproduces exactly what the apiserver stores: same fields, same defaults.
    assert parsed.to_k8s() == stored["spec"]


def test_sample_gpu_pool_autoscales_and_sim_pool_has_no_gpu() -> None:
    docs = {doc["metadata"]["name"]: doc for _, doc in load_samples()}
    gpu = models.ComfyUIWorkerSpec.from_body(admit("ComfyUIWorker", docs["sdxl"]))
    assert gpu.autoscaling.enabled and gpu.autoscaling.min_replicas == 0 and gpu.gpu.count == 1
    assert gpu.prefetch == 1
    sim = models.ComfyUIWorkerSpec.from_body(admit("ComfyUIWorker", docs["sim"]))
    assert sim.gpu.count == 0 and "sim" in sim.image
    assert sim.prefetch == 0  # the default


# ---------------------------------------------------------------------------------------------
# Validation agrees on both sides

WORKER = {"apiVersion": models.API_VERSION, "kind": "ComfyUIWorker", "metadata": {"name": "w"}}
JOB = {"apiVersion": models.API_VERSION, "kind": "GenerationJob", "metadata": {"name": "j"}}
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}

INVALID: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("worker without image", WORKER, {"replicas": 1}),
    ("negative replicas", WORKER, {"image": "x", "replicas": -1}),
    ("port out of range", WORKER, {"image": "x", "port": 70000}),
    ("bad pull policy", WORKER, {"image": "x", "imagePullPolicy": "Sometimes"}),
    ("bad sha256", WORKER, {"image": "x", "models": [{"name": "m", "sha256": "abc"}]}),
    ("autoscaling without max", WORKER, {"image": "x", "autoscaling": {"enabled": True}}),
    ("min above max", WORKER, {"image": "x", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}}),
    ("zero target queue", WORKER, {"image": "x", "autoscaling": {"targetQueuePerWorker": 0}}),
    ("prefetch above 1", WORKER, {"image": "x", "prefetch": 2}),
    ("negative prefetch", WORKER, {"image": "x", "prefetch": -1}),
    ("both workflow and template", JOB, {"workflow": GRAPH, "template": "txt2img"}),
    ("neither workflow nor template", JOB, {"priority": 5}),
    ("timeout below 5 s", JOB, {"template": "t", "timeoutSeconds": 1}),
    ("bad filename prefix", JOB, {"template": "t", "params": {"filenamePrefix": "a b"}}),
    ("priority above 10", JOB, {"template": "txt2img", "priority": 11}),
    ("width not a multiple of 8", JOB, {"template": "t", "params": {"width": 500}}),
    ("bad pool name", JOB, {"template": "t", "pool": "Big_Pool"}),
]


@pytest.mark.parametrize(("what", "base", "spec"), INVALID, ids=[w for w, _, _ in INVALID])
def test_invalid_specs_are_rejected_by_schema_and_model(what: str, base: dict, spec: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        admit(base["kind"], {**base, "spec": spec})
    spec_model, _ = MODELS[base["kind"]]
    with pytest.raises(ValidationError):
        spec_model.model_validate(spec)


def test_typo_in_spec_is_caught_instead_of_pruned() -> None:
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        admit("ComfyUIWorker", {**WORKER, "spec": {"image": "x", "replica": 3}})


def test_empty_gpu_and_autoscaling_get_nested_defaults() -> None:
    stored = admit("ComfyUIWorker", {**WORKER, "spec": {"image": "x"}})
    assert stored["spec"]["gpu"] == {"count": 1, "resourceName": "nvidia.com/gpu"}
    assert stored["spec"]["autoscaling"]["enabled"] is False
    assert stored["spec"]["port"] == 8188 and stored["spec"]["replicas"] == 1
    assert stored["spec"]["prefetch"] == 0


# ---------------------------------------------------------------------------------------------
# Status dicts the operator writes fit the status schema (nothing rejected, nothing pruned)


def test_built_statuses_fit_the_status_schemas() -> None:
    from comfyfleet.operator import job_status, scaling

    now = 1_700_000_000.0
    spec = models.ComfyUIWorkerSpec(image="x", replicas=2)
    pods = [scaling.PodView("w-1", ready=True, busy=True, idle_since=None, created=now - 60)]
    worker_status = scaling.worker_status(
        selector="app.kubernetes.io/name=comfyui-worker,comfyfleet.io/pool=w",
        decision=scaling.decide_scale(spec, 1, pods, now),
        workers=[
            models.WorkerPodStatus(pod="w-1", ip="10.0.0.5", state="Busy", current_job="j", last_job_at=now)
        ],
        queue_depth=1,
        previous=None,
        generation=1,
        now=now,
    )
    jsonschema.validate(worker_status, to_jsonschema(schema_of("ComfyUIWorker")["properties"]["status"]))
    job_statuses = [
        job_status.job_status("running", now=now, job_id="j", progress=12, attempts=1, worker="w-1"),
        job_status.job_status(
            "succeeded", now=now, outputs=[{"filename": "a.png", "url": "u", "contentType": "image/png"}]
        ),
        job_status.job_status("failed", now=now, error={"code": "Timeout", "message": "took too long"}),
        job_status.invalid_spec_status("bad", now=now, generation=2),
    ]
    for status in job_statuses:
        jsonschema.validate(status, to_jsonschema(schema_of("GenerationJob")["properties"]["status"]))


def test_dispatch_capacity_condition_fits_the_status_schema() -> None:
    from comfyfleet.operator import capacity

    verdict = capacity.assess_capacity(capacity.DispatchSlots(1, 8, 3), capacity.FleetDemand(12, 2))
    status = {"conditions": capacity.capacity_conditions(None, verdict, 1_700_000_000.0, generation=3)}
    jsonschema.validate(status, to_jsonschema(schema_of("ComfyUIWorker")["properties"]["status"]))
    assert models.ComfyUIWorkerStatus.model_validate(status).conditions[0].reason == "NotEnoughDispatchSlots"
