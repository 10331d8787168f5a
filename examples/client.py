"""The Python client: generate and wait, follow events, images by URL, WebP output, a webhook.

    comfyfleet up &                      # local stack (auth off), or point API/TOKEN at a real install
    python examples/client.py

Everything here is also in the REST API; see README "Integrations".
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from comfyfleet.client import AsyncClient, Client

API = os.environ.get("COMFYFLEET_API", "http://127.0.0.1:8000")
TOKEN = os.environ.get("COMFYFLEET_TOKEN")


def blocking() -> None:
    with Client(API, TOKEN) as cf:
        # Wait on the server for the result; store it as WebP and also get it inline (small results only).
        job = cf.generate(template="txt2img", params={"prompt": "a lighthouse at dawn", "seed": 7, "steps": 12},
                          output={"format": "webp", "quality": 85, "inline": True}, wait=True, wait_timeout=300)
        out = job.outputs[0]
        Path(out.filename).write_bytes(cf.download(out))  # inline data if present, else the output URL
        print(job.state.value, out.filename, out.content_type)  # noqa: T201

        # Queue and follow progress.
        queued = cf.generate(template="txt2img", params={"prompt": "a fox", "steps": 20},
                             webhook=os.environ.get("WEBHOOK_URL"))  # a signed POST when it ends
        for event in cf.events(queued.job_id):
            print(event.event, event.job.state.value, event.job.progress.percent)  # noqa: T201

        # img2img with the input image given by URL (https; fetched once by the server, checked as an image).
        if image_url := os.environ.get("IMAGE_URL"):
            workflow = json.loads((Path(__file__).parent / "img2img.json").read_text())
            job = cf.generate(workflow, input_images={"input.png": image_url}, wait=True)
            print("img2img", job.state.value)  # noqa: T201
        print(cf.queue_stats(), cf.workers().ready)  # noqa: T201


async def concurrent() -> None:
    async with AsyncClient(API, TOKEN) as cf:
        jobs = await asyncio.gather(*(cf.generate(template="txt2img", params={"prompt": p, "steps": 8}, wait=True)
                                      for p in ("a red fox", "a blue whale", "a green forest")))
        print([j.state.value for j in jobs])  # noqa: T201


if __name__ == "__main__":
    blocking()
    asyncio.run(concurrent())
