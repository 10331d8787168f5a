"""Input images given as URLs (fetched once at submit, under the outbound policy) or data URLs."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.support.receiver import Receiver, Reply
from tests.support.stack import auth

INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "input.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
}


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def images() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def inverted_pixel(stack, job: dict) -> tuple[int, int, int]:  # noqa: ANN001
    data = stack.http.get(job["outputs"][0]["url"], headers=auth()).content
    return Image.open(io.BytesIO(data)).convert("RGB").getpixel((3, 3))  # type: ignore[return-value]


def test_url_and_data_url_images_reach_the_pod(sim_factory, stack_factory, images) -> None:  # noqa: ANN001
    images.serve_file("/in/green.png", png((10, 200, 30)), "image/png")
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=1, env={"COMFYFLEET_OUTBOUND_ALLOW_HOSTS": "127.0.0.1"})
    stack.wait_workers_ready(1)
    r = stack.generate({"workflow": INVERT, "inputImages": {"input.png": images.url + "/in/green.png"}})
    assert r.status_code == 202, r.text
    done = stack.wait_state(r.json()["jobId"], timeout=60)
    assert done["state"] == "succeeded", done["error"]
    assert inverted_pixel(stack, done) == (245, 55, 225)
    assert len(images.received) == 1, "fetched once, at submit"

    data_url = "data:image/png;base64," + base64.b64encode(png((0, 0, 255))).decode()
    r = stack.generate({"workflow": INVERT, "inputImages": {"input.png": data_url}})
    done = stack.wait_state(r.json()["jobId"], timeout=60)
    assert done["state"] == "succeeded" and inverted_pixel(stack, done) == (255, 255, 0)


def test_bad_image_urls_are_422s_naming_the_image(sim_factory, stack_factory, images) -> None:  # noqa: ANN001
    images.serve_file("/html", b"<html>not an image</html>", "text/html")
    images.serve_file("/liar.png", b"GIF89a" + b"\x00" * 40, "image/png")
    images.serve_file("/big.png", png((1, 1, 1)) + b"\x00" * 4096, "image/png")
    images.routes["/gone.png"] = Reply(404, b"no")
    images.routes["/to-metadata.png"] = Reply(302, b"", {"location": "https://169.254.169.254/x.png"})
    sim = sim_factory()
    stack = stack_factory([sim.url], workers=0, env={"COMFYFLEET_OUTBOUND_ALLOW_HOSTS": "127.0.0.1",
                                                     "COMFYFLEET_INPUT_IMAGE_MAX_BYTES": "2048"})
    strict = stack_factory([sim.url], workers=0)
    cases = [
        (stack, images.url + "/html", "text/html"),
        (stack, images.url + "/liar.png", "not a PNG, JPEG or WebP"),
        (stack, images.url + "/big.png", "limit of 2048"),
        (stack, images.url + "/gone.png", "HTTP 404"),
        (stack, images.url + "/to-metadata.png", "metadata"),
        (stack, "data:text/plain;base64,aGk=", "text/plain"),
        (strict, images.url + "/liar.png", "plain http"),
        (strict, f"https://localhost:{images.port}/x.png", "loopback"),
    ]
    for target, value, words in cases:
        r = target.generate({"workflow": INVERT, "inputImages": {"input.png": value}})
        assert r.status_code == 422, (value, r.text)
        err = r.json()["error"]
        assert err["details"][0]["field"] == "inputImages.input.png" and words in err["message"], (value, err)
