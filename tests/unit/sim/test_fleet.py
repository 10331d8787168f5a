"""Which pods one simulator process hosts (addresses, ports, folders) and their per-pod knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from comfyfleet.settings import SimSettings
from comfyfleet.sim.fleet import FleetPlanError, faults_for, plan_pods, pod_url

ROOT = Path("/data")


def _settings(**values: Any) -> SimSettings:
    return SimSettings.model_validate(values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # One pod: ComfyUI's own flags, data straight in the data dir.
        ({}, [(("127.0.0.1",), 8188, ROOT)]),
        ({"host": "127.0.0.1,::1", "port": 9000}, [(("127.0.0.1", "::1"), 9000, ROOT)]),
        # Consecutive ports; each pod its own folder.
        ({"port": 9000, "count": 3}, [(("127.0.0.1",), 9000 + i, ROOT / f"pod-{i}") for i in range(3)]),
        # Port 0: every pod on a free port of its own.
        ({"port": 0, "count": 2}, [(("127.0.0.1",), 0, ROOT / "pod-0"), (("127.0.0.1",), 0, ROOT / "pod-1")]),
        ({"ports": "9005,9001"}, [(("127.0.0.1",), 9005, ROOT / "pod-0"), (("127.0.0.1",), 9001, ROOT / "pod-1")]),
        # Loopback addresses side by side on one port, like real ComfyUIs; hosts replace host.
        ({"hosts": "127.0.0.2,127.0.0.3", "host": "0.0.0.0"},
         [(("127.0.0.2",), 8188, ROOT / "pod-0"), (("127.0.0.3",), 8188, ROOT / "pod-1")]),
        # Addresses times ports, address-major.
        ({"hosts": "127.0.0.2,127.0.0.3", "port": 9000, "count": 2},
         [(("127.0.0.2",), 9000, ROOT / "pod-0"), (("127.0.0.2",), 9001, ROOT / "pod-1"),
          (("127.0.0.3",), 9000, ROOT / "pod-2"), (("127.0.0.3",), 9001, ROOT / "pod-3")]),
    ],
)  # fmt: skip
def test_plan_pods(values: dict[str, Any], expected: list[tuple[tuple[str, ...], int, Path]]) -> None:
    plans = plan_pods(_settings(**values), ROOT)
    assert [(p.hosts, p.port, p.data_dir) for p in plans] == expected
    assert [p.index for p in plans] == list(range(len(expected)))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ports": "9000,9001", "count": 2}, "ports or count"),
        ({"ports": "9000,9000"}, "twice"),
        ({"port": 65535, "count": 2}, "past port 65535"),
        ({"port": 9000, "count": 2, "pod_knobs": {"2": {"hang": True}}}, "pods [2], but only 2"),
    ],
)
def test_plan_pods_refuses(values: dict[str, Any], message: str) -> None:
    with pytest.raises(FleetPlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_pods(_settings(**values), ROOT)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"pod_knobs": {"0": {"step_secs": 1}}}, "unknown knobs ['step_secs']"),
        ({"pod_knobs": {"0": {"port": 1}}}, "unknown knobs ['port']"),
        ({"pod_knobs": {"-1": {"hang": True}}}, "negative"),
        ({"ports": "70000"}, "ports"),
        ({"count": 0}, "count"),
        ({"slow_node_class": "NoSuchNode"}, "unknown node class 'NoSuchNode'"),
        ({"slow_node_seconds": -1}, "slow_node_seconds"),
    ],
)
def test_settings_name_the_bad_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        _settings(**values)
    assert field in str(info.value)


def test_pod_knobs_override_only_their_pod() -> None:
    settings = _settings(step_seconds=0.1, count=3, port=0, slow_node_seconds=2.0,
                         pod_knobs={"1": {"crash_after_steps": 3, "checkpoints": "a.safetensors,b.ckpt"},
                                    "2": {"slow_node_seconds": 0}})  # fmt: skip
    pod0, pod1, pod2 = (settings.for_pod(i) for i in range(3))
    assert pod0 is settings
    assert (pod1.crash_after_steps, pod1.checkpoints, pod1.step_seconds) == (3, ["a.safetensors", "b.ckpt"], 0.1)
    assert pod1.slow_node_seconds == 2.0 and pod2.slow_node_seconds == 0
    faults = faults_for(pod1, "none")
    assert (faults.crash_after_steps, faults.step_seconds, faults.slow_node_class) == (3, 0.1, "VAEDecode")


def test_bad_pod_knob_value_names_the_knob() -> None:
    settings = _settings(count=2, port=0, pod_knobs={"1": {"failure_rate": 2}})
    with pytest.raises(ValidationError, match="failure_rate"):
        settings.for_pod(1)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYFLEET_SIM_COUNT", "4")
    monkeypatch.setenv("COMFYFLEET_SIM_PORTS", "")
    monkeypatch.setenv("COMFYFLEET_SIM_HOSTS", "127.0.0.2,127.0.0.3")
    monkeypatch.setenv("COMFYFLEET_SIM_POD_KNOBS", '{"3": {"hang": true}}')
    monkeypatch.setenv("COMFYFLEET_SIM_SLOW_NODE_SECONDS", "20")
    monkeypatch.setenv("COMFYFLEET_SIM_SLOW_NODE_CLASS", "ImageBlur")
    s = SimSettings()
    assert (s.count, s.ports, s.hosts, s.pod_knobs) == (4, [], ["127.0.0.2", "127.0.0.3"], {3: {"hang": True}})
    assert (s.slow_node_seconds, s.slow_node_class) == (20.0, "ImageBlur")


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.2", 8188, "http://127.0.0.2:8188"),
        ("0.0.0.0", 9000, "http://127.0.0.1:9000"),
        ("", 9000, "http://127.0.0.1:9000"),
        ("::", 9000, "http://[::1]:9000"),
        ("::1", 9000, "http://[::1]:9000"),
        ("localhost", 9000, "http://localhost:9000"),
    ],
)
def test_pod_url(host: str, port: int, url: str) -> None:
    assert pod_url(host, port) == url
