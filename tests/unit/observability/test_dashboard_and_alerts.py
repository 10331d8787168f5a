"""The chart's Grafana dashboard and alert rules query only metrics comfyfleet exports; promtool accepts the
rules, and its unit tests show each alert firing in its situation and staying quiet otherwise."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.observability.catalog import exported_samples, referenced_metrics

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "comfyfleet"
DASHBOARD = CHART / "dashboards" / "comfyfleet.json"
RULES = CHART / "alerts" / "comfyfleet.rules.yaml"
PROMTOOL_SCRIPT = ROOT / "scripts" / "promtool-binary"

# A cold promtool build takes minutes on 2 cores; it happens once, in the first test that needs it.
pytestmark = pytest.mark.timeout(1800)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    exprs: dict[str, list[str]] = {}
    for p in panels(dashboard):
        for target in p.get("targets", []):
            exprs.setdefault(p["title"], []).append(target["expr"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            exprs.setdefault(f"variable {var['name']}", []).append(var["definition"])
    return exprs


def unknown_metrics(exprs: dict[str, list[str]]) -> dict[str, set[str]]:
    known = exported_samples()
    bad = {where: set().union(*(referenced_metrics(e) for e in es)) - known for where, es in exprs.items()}
    return {where: names for where, names in bad.items() if names}


def rendered_rules(thresholds: dict[str, Any] | None = None) -> str:
    """The rule file as templates/prometheusrule.yaml renders it: each __name__ replaced by its threshold."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = RULES.read_text()
    for name, value in {**values["prometheusRule"]["thresholds"], **(thresholds or {})}.items():
        text = text.replace(f"__{name}__", str(value))
    return text


def test_every_dashboard_panel_queries_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) > 10
    assert unknown_metrics(exprs) == {}


def test_a_panel_naming_a_metric_nobody_exports_is_caught():
    exprs = {"typo": ["sum(rate(comfyfleet_job_outcome_total[5m]))"], "fine": ["max(comfyfleet_endpoints)"]}
    assert unknown_metrics(exprs) == {"typo": {"comfyfleet_job_outcome_total"}}


def test_the_dashboard_shows_what_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(e for es in dashboard_exprs(dashboard).values() for e in es)
    for metric in ("comfyfleet_queue_jobs", "comfyfleet_queue_oldest_job_age_seconds",
                   "comfyfleet_job_queue_wait_seconds_bucket", "comfyfleet_job_execution_seconds_bucket",
                   "comfyfleet_endpoint_busy_seconds_total", "comfyfleet_endpoints", "comfyfleet_job_outcomes_total",
                   "comfyfleet_job_retries_total", "comfyfleet_http_request_duration_seconds_bucket",
                   "comfyfleet_job_dispatch_overhead_seconds_bucket"):
        assert metric in exprs, metric
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "pool"}


def test_rules_name_only_exported_metrics_and_every_threshold_is_filled():
    text = rendered_rules()
    assert not re.findall(r"__[A-Za-z]+__", text), "a threshold token has no value in values.yaml"
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {"ComfyfleetJobsQueuedNoReadyPod", "ComfyfleetOldestJobTooOld",
                                           "ComfyfleetEndpointsUnhealthy", "ComfyfleetDispatchNotClaiming",
                                           "ComfyfleetJobErrorRate"}
    unknown = {r["alert"]: referenced_metrics(r["expr"]) - exported_samples() for r in rules}
    assert {k: v for k, v in unknown.items() if v} == {}
    deployment = (ROOT / "DEPLOYMENT.md").read_text()
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert f"#### {r['alert']}" in deployment, f"DEPLOYMENT.md says nothing about what to do for {r['alert']}"


_promtool: Path | None = None


def promtool() -> Path:
    global _promtool
    if _promtool is not None:
        return _promtool
    override = os.environ.get("COMFYFLEET_PROMTOOL")
    if override:
        _promtool = Path(override)
        return _promtool
    proc = subprocess.run([str(PROMTOOL_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        pytest.fail(f"promtool could not be provided: {PROMTOOL_SCRIPT.name} exited {proc.returncode} (it builds "
                    f"promtool from its Go module; or set COMFYFLEET_PROMTOOL)\n{proc.stderr[-3000:]}", pytrace=False)
    _promtool = Path(lines[-1])
    return _promtool


def test_promtool_accepts_the_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(rendered_rules())
    proc = subprocess.run([str(promtool()), "check", "rules", str(rules)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 rules found" in proc.stdout


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def fleet(pool: str, queued: str, ready: str, busy: str, unhealthy: str) -> list[dict[str, str]]:
    """Fleet gauges as two API replicas report them (identical values: max, not sum, must combine them)."""
    out = []
    for instance in ("api-0", "api-1"):
        out += [series("comfyfleet_queue_jobs", {"pool": pool, "instance": instance}, queued)]
        for state, v in (("ready", ready), ("busy", busy), ("unhealthy", unhealthy)):
            out.append(series("comfyfleet_endpoints", {"pool": pool, "state": state, "instance": instance}, v))
    return out


ALERT_CASES: list[tuple[str, list[dict[str, str]], str, list[str]]] = [
    # pool sdxl: 3 jobs queued, every endpoint unhealthy for 20 minutes -> no ready pod, and unhealthy fraction 1.
    ("sdxl-down", [*fleet("sdxl", "3x30", "0x30", "0x30", "2x30"),
                   series("comfyfleet_queue_oldest_job_age_seconds", {"pool": "sdxl", "instance": "api-0"},
                          "0+60x30")],
     "25m", ["ComfyfleetEndpointsUnhealthy", "ComfyfleetJobsQueuedNoReadyPod", "ComfyfleetOldestJobTooOld"]),
    # pool flux: jobs queued, endpoints ready, and the dispatcher has claimed nothing for 10 minutes.
    ("flux-stuck", [*fleet("flux", "2x20", "3x20", "0x20", "0x20"),
                    series("comfyfleet_job_queue_wait_seconds_count", {"pool": "flux", "instance": "d-0"}, "5x20")],
     "15m", ["ComfyfleetDispatchNotClaiming"]),
    # pool flux working normally: claims keep coming, nothing fires.
    ("flux-healthy", [*fleet("flux", "2x20", "1x20", "2x20", "0x20"),
                      series("comfyfleet_job_queue_wait_seconds_count", {"pool": "flux", "instance": "d-0"}, "0+3x20")],
     "15m", []),
    # pool sdxl: 1 job in 4 fails with execution errors; validation errors alone would not count.
    ("sdxl-errors", [series("comfyfleet_job_outcomes_total", {"pool": "sdxl", "template": "txt2img", "state": "failed",
                                                              "error_code": "execution_error", "instance": "d-0"},
                            "0+1x40"),
                     series("comfyfleet_job_outcomes_total", {"pool": "sdxl", "template": "txt2img",
                                                              "state": "succeeded", "error_code": "none",
                                                              "instance": "d-0"}, "0+3x40")],
     "35m", ["ComfyfleetJobErrorRate"]),
    ("sdxl-user-mistakes", [series("comfyfleet_job_outcomes_total",
                                   {"pool": "sdxl", "template": "custom", "state": "failed",
                                    "error_code": "validation_error", "instance": "d-0"}, "0+5x40")],
     "35m", []),
]


@pytest.mark.parametrize(("case", "input_series", "at", "firing"), ALERT_CASES, ids=[c[0] for c in ALERT_CASES])
def test_each_alert_fires_in_its_situation(tmp_path, case, input_series, at, firing):
    rules = tmp_path / "rules.yaml"
    rules.write_text(rendered_rules())
    severity = {r["alert"]: r["labels"]["severity"] for r in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    pool = _pool_label(input_series)["pool"]
    # ALERTS is what Prometheus records of every alert; exactly the expected ones must be firing, for the pool.
    expected = [{"labels": f'ALERTS{{alertname="{name}", alertstate="firing", pool="{pool}", '
                           f'severity="{severity[name]}"}}', "value": 1} for name in firing]
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": input_series,
        "promql_expr_test": [{"expr": 'ALERTS{alertstate="firing"}', "eval_time": at, "exp_samples": expected}],
    }]}
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump(tests))
    proc = subprocess.run([str(promtool()), "test", "rules", str(spec)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pool_label(input_series: list[dict[str, str]]) -> dict[str, str]:
    [pool] = {m.group(1) for s in input_series if (m := re.search(r'pool="([^"]+)"', s["series"]))}
    return {"pool": pool}


# -- the chart renders them (helm from scripts/helm-binary, as tests/unit/test_chart.py) -------------------------


def test_chart_ships_the_dashboard_for_the_grafana_sidecar():
    from tests.unit.test_chart import by_kind_name, render

    cm = by_kind_name(render(), "ConfigMap", "cf-comfyfleet-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["comfyfleet.json"]) == json.loads(DASHBOARD.read_text())
    off = render("--set", "grafanaDashboard.enabled=false")
    assert not [o for o in off if o["metadata"]["name"] == "cf-comfyfleet-dashboard"]


def test_chart_prometheus_rule_is_opt_in_and_carries_the_thresholds(tmp_path):
    from tests.unit.test_chart import render, values_file

    assert not [o for o in render() if o["kind"] == "PrometheusRule"]
    values = {"prometheusRule": {"enabled": True, "labels": {"release": "kps"},
                                 "thresholds": {"oldestJobSeconds": 1200, "noReadyPodFor": "7m"}}}
    [rule] = [o for o in render("-f", values_file(tmp_path, values)) if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kps"
    expected = yaml.safe_load(rendered_rules({"oldestJobSeconds": 1200, "noReadyPodFor": "7m"}))
    assert rule["spec"] == expected
    too_old = next(r for r in rule["spec"]["groups"][0]["rules"] if r["alert"] == "ComfyfleetOldestJobTooOld")
    assert too_old["expr"].endswith("> 1200")
    annotations = " ".join(str(r["annotations"]) for r in rule["spec"]["groups"][0]["rules"])
    assert "{{ $labels.pool }}" in annotations, "Prometheus templates reach the rule untouched by helm"


def test_chart_scrapes_the_dispatchers_job_metrics():
    from tests.unit.test_chart import by_kind_name, render

    objects = render("--set", "serviceMonitor.enabled=true")
    monitor = by_kind_name(objects, "ServiceMonitor", "cf-comfyfleet-dispatcher")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = by_kind_name(objects, "Service", "cf-comfyfleet-dispatcher")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
