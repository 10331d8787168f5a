"""The Helm chart: lint, render, and check what the rendered objects promise SREs.

helm comes from $COMFYFLEET_HELM or from scripts/helm-binary (built from helm's Go module and
cached under ~/.cache/comfyfleet/, so only the first run anywhere pays the ~3 min build).
"""

from __future__ import annotations

import base64
import filecmp
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "comfyfleet"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
HELM_SCRIPT = ROOT / "scripts" / "helm-binary"

# A cold helm build takes minutes on 2 cores; it happens once, in the first test that needs helm.
pytestmark = pytest.mark.timeout(900)

_helm_path: Path | None = None


def helm_binary() -> Path:
    """Path of a helm binary: $COMFYFLEET_HELM, or the one scripts/helm-binary builds and caches."""
    global _helm_path
    if _helm_path is not None:
        return _helm_path
    override = os.environ.get("COMFYFLEET_HELM")
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            pytest.fail(f"COMFYFLEET_HELM={override} is not an executable helm binary", pytrace=False)
        _helm_path = path
        return path
    proc = subprocess.run([str(HELM_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        pytest.fail(
            f"helm could not be provided: {HELM_SCRIPT.relative_to(ROOT)} exited {proc.returncode}.\n"
            "It builds helm from its Go module and needs Go and the Go module proxy; or point "
            f"COMFYFLEET_HELM at a helm v3 binary.\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    _helm_path = Path(lines[-1])
    return _helm_path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with the given arguments; the caller checks the result."""
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False)


def render(*args: str, release: str = "cf", namespace: str = "comfyfleet") -> list[dict[str, Any]]:
    """`helm template` the chart and return the rendered objects."""
    proc = helm("template", release, str(CHART), "--namespace", namespace, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"})


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def by_kind_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert matches, f"no {kind}/{name} rendered; have {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def production_objects() -> list[dict[str, Any]]:
    return render("-f", str(PRODUCTION_VALUES))


@pytest.fixture(params=["default", "production"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.getfixturevalue(f"{request.param}_objects")


# -- lint and render ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_lint_passes(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_install_renders_every_component(default_objects: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in default_objects}
    assert {
        ("Deployment", "cf-comfyfleet-api"),
        ("Deployment", "cf-comfyfleet-dispatcher"),
        ("Deployment", "cf-comfyfleet-operator"),
        ("StatefulSet", "cf-comfyfleet-redis"),
        ("Service", "cf-comfyfleet-api"),
        ("Service", "cf-comfyfleet-redis"),
        ("Service", "cf-comfyfleet-dispatcher"),
        ("PodDisruptionBudget", "cf-comfyfleet-api"),
        ("PodDisruptionBudget", "cf-comfyfleet-dispatcher"),
        ("ServiceAccount", "cf-comfyfleet-operator"),
        ("ClusterRole", "cf-comfyfleet-operator"),
        ("ClusterRoleBinding", "cf-comfyfleet-operator"),
    } <= kinds
    # Optional parts stay off by default.
    assert not {k for k, _ in kinds} & {"Ingress", "ServiceMonitor", "ComfyUIWorker"}


def test_production_values_render_optional_parts(production_objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in production_objects}
    assert {"Ingress", "ServiceMonitor", "ComfyUIWorker"} <= kinds
    assert "StatefulSet" not in kinds, "external Redis must not deploy the bundled one"
    api = by_kind_name(production_objects, "Deployment", "cf-comfyfleet-api")
    assert api["spec"]["replicas"] == 3


# -- hardening: every workload -----------------------------------------------------------------


def test_every_workload_has_resources_and_probes(objects: list[dict[str, Any]]) -> None:
    for workload in workloads(objects):
        for c in containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']} container {c['name']}"
            assert c.get("resources", {}).get("requests"), f"{where}: no resource requests"
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{where}: no memory limit"
            assert c.get("livenessProbe"), f"{where}: no livenessProbe"
            assert c.get("readinessProbe"), f"{where}: no readinessProbe"


def test_every_workload_runs_non_root_with_read_only_root_filesystem(objects: list[dict[str, Any]]) -> None:
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", 0) > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            # A read-only root needs somewhere writable for temp files.
            assert "/tmp" in mounts, f"{name}/{c['name']}: no writable /tmp"
            claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
            for volume in mounts.values():
                assert volume in volumes or volume in claims, f"{name}: mount of undefined volume {volume}"


def test_api_and_dispatcher_get_no_kubernetes_token(objects: list[dict[str, Any]]) -> None:
    for name in ("cf-comfyfleet-api", "cf-comfyfleet-dispatcher"):
        pod = by_kind_name(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name


# -- secrets never inlined ---------------------------------------------------------------------

TOKEN = "tok-4f1c9e0d2b7a48e6a1c3"
FIREBASE_KEY = '{"type": "service_account", "private_key": "MARKER-PRIVATE-KEY-9c2e"}'


@pytest.mark.parametrize(
    "extra",
    [
        {"auth": {"mode": "static", "apiTokens": {"tokens": [{"token": TOKEN, "owner": "alice", "admin": True}]}}},
        {
            "auth": {"mode": "firebase"},
            "firebase": {"enabled": True, "projectId": "p", "bucket": "b", "credentials": {"json": FIREBASE_KEY}},
        },
    ],
    ids=["static-tokens", "firebase-json"],
)
def test_secret_values_reach_pods_only_through_secrets(tmp_path: Path, extra: dict[str, Any]) -> None:
    objects = render("-f", values_file(tmp_path, extra))
    secrets = [o for o in objects if o["kind"] == "Secret"]
    others = yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])
    for marker in (TOKEN, "MARKER-PRIVATE-KEY"):
        assert marker not in others, f"{marker} leaked outside a Secret"
    decoded = " ".join(base64.b64decode(v).decode() for s in secrets for v in s.get("data", {}).values())
    assert TOKEN in decoded or "MARKER-PRIVATE-KEY" in decoded, "the secret value did not land in a Secret"
    for workload in workloads(objects):
        for c in containers(workload):
            for e in c.get("env", []):
                sensitive = any(w in e["name"] for w in ("TOKEN", "PASSWORD", "SECRET", "AUTH"))
                if sensitive and e["name"] != "COMFYFLEET_AUTH_MODE":
                    assert "valueFrom" in e, f"{workload['metadata']['name']}: {e['name']} is a plain value"


def test_api_tokens_and_firebase_credentials_come_from_existing_secrets(
    production_objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Production: Firebase key mounted from the named Secret, nothing created by the chart.
    assert not [o for o in production_objects if o["kind"] == "Secret"]
    api = by_kind_name(production_objects, "Deployment", "cf-comfyfleet-api")
    pod = api["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    cred = env["COMFYFLEET_FIREBASE_CREDENTIALS_FILE"]["value"]
    assert cred == "/var/run/secrets/comfyfleet/firebase/credentials.json"
    volume = next(v for v in pod["volumes"] if v["name"] == "firebase-credentials")
    assert volume["secret"]["secretName"] == "comfyfleet-firebase"
    assert env["COMFYFLEET_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "comfyfleet-redis", "key": "redis-url"}
    # Static tokens from an existing Secret: referenced, not created.
    objects = render("-f", values_file(tmp_path, {"auth": {"apiTokens": {"existingSecret": "mine"}}}))
    api = by_kind_name(objects, "Deployment", "cf-comfyfleet-api")
    ref = env_of(api["spec"]["template"]["spec"]["containers"][0])["COMFYFLEET_API_TOKENS"]["valueFrom"]
    assert ref["secretKeyRef"] == {"name": "mine", "key": "tokens.json"}
    assert not [o for o in objects if o["kind"] == "Secret" and "api-tokens" in o["metadata"]["name"]]


def test_default_install_generates_an_admin_token(default_objects: list[dict[str, Any]]) -> None:
    secret = by_kind_name(default_objects, "Secret", "cf-comfyfleet-api-tokens")
    tokens = json.loads(base64.b64decode(secret["data"]["tokens.json"]))
    assert len(tokens) == 1 and tokens[0]["admin"] is True and len(tokens[0]["token"]) >= 16


def test_bundled_redis_password_is_spliced_from_its_secret(default_objects: list[dict[str, Any]]) -> None:
    api = by_kind_name(default_objects, "Deployment", "cf-comfyfleet-api")
    env = api["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    # $(VAR) expansion only sees variables defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index("COMFYFLEET_REDIS_URL")
    url = env[names.index("COMFYFLEET_REDIS_URL")]["value"]
    assert url == "redis://:$(REDIS_PASSWORD)@cf-comfyfleet-redis.comfyfleet.svc:6379/0"
    redis = by_kind_name(default_objects, "StatefulSet", "cf-comfyfleet-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"


# -- values reach the processes ----------------------------------------------------------------


def dispatcher_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    dispatcher = by_kind_name(objects, "Deployment", "cf-comfyfleet-dispatcher")
    return dispatcher["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_default_dispatchers_have_slots_for_any_fleet_without_tuning(default_objects: list[dict[str, Any]]) -> None:
    """Capacity follows the fleet: 2 dispatchers (HA) x 256 jobs in flight, nothing sized to the pool."""
    dispatcher = by_kind_name(default_objects, "Deployment", "cf-comfyfleet-dispatcher")
    container = dispatcher_container(default_objects)
    assert dispatcher["spec"]["replicas"] == 2
    assert container["args"] == ["dispatcher"]
    env = env_of(container)
    assert env["COMFYFLEET_MAX_IN_FLIGHT"]["value"] == "256"
    assert env["COMFYFLEET_DISPATCHER_PORT"]["value"] == "8081"
    # The old fork-per-job sizing knob is gone from the chart.
    assert "--concurrency" not in container["args"]
    assert "concurrency" not in yaml.safe_load((CHART / "values.yaml").read_text())["dispatcher"]


def test_dispatcher_values_reach_the_process(tmp_path: Path) -> None:
    values = {"dispatcher": {"replicas": 5, "maxInFlight": 64, "port": 9300}}
    objects = render("-f", values_file(tmp_path, values))
    dispatcher = by_kind_name(objects, "Deployment", "cf-comfyfleet-dispatcher")
    assert dispatcher["spec"]["replicas"] == 5
    container = dispatcher_container(objects)
    env = env_of(container)
    assert (env["COMFYFLEET_MAX_IN_FLIGHT"]["value"], env["COMFYFLEET_DISPATCHER_PORT"]["value"]) == ("64", "9300")
    assert container["ports"] == [{"name": "http", "containerPort": 9300}]
    service = by_kind_name(objects, "Service", "cf-comfyfleet-dispatcher")
    assert service["spec"]["ports"] == [{"name": "http", "port": 9300, "targetPort": "http"}]


def test_dispatcher_probes_hit_its_healthz(objects: list[dict[str, Any]]) -> None:
    container = dispatcher_container(objects)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


def test_named_probe_ports_exist_on_their_containers(objects: list[dict[str, Any]]) -> None:
    for workload in workloads(objects):
        for c in containers(workload):
            names = {p.get("name") for p in c.get("ports", [])}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((c.get(kind) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str):
                    assert port in names, f"{workload['metadata']['name']}/{c['name']} {kind}: no port named {port}"


def test_dispatcher_metrics_are_scraped_on_the_same_port(production_objects: list[dict[str, Any]]) -> None:
    monitor = by_kind_name(production_objects, "ServiceMonitor", "cf-comfyfleet-dispatcher")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = by_kind_name(production_objects, "Service", "cf-comfyfleet-dispatcher")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    pod_labels = by_kind_name(production_objects, "Deployment", "cf-comfyfleet-dispatcher")["spec"]["template"][
        "metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_api_health_monitor_is_off_when_the_operator_publishes_pods(tmp_path: Path) -> None:
    def monitor(objects: list[dict[str, Any]]) -> str:
        api = by_kind_name(objects, "Deployment", "cf-comfyfleet-api")
        return env_of(api["spec"]["template"]["spec"]["containers"][0])["COMFYFLEET_RUN_HEALTH_MONITOR"]["value"]

    assert monitor(render()) == "false"
    without = render("-f", values_file(tmp_path, {"operator": {"enabled": False}}))
    assert monitor(without) == "true"
    assert not [o for o in without if "operator" in o["metadata"]["name"]]


# -- operator RBAC -----------------------------------------------------------------------------

# (apiGroup, resource, verbs the operator needs); kopf's framework needs first, then ours.
REQUIRED_RULES = [
    ("kopf.dev", "clusterkopfpeerings", {"list", "watch", "patch", "get"}),
    ("kopf.dev", "kopfpeerings", {"list", "watch", "patch", "get"}),
    ("apiextensions.k8s.io", "customresourcedefinitions", {"list", "watch"}),
    ("", "namespaces", {"list", "watch"}),
    ("", "events", {"create"}),
    ("comfyfleet.io", "comfyuiworkers", {"get", "list", "watch", "patch"}),
    ("comfyfleet.io", "comfyuiworkers/status", {"get", "patch"}),
    ("comfyfleet.io", "comfyuiworkers/finalizers", {"update"}),
    ("comfyfleet.io", "generationjobs", {"get", "list", "watch", "patch"}),
    ("comfyfleet.io", "generationjobs/status", {"get", "patch"}),
    ("", "pods", {"create", "delete", "get", "list", "watch"}),
    ("", "services", {"create", "get", "delete"}),
]

# Verbs the operator never uses, so least privilege leaves them out.
FORBIDDEN_RULES = [
    ("comfyfleet.io", "comfyuiworkers/scale", "patch"),
    ("comfyfleet.io", "generationjobs/finalizers", "update"),
    ("", "pods", "patch"),
    ("", "pods", "update"),
    ("", "services", "list"),
    ("", "secrets", "get"),
]


def operator_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    roles = [
        o
        for o in objects
        if o["kind"] in {"ClusterRole", "Role"}
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    return [rule for role in roles for rule in role["rules"]]


def granted(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    return {
        verb for rule in rules if group in rule["apiGroups"] and resource in rule["resources"] for verb in rule["verbs"]
    }


def test_operator_roles_hold_every_rule_it_needs(default_objects: list[dict[str, Any]]) -> None:
    rules = operator_rules(default_objects)
    missing = [
        (g, r, sorted(verbs - granted(rules, g, r))) for g, r, verbs in REQUIRED_RULES if verbs - granted(rules, g, r)
    ]
    assert not missing, f"operator RBAC lacks: {missing}"


def test_operator_roles_are_least_privilege(default_objects: list[dict[str, Any]]) -> None:
    rules = operator_rules(default_objects)
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
    # Secrets, configmaps, nodes and RBAC itself are none of the operator's business.
    for group, resource in [("", "secrets"), ("", "configmaps"), ("", "nodes"), ("rbac.authorization.k8s.io", "roles")]:
        assert not granted(rules, group, resource), f"operator may touch {resource}"
    assert not granted(rules, "", "pods") & {"update", "deletecollection"}
    extra = [(g, r, v) for g, r, v in FORBIDDEN_RULES if v in granted(rules, g, r)]
    assert not extra, f"operator RBAC grants verbs it never uses: {extra}"


def test_operator_binding_follows_watch_namespace(default_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    binding = by_kind_name(default_objects, "ClusterRoleBinding", "cf-comfyfleet-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cf-comfyfleet-operator", "namespace": "comfyfleet"}
    ]
    objects = render("-f", values_file(tmp_path, {"operator": {"watchNamespace": "gpu"}}))
    role_binding = by_kind_name(objects, "RoleBinding", "cf-comfyfleet-operator")
    assert role_binding["metadata"]["namespace"] == "gpu"
    assert role_binding["roleRef"]["name"] == "cf-comfyfleet-operator"
    assert not [
        o for o in objects if o["kind"] == "ClusterRoleBinding" and o["metadata"]["name"] == "cf-comfyfleet-operator"
    ]
    operator = by_kind_name(objects, "Deployment", "cf-comfyfleet-operator")
    assert env_of(operator["spec"]["template"]["spec"]["containers"][0])["COMFYFLEET_NAMESPACE"]["value"] == "gpu"


def test_release_comfyfleet_matches_the_operator_identity_of_the_k8s_tests() -> None:
    # tests/k8s authenticate the operator as system:serviceaccount:comfyfleet:comfyfleet-operator.
    objects = render("--show-only", "templates/operator-rbac.yaml", release="comfyfleet", namespace="comfyfleet")
    account = by_kind_name(objects, "ServiceAccount", "comfyfleet-operator")
    assert account["metadata"]["namespace"] == "comfyfleet"


# -- values.schema.json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dispatcher": {"maxInFlight": 0}}, "at '/dispatcher/maxInFlight': minimum: got 0, want 1"),
        # A values file from before the dispatcher is refused by name, not silently ignored.
        ({"dispatcher": {"concurrency": 4}}, "additional properties 'concurrency' not allowed"),
        ({"redis": {"mode": "cluster"}}, "at '/redis/mode': value must be one of 'bundled', 'external'"),
        ({"api": {"replica": 3}}, "additional properties 'replica' not allowed"),
        ({"auth": {"mode": "none"}}, "at '/auth/mode'"),
        ({"redis": {"external": {"url": "redis://:hunter2@redis:6379/0"}}}, "at '/redis/external/url'"),
        ({"api": {"resources": {"limits": None}}}, "missing property 'limits'"),
        ({"containerSecurityContext": {"runAsNonRoot": False, "allowPrivilegeEscalation": False}}, "runAsNonRoot"),
        ({"auth": {"apiTokens": {"tokens": [{"token": "short", "owner": "a"}]}}}, "minLength"),
        ({"redis": {"mode": "external"}}, "at '/redis/external'"),
    ],
    ids=["max-in-flight", "old-concurrency", "redis-mode", "typo", "auth-none", "url-password", "no-limits", "root",
         "weak-token", "no-url"],
)
def test_schema_rejects_malformed_values_with_a_clear_message(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    proc = helm("template", "cf", str(CHART), "-f", values_file(tmp_path, values))
    assert proc.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_schema_accepts_shipped_values_files() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(base, schema)


# -- CRDs and the example pool -----------------------------------------------------------------


def test_chart_crds_are_an_identical_copy_of_top_level_crds() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top, "no CRDs in crds/"
    assert chart == top, "chart crds/ has other files than crds/: run `make sync-crds`"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", top, shallow=False)
    assert not mismatch + errors, f"chart CRDs drifted from crds/: {mismatch + errors}; run `make sync-crds`"


def test_sync_crds_check_agrees() -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "sync-crds"), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _openapi_to_jsonschema(node: Any) -> Any:
    """Drop the OpenAPI-only keywords (x-kubernetes-*, nullable) so jsonschema can check a spec."""
    if isinstance(node, dict):
        return {
            k: _openapi_to_jsonschema(v)
            for k, v in node.items()
            if not k.startswith("x-kubernetes") and k != "nullable"
        }
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


@pytest.mark.parametrize("source", ["values.yaml", "production"])
def test_example_pool_spec_is_valid_for_the_crd(tmp_path: Path, source: str) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "comfyuiworkers.comfyfleet.io.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    args = ["-f", str(PRODUCTION_VALUES)] if source == "production" else []
    objects = render(*args, "-f", values_file(tmp_path, {"workerPool": {"enabled": True}}))
    pool = next(o for o in objects if o["kind"] == "ComfyUIWorker")
    assert pool["apiVersion"] == f"comfyfleet.io/{version['name']}"
    jsonschema.validate(pool["spec"], schema)


# -- documentation -----------------------------------------------------------------------------


def documented_values() -> set[str]:
    """Dotted paths of the values.yaml keys that carry a `# --` comment (helm-docs style)."""
    stack: list[tuple[int, str]] = []
    documented, pending = set(), False
    for line in (CHART / "values.yaml").read_text().splitlines():
        if line.lstrip().startswith("# --"):
            pending = True
            continue
        key = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if key:
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(2)))
            if pending:
                documented.add(".".join(k for _, k in stack))
            pending = False
    return documented


def test_every_value_is_documented_and_in_the_chart_readme() -> None:
    documented = documented_values()

    def undocumented(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in documented:
                continue
            if isinstance(value, dict) and value:
                yield from undocumented(value, f"{path}.")
            else:
                yield path

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not list(undocumented(values)), "values without a `# --` comment"
    readme = (CHART / "README.md").read_text()
    missing = sorted(path for path in documented if f"| `{path}` |" not in readme)
    assert not missing, f"helm/comfyfleet/README.md lacks rows for {missing}"


def test_browser_settings_reach_the_api(tmp_path: Path) -> None:
    values = {"api": {"corsOrigins": ["https://app.example.com", "http://localhost:5173"], "maxStreamsPerUser": 7,
                      "maxStreamSeconds": 600, "jobAccessTtlSeconds": 300}}
    api = by_kind_name(render("-f", values_file(tmp_path, values)), "Deployment", "cf-comfyfleet-api")
    env = env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert env["COMFYFLEET_CORS_ORIGINS"]["value"] == "https://app.example.com,http://localhost:5173"
    assert env["COMFYFLEET_MAX_STREAMS_PER_USER"]["value"] == "7"
    assert env["COMFYFLEET_MAX_STREAM_SECONDS"]["value"] == "600"
    assert env["COMFYFLEET_JOB_ACCESS_TTL_SECONDS"]["value"] == "300"
    default = by_kind_name(render(), "Deployment", "cf-comfyfleet-api")
    assert env_of(default["spec"]["template"]["spec"]["containers"][0])["COMFYFLEET_CORS_ORIGINS"]["value"] == ""
