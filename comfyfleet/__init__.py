"""comfyfleet: ComfyUI image generation as a service on a Kubernetes fleet of GPU workers."""

__version__ = "0.1.0"
