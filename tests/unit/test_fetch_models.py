"""worker-image/fetch_models.py keeps HF_TOKEN on Hugging Face: never sent on a redirect to another host."""

import importlib.util
import sys
import urllib.request
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "worker-image" / "fetch_models.py"


@pytest.fixture
def fetch(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    spec = importlib.util.spec_from_file_location("fetch_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_models"] = module  # its dataclasses look their module up while being built
    monkeypatch.setitem(sys.modules, "fetch_models", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("target", "keeps"), [
    ("https://cdn-lfs.hf.co/repo/x.safetensors?sig=1", False),
    ("https://evil.example/x", False),
    ("http://huggingface.co/x", False),  # downgraded to plain http
    ("https://huggingface.co/other/resolve/main/x", True),
])
def test_token_follows_redirects_only_within_hugging_face(fetch, target, keeps):
    request = fetch._request("https://huggingface.co/org/repo/resolve/main/x.safetensors")
    assert request.get_header("Authorization") == "Bearer hf_secret"
    follow = fetch.TokenSafeRedirects().redirect_request(request, None, 302, "Found", {}, target)
    assert (follow.get_header("Authorization") is not None) is keeps


def test_plain_urllib_would_have_leaked_it(fetch):
    """The condition the fix is for: urllib's own handler copies Authorization onto the new host."""
    request = fetch._request("https://huggingface.co/org/repo/resolve/main/x.safetensors")
    follow = urllib.request.HTTPRedirectHandler().redirect_request(request, None, 302, "Found", {},
                                                                   "https://cdn.example/x")
    assert follow.get_header("Authorization") == "Bearer hf_secret"
