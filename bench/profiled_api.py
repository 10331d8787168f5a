"""`comfyfleet api` (one process, uvloop + httptools) with a pyinstrument profiler switched by signals.

Used by bench/api_profile.py: SIGUSR1 starts sampling the event-loop thread, SIGUSR2 stops it and saves the
session to argv[1]. Host, port and everything else come from the COMFYFLEET_* environment.

    python bench/profiled_api.py OUT.pyisession
"""

from __future__ import annotations

import sys

import uvicorn
from profiled_dispatcher import install

from comfyfleet.api.server import HttpProtocol
from comfyfleet.settings import ApiSettings

if __name__ == "__main__":
    install(sys.argv[1])
    settings = ApiSettings()
    uvicorn.run("comfyfleet.api.app:create_app", factory=True, host=settings.host, port=settings.port,
                loop="uvloop", http=HttpProtocol, log_level="warning", access_log=False)
