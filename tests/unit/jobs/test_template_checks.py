"""TemplateChecks: templated graphs validated per shape, with exactly validate_workflow's verdicts (issue 14)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.jobs.params import GenerateParams
from comfyfleet.jobs.templates import render_template
from comfyfleet.jobs.validation import TemplateChecks, validate_workflow
from comfyfleet.sim.catalog import Models, object_info

CATALOG: dict[str, Any] = json.loads(json.dumps(object_info(Models(
    ["sd_xl_base_1.0.safetensors", "v1-5.safetensors"], ["detail.safetensors"], Path("/nonexistent")))))


def checked(checks: TemplateChecks, template: str, params: dict[str, Any], catalog: dict[str, Any] | None,
            pool: str | None = None) -> tuple[list[Any], list[Any]]:
    """(TemplateChecks' issues, validate_workflow's) for one request."""
    given = GenerateParams(**params)
    written: list[tuple[str, str]] = []
    workflow = render_template(template, given, written)
    names = tuple(given.given())
    return (checks.validate(pool, template, names, workflow, written, catalog),
            validate_workflow(workflow, catalog, strict_files=False))


VALUES: dict[str, list[Any]] = {
    "steps": [1, 20, 150],
    "cfg": [0.0, 7.5, 30.0],
    "sampler_name": ["euler", "dpmpp_2m", "no_such_sampler"],
    "scheduler": ["normal", "nope"],
    "width": [64, 512, 4096],
    "height": [64, 1024],
    "checkpoint": ["v1-5.safetensors", "other/missing.safetensors", "not-a-file"],
    "lora": ["detail.safetensors", "x"],
    "prompt": ["a cat", ""],
}


@pytest.mark.parametrize("template", ["txt2img", "weightless"])
def test_every_verdict_is_validate_workflows_own(template: str) -> None:
    """Each request is checked after earlier ones built plans for its shape: the issues are always the
    ones validate_workflow finds in the same graph, valid or not, first of its shape or not."""
    checks = TemplateChecks()
    cases = invalid = 0
    for a, b in itertools.combinations(VALUES, 2):
        for va, vb in itertools.product(VALUES[a], VALUES[b]):
            params = {a: va, b: vb}
            try:
                fast, full = checked(checks, template, params, CATALOG)
            except ValueError:  # a parameter the template cannot take (ParamError)
                continue
            assert fast == full, (template, params)
            cases, invalid = cases + 1, invalid + bool(full)
    assert cases >= 6 and (template == "weightless" or invalid > 10), (cases, invalid)


def test_a_shape_with_an_issue_outside_its_slots_is_always_validated_in_full() -> None:
    catalog = {k: v for k, v in CATALOG.items() if k != "VAEDecode"}
    checks = TemplateChecks()
    for seed in (1, 2, 3):
        fast, full = checked(checks, "txt2img", {"seed": seed}, catalog)
        assert fast == full and [i.class_type for i in full] == ["VAEDecode"]


def test_a_reloaded_catalog_starts_the_plans_again() -> None:
    checks = TemplateChecks()
    assert checked(checks, "txt2img", {"seed": 1, "sampler_name": "euler"}, CATALOG) == ([], [])
    reloaded = copy.deepcopy(CATALOG)
    spec = reloaded["KSampler"]["input"]["required"]["sampler_name"]
    spec[0] = [s for s in spec[0] if s != "euler"]  # the pods' new catalog has no euler
    fast, full = checked(checks, "txt2img", {"seed": 2, "sampler_name": "euler"}, reloaded)
    assert fast == full and [i.type for i in full] == ["value_not_in_list"]
    # The plans of other pools are their own.
    assert checked(checks, "txt2img", {"seed": 3, "sampler_name": "euler"}, CATALOG, pool="a") == ([], [])


def test_without_a_catalog_only_the_shape_is_checked() -> None:
    assert checked(TemplateChecks(), "weightless", {}, None) == ([], [])
