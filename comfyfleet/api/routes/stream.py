"""Job progress over a WebSocket (the same events as the SSE stream, as JSON text frames), and /me.

    ws(s)://host/api/comfyui/ws?jobId=<id>&token=<accessToken>[&lastEventId=<id>]

Each frame is `{"id": "<event id>", "event": "state" | "progress", "job": {...JobPublic}}`; the server
closes with 1000 after the final state and with 4000 when the stream's lifetime ends (reconnect with
lastEventId). Refusals close with 4000 + the HTTP status they stand for (4401, 4404, 4422, 4429, 4403)
and a reason, since a browser cannot read the HTTP answer to a refused WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from comfyfleet.api.deps import PrincipalDep
from comfyfleet.api.errors import ApiError, error_responses
from comfyfleet.api.events import follow_job, parse_last_event_id
from comfyfleet.api.routes.jobs import require_job, stream_job
from comfyfleet.api.schemas import MePublic
from comfyfleet.api.state import AppState
from comfyfleet.jobs.model import Job

router = APIRouter(tags=["jobs"])

LIFETIME_CLOSE = 4000


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Browsers send Origin on a WebSocket handshake and never apply CORS to it: check it here."""
    if origin is None:
        return True  # not a browser
    if origin.lower() in allowed:
        return True
    return urlsplit(origin).netloc.lower() == (host or "").lower()  # the API's own pages (the dashboard)


@router.get("/api/comfyui/me", response_model=MePublic,
            responses=error_responses(401, 403, 503))  # reliability: documented errors (schemathesis)
async def me(principal: PrincipalDep) -> MePublic:
    """The caller's user name and whether it is an admin."""
    return MePublic(owner=principal.owner, admin=principal.admin)


@router.websocket("/api/comfyui/ws")
async def job_socket(websocket: WebSocket) -> None:
    """WebSocket progress of one job (see the module docstring for the protocol)."""
    state: AppState = websocket.app.state.cf
    await websocket.accept()
    params = websocket.query_params
    release = None
    try:
        if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"),
                              state.settings.cors_origins):
            raise ApiError(403, "this origin may not open streams (cors_origins)")
        job_id = params.get("jobId") or ""
        if not job_id or len(job_id) > 64:
            raise ApiError(422, "jobId: a job id is required", details={"field": "jobId"})
        token = params.get("token")
        if token is not None and len(token) > 200:
            raise ApiError(422, "token: too long", details={"field": "token"})
        job, owner = await stream_job(state, job_id, websocket, token)
        after = parse_last_event_id(params.get("lastEventId"), "lastEventId")
        release = state.streams.acquire(owner)

        async def read_job() -> Job:
            return await require_job(state, job.id)

        async def send_events() -> bool:
            """Send until the job is final (True) or the stream's lifetime ends (False)."""
            async for item in follow_job(state.hub, job.id, read_job, after, state.settings.max_stream_seconds):
                if item is None:
                    continue  # the WebSocket protocol's pings keep the connection alive
                await websocket.send_json({"id": item.id, "event": item.event,
                                           "job": state.public(item.job).model_dump(mode="json", by_alias=True)})
                if item.job.state.is_terminal:
                    return True
            return False

        async def until_disconnect() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # the client has nothing to say; read only to notice when it leaves

        sender = asyncio.create_task(send_events())
        listener = asyncio.create_task(until_disconnect())
        try:
            await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, listener):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await task
        if listener.cancelled() and not sender.cancelled():
            if sender.result():
                await websocket.close(1000, "the job is final")
            else:
                await websocket.close(LIFETIME_CLOSE, "stream lifetime reached; reconnect with lastEventId")
    except ApiError as exc:
        await websocket.close(4000 + exc.status_code, str(exc.detail)[:120])
    except WebSocketDisconnect:
        pass
    finally:
        if release:
            release()
