"""Everything the operator's k8s tests run for real around the test control plane.

`OperatorFleet` starts, in this order: a redis-server; the CRDs from crds/ (admin); the chart's
operator ServiceAccount + RBAC rendered with `helm template --show-only templates/operator-rbac.yaml`
(admin applies them, exactly as rendered); `python -m comfyfleet operator` authenticated as that
ServiceAccount (a token identity of the ControlPlane, so its rights are the chart's rules and
nothing else); two RQ dispatch workers on the same Redis; and `SimKubelet`, which plays the kubelet.

`SimKubelet` watches (polls) the pods the operator creates and, for each new one, starts a
ComfyUI simulator on its own loopback address 127.0.0.N port 8188 and marks the pod Running/Ready
with podIP 127.0.0.N once the simulator answers; it stops the simulator when the pod goes away.
Tests inject failures through it: `fail_pod` (the container crashed: sim killed, pod phase Failed)
and `kill_sim` (ComfyUI stops answering while the kubelet still reports the pod Ready). For many
pods (`pods_per_process`), one simulator process hosts them all, each on its own loopback address;
fault injection then needs the one-process-per-pod default.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kopf
import redis
import yaml
from kubernetes.client import CoreV1Api

from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.jobs.model import Job
from comfyfleet.operator.main import FINALIZER
from comfyfleet.operator.models import ANNOTATION_PREFIX
from comfyfleet.settings import DispatchSettings
from tests.k8s.envtest import ControlPlane
from tests.k8s.kubelet import COMFY_PORT, loopback_block, loopback_ip, mark_pod_failed, mark_pod_ready
from tests.support.procs import REPO_ROOT, ManagedProcess, free_port, python_module, wait_for
from tests.support.redis import RedisServer
from tests.support.sim import SimFleet, start_sim, start_sim_fleet
from tests.unit.test_chart import CHART, helm

log = logging.getLogger(__name__)

CRDS_DIR = REPO_ROOT / "crds"
# The chart is rendered as release "comfyfleet" in namespace "comfyfleet": its operator
# ServiceAccount is then system:serviceaccount:comfyfleet:comfyfleet-operator, the identity the
# k8s conftest registers as "operator" in the control plane's token file.
RELEASE = "comfyfleet"
RELEASE_NAMESPACE = "comfyfleet"
RBAC_TEMPLATE = "templates/operator-rbac.yaml"
OPERATOR_IDENTITY = "operator"
POD_SELECTOR = "app.kubernetes.io/managed-by=comfyfleet,app.kubernetes.io/component=worker"
# Pods marked Ready at once: the kubelets of many nodes each write their own pods' status.
MARK_READY_THREADS = 4
# Simulated sampler speed: a 40-step job runs ~2 s, long enough to be seen busy, short for 2 cores.
SIM_STEP_SECONDS = 0.05
# Fast loops for tests (production defaults are seconds): the operator probes and autoscales every
# 0.5 s, mirrors job status every 0.5 s; a dead dispatcher's jobs are adopted within 6 s.
OPERATOR_ENV = {
    "COMFYFLEET_PROBE_INTERVAL_SECONDS": "0.5",
    "COMFYFLEET_JOB_SYNC_INTERVAL_SECONDS": "0.5",
    "COMFYFLEET_LEASE_TTL_SECONDS": "6",
    "COMFYFLEET_RETRY_BACKOFF_SECONDS": "1",
    "COMFYFLEET_SILENCE_TIMEOUT_SECONDS": "3",
    "COMFYFLEET_PUBLIC_URL": "http://api.example.test",
    # Several dispatchers share this host: no fixed /healthz port.
    "COMFYFLEET_DISPATCHER_PORT": "0",
}


def kubectl_ok(plane: ControlPlane, *args: str, identity: str = "admin", input: str | None = None) -> str:
    proc = plane.kubectl(*args, identity=identity, input=input)
    assert proc.returncode == 0, f"kubectl {' '.join(args)} as {identity} failed:\n{proc.stderr}"
    return proc.stdout


def apply_yaml(plane: ControlPlane, docs: list[dict[str, Any]] | str, namespace: str | None = None) -> str:
    """`kubectl apply -f -` as the admin (a user with kubectl), optionally into a namespace."""
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    return kubectl_ok(plane, *args, input=text)


def render_operator_rbac() -> list[dict[str, Any]]:
    """The chart's operator ServiceAccount + ClusterRoles + bindings, exactly as helm renders them."""
    proc = helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--show-only", RBAC_TEMPLATE)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def install_crds_and_rbac(plane: ControlPlane) -> None:
    """CRDs from crds/ (Established) and the chart's operator RBAC, applied by the admin."""
    files = sorted(CRDS_DIR.glob("*.yaml"))
    crds = [yaml.safe_load(f.read_text()) for f in files]
    kubectl_ok(plane, "apply", "--server-side", "--force-conflicts", "--field-manager=comfyfleet-operator-test",
               "-f", "-", input=yaml.safe_dump_all(crds))
    for crd in crds:
        kubectl_ok(plane, "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
    if plane.kubectl("get", "namespace", RELEASE_NAMESPACE).returncode != 0:
        kubectl_ok(plane, "create", "namespace", RELEASE_NAMESPACE)
    apply_yaml(plane, render_operator_rbac())


# ---------------------------------------------------------------------------------------------
# The kubelet


@dataclass
class SimPod:
    namespace: str
    name: str
    uid: str
    ip: str
    proc: ManagedProcess  # the pod's own simulator, or the process hosting it with others (hosted)
    hosted: bool = False
    ready: bool = False
    marking: bool = False  # a Ready write is in flight
    dead: bool = False
    started: float = field(default_factory=time.monotonic)


@dataclass
class SimHost:
    """A simulator process hosting many pods, one loopback address each; an address serves one pod, once."""

    fleet: SimFleet
    unused: list[str]


class SimKubelet:
    """Plays the kubelet for the operator's pods.

    By default each pod gets its own ComfyUI simulator process on 127.0.0.N:8188. With
    pods_per_process, simulator processes host that many pods each (`comfyfleet sim --hosts`, one
    loopback address per pod from a `loopback_block`): the first is started here, another whenever
    every address is taken, so a fleet of hundreds of pods costs a process or two instead of hundreds.
    A hosted address is given to one pod only (a pod that goes away leaves its address idle: a new
    pod never sees an old one's queue or history). Pods are marked Ready in parallel, as the
    kubelets of many nodes would.
    """

    def __init__(self, plane: ControlPlane, workdir: Path, step_seconds: float = SIM_STEP_SECONDS,
                 pods_per_process: int | None = None):
        self.api = plane.api_client("admin")
        self.core = CoreV1Api(self.api)
        self.workdir = workdir
        self.step_seconds = step_seconds
        self.pods_per_process = pods_per_process
        self.pods: dict[tuple[str, str], SimPod] = {}
        self.hosts: list[SimHost] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Start somewhere random in 127.0.0.0/8 so parallel test sessions rarely race for addresses.
        self._next_ip = random.randint(20, 200)
        self._marker = ThreadPoolExecutor(MARK_READY_THREADS, thread_name_prefix="sim-kubelet-ready")
        if pods_per_process is not None:
            if pods_per_process < 1:
                raise ValueError(f"pods_per_process must be at least 1, not {pods_per_process}")
            self._start_host()
        self._thread = threading.Thread(target=self._loop, name="sim-kubelet", daemon=True)
        self._thread.start()

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - keep playing the kubelet; tests see self.errors
                self.errors.append(repr(exc))
                log.exception("sim kubelet pass failed")
            self._stop.wait(0.1)

    def _list_pods(self) -> list[dict[str, Any]]:
        # Raw JSON, not the client's model classes: deserialising hundreds of pods ten times a second
        # would take a core of its own on the machine the operator is measured on.
        resp: Any = self.core.list_pod_for_all_namespaces(label_selector=POD_SELECTOR, _preload_content=False)
        return list(json.loads(resp.data).get("items") or [])

    def _sync(self) -> None:
        items = self._list_pods()
        seen: set[tuple[str, str]] = set()
        for pod in items:
            meta, status = pod["metadata"], pod.get("status") or {}
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            with self._lock:
                sim = self.pods.get(key)
                if sim is not None and sim.uid != meta["uid"]:
                    self._stop_sim(self.pods.pop(key))
                    sim = None
                if meta.get("deletionTimestamp") or status.get("phase") in ("Failed", "Succeeded"):
                    if sim is not None and not sim.dead:
                        self._stop_sim(sim)
                    continue
                if sim is None:
                    self.pods[key] = self._start_sim(pod)
                elif not sim.ready and not sim.dead and not sim.marking:
                    self._advance(sim, pod)
        with self._lock:
            for key in [k for k in self.pods if k not in seen]:
                self._stop_sim(self.pods.pop(key))

    def _start_sim(self, pod: dict[str, Any]) -> SimPod:
        meta = pod["metadata"]
        port = _container_port(pod)
        if self.pods_per_process is not None:
            if port != COMFY_PORT:
                raise ValueError(f"pod {meta['namespace']}/{meta['name']} listens on {port}; hosted pods use "
                                 f"{COMFY_PORT}")
            host = self._host_with_room()
            ip = host.unused.pop(0)
            return SimPod(meta["namespace"], meta["name"], meta["uid"], ip, host.fleet.proc, hosted=True)
        ip = self._free_ip()
        data = self.workdir / "sims" / f"{meta['namespace']}-{meta['name']}"
        sim = start_sim(data, host=ip, port=port, wait=False, step_seconds=self.step_seconds)
        return SimPod(meta["namespace"], meta["name"], meta["uid"], ip, sim.proc)

    def _advance(self, sim: SimPod, pod: dict[str, Any]) -> None:
        """A starting sim: mark its pod Ready once it answers; restart it elsewhere if it died."""
        if not sim.proc.alive():
            if sim.hosted:
                raise RuntimeError(f"the simulator hosting {sim.namespace}/{sim.name} exited")
            # Most likely the address was taken (another session): try the next one.
            self.pods[(sim.namespace, sim.name)] = self._start_sim(pod)
            return
        if not sim.hosted:  # a hosted pod listens already: its process wrote its URL list
            try:
                if not httpx.get(f"http://{sim.ip}:{COMFY_PORT}/system_stats", timeout=0.5).is_success:
                    return
            except httpx.HTTPError:
                return
        sim.marking = True
        self._marker.submit(self._mark_ready, sim)

    def _mark_ready(self, sim: SimPod) -> None:
        try:
            mark_pod_ready(self.core, sim.namespace, sim.name, sim.ip)
            sim.ready = True
        except Exception as exc:  # noqa: BLE001 - the next pass tries again; tests see self.errors
            self.errors.append(f"marking {sim.namespace}/{sim.name} ready: {exc!r}")
        finally:
            sim.marking = False

    def _free_ip(self) -> str:
        for _ in range(250):
            self._next_ip = self._next_ip % 250 + 2
            ip = loopback_ip(self._next_ip)
            if ip in {s.ip for s in self.pods.values() if not s.dead} or not _port_free(ip, COMFY_PORT):
                continue
            return ip
        raise RuntimeError("no free loopback address for another simulated pod")

    def _host_with_room(self) -> SimHost:
        for host in self.hosts:
            if host.unused:
                return host
        return self._start_host()

    def _start_host(self) -> SimHost:
        """Start a simulator process for pods_per_process pods on a free block of loopback addresses."""
        assert self.pods_per_process is not None
        count = self.pods_per_process
        for attempt in range(5):
            block = loopback_block(count, random.randint(64, 191), random.randint(0, 255 - (count - 1) // 254))
            if not all(_port_free(ip, COMFY_PORT) for ip in block):
                continue  # another session uses part of it
            data = self.workdir / "sims" / f"host-{len(self.hosts)}-{attempt}"
            try:
                fleet = start_sim_fleet(data, 1, hosts=block, port=COMFY_PORT, step_seconds=self.step_seconds,
                                        data_dir=data / "pods")
            except TimeoutError as exc:
                self.errors.append(f"simulator host on {block[0]}..{block[-1]}: {exc}")
                continue
            host = SimHost(fleet, list(block))
            self.hosts.append(host)
            return host
        raise RuntimeError(f"no simulator process for {count} pods could start; {self.errors[-1:]}")

    @staticmethod
    def _stop_sim(sim: SimPod) -> None:
        if not sim.hosted:  # a hosted pod's address just stays idle; its process serves others
            sim.proc.stop(timeout=2)
        sim.dead = True

    # -- fault injection and queries ------------------------------------------------------------

    def sim(self, namespace: str, name: str) -> SimPod:
        with self._lock:
            return self.pods[(namespace, name)]

    def fail_pod(self, namespace: str, name: str) -> None:
        """The container crashed for good: kill the sim, set the pod's phase to Failed."""
        with self._lock:
            sim = self._own_process(namespace, name, "fail_pod")
            sim.proc.kill()
            sim.dead = True
        mark_pod_failed(self.core, namespace, name, reason="Error", exit_code=137)

    def kill_sim(self, namespace: str, name: str) -> None:
        """ComfyUI dies but the pod still looks Ready (the kubelet has not noticed): only probes can tell."""
        with self._lock:
            sim = self._own_process(namespace, name, "kill_sim")
            sim.proc.kill()
            sim.dead = True

    def _own_process(self, namespace: str, name: str, what: str) -> SimPod:
        sim = self.pods[(namespace, name)]
        if sim.hosted:
            raise RuntimeError(f"{what} kills a pod's own simulator process; {namespace}/{name} shares one with "
                               "other pods (pods_per_process): use a kubelet with one process per pod")
        return sim

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._marker.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for sim in self.pods.values():
                self._stop_sim(sim)
            self.pods.clear()
            for host in self.hosts:
                host.fleet.stop()
        self.api.close()


def _container_port(pod: dict[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            return int(port["containerPort"])
    return COMFY_PORT


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The fleet


class OperatorFleet:
    """Redis + CRDs + chart RBAC + the operator (as its ServiceAccount) + RQ workers + the kubelet."""

    def __init__(self, plane: ControlPlane, workdir: Path, workers: int = 2, step_seconds: float = SIM_STEP_SECONDS,
                 env: dict[str, str] | None = None, pods_per_process: int | None = None,
                 operator_command: list[str] | None = None):
        self.plane = plane
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir / "redis")
        self.prefix = "k" + uuid.uuid4().hex[:8]
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.env = {
            "KUBECONFIG": str(plane.kubeconfig_path(OPERATOR_IDENTITY)),
            "COMFYFLEET_REDIS_URL": self.redis.url,
            "COMFYFLEET_REDIS_PREFIX": self.prefix,
            "COMFYFLEET_DATA_DIR": str(workdir / "data"),
            "COMFYFLEET_LIVENESS_PORT": str(self.liveness_port),
            "COMFYFLEET_METRICS_PORT": str(self.metrics_port),
            **OPERATOR_ENV,
            **(env or {}),  # a test's own settings (e.g. a long probe interval) over the fast defaults
        }
        self.conn = redis.Redis.from_url(self.redis.url)
        self.dispatcher = Dispatcher(self.conn, DispatchSettings(redis_url=self.redis.url, redis_prefix=self.prefix))
        self.operator: ManagedProcess | None = None
        # The operator's command line: `python -m comfyfleet operator` unless a benchmark wraps it (a profiler).
        self.operator_command = operator_command or python_module("comfyfleet", "operator")
        self.operator_runs = 0
        self.rq_workers: list[ManagedProcess] = []
        self.kubelet: SimKubelet | None = None
        try:
            install_crds_and_rbac(plane)
            self.start_operator()
            for _ in range(workers):
                self.start_dispatch("dispatcher")
            self.kubelet = SimKubelet(plane, workdir, step_seconds=step_seconds, pods_per_process=pods_per_process)
        except BaseException:
            self.stop()
            raise

    # -- dispatch processes ------------------------------------------------------------------------

    def start_dispatch(self, *args: str, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start `python -m comfyfleet <args>` (`dispatcher`, or its old name `worker`) on the fleet's Redis.

        Each process gets a free COMFYFLEET_DISPATCHER_PORT (in a cluster each pod has its own network; here
        they share one) unless env names one.
        """
        n = len(self.rq_workers)
        own = {"COMFYFLEET_DISPATCHER_PORT": str(free_port()), **(env or {})}
        proc = ManagedProcess(python_module("comfyfleet", *args), env={**self.env, **own},
                              log_path=self.workdir / f"{args[0]}-{n}.log")
        self.rq_workers.append(proc)
        return proc

    # -- the operator process ---------------------------------------------------------------------

    def start_operator(self) -> None:
        self.operator_runs += 1
        self.operator = ManagedProcess(self.operator_command, env=self.env,
                                       log_path=self.workdir / f"operator-{self.operator_runs}.log")
        wait_for(self._healthy, timeout=60, interval=0.2, what=f"operator /healthz\n{self.operator_log()}")

    def _healthy(self) -> bool:
        assert self.operator is not None
        if not self.operator.alive():
            raise AssertionError(f"the operator exited:\n{self.operator_log()}")
        return httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2).is_success

    def record_create_handled(self, namespace: str, name: str) -> None:
        """Leave a GenerationJob as an operator killed between kopf's two PATCHes of a create leaves it: the
        first (metadata: our finalizer, kopf's last-handled-configuration annotation, which marks the create
        handler done) applied, the second (the status subresource, with the jobId) never sent."""
        body = kopf.Body(self.get("generationjob", name, namespace))
        storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)  # as operator.main.build_settings
        patch = kopf.Patch()
        storage.store(body=body, patch=patch, essence=storage.build(body=body))
        metadata = {"annotations": dict(patch["metadata"]["annotations"]), "finalizers": [FINALIZER]}
        kubectl_ok(self.plane, "patch", "generationjob", name, "-n", namespace, "--type", "merge",
                   "-p", json.dumps({"metadata": metadata}))

    def kill_operator(self) -> None:
        """SIGKILL, as a node loss or OOM would: no cleanup, no graceful handler completion."""
        assert self.operator is not None
        self.operator.kill()
        self.operator.stop()

    def operator_log(self, tail: int = 6000) -> str:
        return self.operator.log_text()[-tail:] if self.operator else ""

    def logs(self) -> str:
        parts = [f"--- operator ---\n{self.operator_log()}"]
        for proc in self.rq_workers:
            parts.append(f"--- {proc.log_path.name if proc.log_path else 'rq'} ---\n{proc.log_text()[-2500:]}")
        if self.kubelet and self.kubelet.errors:
            parts.append(f"--- kubelet errors ---\n{self.kubelet.errors[-5:]}")
        return "\n".join(parts)

    # -- reading the cluster and Redis ------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(kubectl_ok(self.plane, "get", kind, name, "-n", namespace, "-o", "json"))

    def pods(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        out = kubectl_ok(self.plane, "get", "pods", "-n", namespace, "-l", f"comfyfleet.io/pool={pool}", "-o", "json")
        return list(json.loads(out)["items"])

    def pod_names(self, namespace: str, pool: str) -> set[str]:
        return {p["metadata"]["name"] for p in self.pods(namespace, pool)}

    def endpoints(self, namespace: str, pool: str) -> dict[str, Any]:
        prefix = f"k8s:{namespace}/"
        return {e.id: e for e in self.dispatcher.registry.endpoints() if e.id.startswith(prefix) and e.pool == pool}

    def jobs_of(self, namespace: str) -> list[Job]:
        ids = [i.decode() for i in self.conn.zrange(self.dispatcher.keys.owner_jobs(f"k8s:{namespace}"), 0, -1)]
        return [j for j in self.dispatcher.repo.get_many(ids) if j is not None]

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_for(condition, timeout=timeout, interval=0.2, what=what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def wait_ready_pods(self, namespace: str, pool: str, count: int, timeout: float = 40) -> set[str]:
        """Wait until the pool has exactly count pods, all published and healthy in the registry."""

        def ready() -> set[str] | None:
            names = self.pod_names(namespace, pool)
            healthy = {e.id.split("/", 1)[1] for e in self.endpoints(namespace, pool).values() if e.healthy}
            return names if len(names) == count and names <= healthy else None

        return self.wait(ready, timeout, f"{count} ready pods in pool {pool}")  # type: ignore[no-any-return]

    def wait_job_phase(self, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 40) -> dict:
        def reached() -> dict | None:
            gj = self.get("generationjob", name, namespace)
            return gj if (gj.get("status") or {}).get("phase") in phases else None

        return self.wait(reached, timeout, f"GenerationJob {name} in {phases}")  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        for proc in self.rq_workers:
            proc.stop()
        if self.operator is not None:
            self.operator.stop()
        self.conn.close()
        self.redis.stop()


def worker_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A ComfyUIWorker of simulators (CPU only unless spec says otherwise)."""
    base: dict[str, Any] = {
        "image": "comfyfleet/comfyui-sim:test",
        "gpu": {"count": 0},
        "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1},
    }
    base.update(spec)
    return {"apiVersion": "comfyfleet.io/v1alpha1", "kind": "ComfyUIWorker", "metadata": {"name": name},
            "spec": base}


def txt2img_job(name: str, pool: str, steps: int = 10, seed: int = 1, priority: int = 5) -> dict[str, Any]:
    """A GenerationJob from the txt2img template; steps x SIM_STEP_SECONDS is its sampling time."""
    return {
        "apiVersion": "comfyfleet.io/v1alpha1",
        "kind": "GenerationJob",
        "metadata": {"name": name},
        "spec": {"template": "txt2img", "pool": pool, "priority": priority,
                 "params": {"prompt": f"test {name}", "seed": seed, "steps": steps, "width": 512, "height": 512}},
    }
