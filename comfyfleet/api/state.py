"""What the API process holds for its lifetime: settings, Redis clients, dispatcher, auth, store."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from comfyfleet.api.auth import Authenticator
from comfyfleet.dispatch.service import Dispatcher
from comfyfleet.settings import ApiSettings
from comfyfleet.store.outputs import OutputStore


@dataclass
class AppState:
    settings: ApiSettings
    conn: redis.Redis
    aconn: aioredis.Redis
    dispatcher: Dispatcher
    authenticator: Authenticator
    store: OutputStore
