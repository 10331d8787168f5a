#!/usr/bin/env bash
# Fetch the pool's models and LoRAs into the cache volume, then become ComfyUI.
#   COMFYFLEET_MODELS / COMFYFLEET_LORAS   JSON lists of {name, url, sha256, folder} (see fetch_models.py)
#   PORT                                   ComfyUI's port (default: COMFYFLEET_COMFYUI_PORT, which the
#                                          operator sets from the pool's spec.port, else 8188)
#   COMFYUI_DATA                           writable folder for output/input/temp/user (default /data)
# Extra arguments (the ComfyUIWorker's extraArgs) are passed to ComfyUI's main.py as given.
set -euo pipefail

PORT="${PORT:-${COMFYFLEET_COMFYUI_PORT:-8188}}"
COMFYUI_DATA="${COMFYUI_DATA:-/data}"

python3 /opt/comfyfleet/fetch_models.py

mkdir -p "$COMFYUI_DATA/output" "$COMFYUI_DATA/input" "$COMFYUI_DATA/temp" "$COMFYUI_DATA/user"

# exec: ComfyUI replaces this shell as PID 1 and gets the kubelet's SIGTERM directly.
exec python3 /opt/ComfyUI/main.py \
  --listen 0.0.0.0 \
  --port "$PORT" \
  --output-directory "$COMFYUI_DATA/output" \
  --input-directory "$COMFYUI_DATA/input" \
  --temp-directory "$COMFYUI_DATA/temp" \
  --user-directory "$COMFYUI_DATA/user" \
  "$@"
