"""The operator's thin gateway to the Kubernetes API for the objects it owns: pods and Services.

Objects travel as plain JSON dicts (camelCase, exactly as the API serves them and as the builders
make them), so the pure code never sees client model classes. The official client is synchronous;
every call runs in a worker thread so kopf's event loop never blocks on the network.

Custom-resource reads and status writes are kopf's job (its watch streams and `patch`); this module
only does what kopf does not: create-if-missing of children, listing and deleting them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from comfyfleet.operator.models import GROUP, VERSION, WORKER_PLURAL

log = logging.getLogger(__name__)

R = TypeVar("R")
A = TypeVar("A")

# Seconds before a single API call gives up: a hung connection must not stall a reconcile pass for
# longer than a handful of probe intervals (kopf retries the pass).
REQUEST_TIMEOUT_SECONDS = 30
# The events' source, as kopf names its own (it posts the handlers' events as "kopf").
EVENT_SOURCE = "comfyfleet-operator"


class KubeError(RuntimeError):
    """A Kubernetes API call failed for a reason other than the expected 404/409."""

    def __init__(self, action: str, exc: ApiException):
        super().__init__(f"{action}: {exc.status} {exc.reason}: {_message(exc)}")
        self.status = exc.status


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except ValueError:
        return str(exc.body)


def load_api_client() -> ApiClient:
    """An ApiClient for the operator's own identity: in-cluster ServiceAccount, else $KUBECONFIG."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return ApiClient(config)


def quantities_as_strings(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a pod manifest whose resource quantities are strings (`{"nvidia.com/gpu": "1"}`).

    The API server takes numbers or strings, but the official client (v37+) validates bodies into
    its typed models, which declare quantities as strings only.
    """
    out = copy.deepcopy(dict(pod))
    spec = out.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            if resources.get(kind):
                resources[kind] = {name: str(value) for name, value in resources[kind].items()}
    return out


def _unless(status: int, answer: A, request: Callable[[], R]) -> R | A:
    """request(), or answer when the API server replies with status (409 on create, 404 on read/delete): those
    are expected outcomes here, not errors."""
    try:
        return request()
    except ApiException as exc:
        if exc.status == status:
            return answer
        raise


class KubeGateway:
    """Pods and Services of the pools, through the official client in threads."""

    def __init__(self, api: ApiClient):
        self.api = api
        self.core = CoreV1Api(api)
        self.custom = CustomObjectsApi(api)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector, as JSON dicts (a consistent read, not a cache)."""

        def call() -> list[dict[str, Any]]:
            # _preload_content=False: the raw response (its JSON), not the client's model classes.
            resp: Any = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False,
                                                      _request_timeout=REQUEST_TIMEOUT_SECONDS)
            return list(json.loads(resp.data).get("items") or [])

        return await self._call(f"list pods {namespace}/{selector}", call)

    async def create_owned(self, obj: Mapping[str, Any]) -> bool:
        """Create a pod or Service as built; False if one of that name exists (409).

        The builders (operator/builders.py) already give it its namespace, labels and controller owner
        reference, so nothing is added here (no kopf.adopt: it would copy the pool's own labels onto
        the pod) and the caller's dict is not changed.
        """
        kind, namespace = obj["kind"], obj["metadata"]["namespace"]
        body = quantities_as_strings(obj) if kind == "Pod" else copy.deepcopy(dict(obj))
        # Bodies are JSON dicts, which the client accepts beside its model classes (its types say models only).
        create: Callable[..., Any] = (
            self.core.create_namespaced_pod if kind == "Pod" else self.core.create_namespaced_service
        )

        def created() -> bool:
            create(namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            return True

        return await self._call(f"create {kind} {namespace}/{obj['metadata']['name']}",
                                lambda: _unless(409, False, created))

    async def ensure_service(self, obj: Mapping[str, Any]) -> bool:
        """Create the Service unless it exists; True when it was created now."""
        if await self.read_service(obj["metadata"]["namespace"], obj["metadata"]["name"]) is not None:
            return False
        return await self.create_owned(obj)

    async def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Service as a JSON dict, or None if it does not exist."""

        def call() -> dict[str, Any] | None:
            resp: Any = _unless(404, None, lambda: self.core.read_namespaced_service(
                name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS))
            return None if resp is None else dict(json.loads(resp.data))

        return await self._call(f"read Service {namespace}/{name}", call)

    async def list_workers(self, namespace: str) -> list[dict[str, Any]]:
        """ComfyUIWorkers of one namespace ("" = all namespaces), as JSON dicts (a consistent read)."""

        def call() -> list[dict[str, Any]]:
            args = (GROUP, VERSION)
            kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT_SECONDS}
            resp: Any = (
                self.custom.list_namespaced_custom_object(*args, namespace, WORKER_PLURAL, **kwargs)
                if namespace else self.custom.list_cluster_custom_object(*args, WORKER_PLURAL, **kwargs)
            )
            return list(json.loads(resp.data).get("items") or [])

        return await self._call(f"list comfyuiworkers in {namespace or 'all namespaces'}", call)

    async def read_worker(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One ComfyUIWorker as a JSON dict, or None if it does not exist."""

        def call() -> dict[str, Any] | None:
            resp: Any = _unless(404, None, lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, WORKER_PLURAL, name, _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_SECONDS))
            return None if resp is None else dict(json.loads(resp.data))

        return await self._call(f"read ComfyUIWorker {namespace}/{name}", call)

    async def post_event(self, involved: Mapping[str, Any], reason: str, message: str) -> None:
        """A Normal event about an object (what kopf.info posts), for code running outside a kopf handler."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "message": message[:1024], "type": "Normal", "count": 1,
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now, "lastTimestamp": now,
        }

        # A JSON dict body, which the client accepts beside its model classes (its types say models only).
        create: Callable[..., Any] = self.core.create_namespaced_event

        def call() -> None:
            create(meta["namespace"], body, _request_timeout=REQUEST_TIMEOUT_SECONDS)

        await self._call(f"post event {reason} on {meta['namespace']}/{meta['name']}", call)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod (its grace period applies); False if it was already gone."""
        return await self._delete("Pod", namespace, name, self.core.delete_namespaced_pod)

    async def delete_service(self, namespace: str, name: str) -> bool:
        """Delete a Service; False if it was already gone."""
        return await self._delete("Service", namespace, name, self.core.delete_namespaced_service)

    async def _delete(self, kind: str, namespace: str, name: str, delete: Any) -> bool:
        def deleted() -> bool:
            delete(name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            return True

        return await self._call(f"delete {kind} {namespace}/{name}", lambda: _unless(404, False, deleted))

    @staticmethod
    async def _call(action: str, fn: Callable[[], R]) -> R:
        try:
            return await asyncio.to_thread(fn)
        except ApiException as exc:
            raise KubeError(action, exc) from exc

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]
