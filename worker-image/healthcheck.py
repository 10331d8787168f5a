#!/usr/bin/env python3
"""Readiness: exit 0 when ComfyUI on $PORT answers /system_stats with its system info."""

import json
import os
import sys
import urllib.request

try:
    url = f"http://127.0.0.1:{os.environ.get('PORT') or os.environ.get('COMFYFLEET_COMFYUI_PORT', '8188')}/system_stats"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.load(response)
    sys.exit(0 if "system" in stats else 1)
except (OSError, ValueError) as exc:
    print(f"ComfyUI not ready: {exc}", file=sys.stderr)  # noqa: T201
    sys.exit(1)
