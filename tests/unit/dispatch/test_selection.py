from comfyfleet.dispatch.selection import Candidate, Capability, capability, select_endpoint
from comfyfleet.jobs.workflow import ModelNeeds

SDXL = ModelNeeds(frozenset({"sdxl.safetensors"}))
SDXL_PIXEL = ModelNeeds(frozenset({"sdxl.safetensors"}), frozenset({"pixel.safetensors"}))


def pod(id_, **kw) -> Candidate:
    base = {"checkpoints": frozenset({"sdxl.safetensors", "sd15.safetensors"}), "loras": frozenset()}
    return Candidate(id=id_, **{**base, **kw})


def test_only_healthy_free_pods_with_every_model_qualify():
    pods = [pod("sick", healthy=False), pod("busy", busy=True), pod("nolora"),
            pod("ok", loras=frozenset({"pixel.safetensors"}))]
    assert select_endpoint(pods, SDXL_PIXEL).id == "ok"
    assert select_endpoint(pods[:3], SDXL_PIXEL) is None


def test_prefers_previous_pod_then_warm_checkpoint_then_least_loaded_then_round_robin():
    pods = [pod("a", last_assigned_at=1), pod("b", last_assigned_at=2, last_checkpoint="sdxl.safetensors"),
            pod("c", last_assigned_at=0, queue_remaining=1)]
    assert select_endpoint(pods, SDXL, prefer="c").id == "c"
    assert select_endpoint(pods, SDXL).id == "b", "warm weights win"
    cold = [pod("a", last_assigned_at=5), pod("b", last_assigned_at=3), pod("c", last_assigned_at=1, queue_remaining=2)]
    assert select_endpoint(cold, SDXL).id == "b", "least loaded, then least recently assigned"


def test_round_robin_among_equals_is_by_last_assignment():
    pods = [pod("a", last_assigned_at=10), pod("b", last_assigned_at=20)]
    assert select_endpoint(pods, SDXL).id == "a"
    pods = [pod("a", last_assigned_at=30), pod("b", last_assigned_at=20)]
    assert select_endpoint(pods, SDXL).id == "b"


def test_pool_filter():
    pods = [pod("a", pool="gpu"), pod("b", pool="cpu")]
    assert select_endpoint(pods, SDXL, pool="cpu").id == "b"
    assert select_endpoint(pods, SDXL, pool="other") is None


def test_capability_tells_wait_from_fail_fast():
    assert capability([], SDXL, None) is Capability.NO_ENDPOINTS
    assert capability([pod("a", healthy=False)], SDXL, None) is Capability.NO_ENDPOINTS
    assert capability([pod("a")], SDXL_PIXEL, None) is Capability.MISSING_MODELS
    assert capability([pod("a", busy=True)], SDXL, None) is Capability.BUSY
    assert capability([pod("a", busy=True), pod("b")], SDXL, None) is Capability.FREE
    assert capability([pod("a", pool="x")], SDXL, "y") is Capability.NO_ENDPOINTS
