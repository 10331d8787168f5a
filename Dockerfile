# syntax=docker/dockerfile:1
# The comfyfleet app image: one image, the command picks the process.
#   docker run IMAGE api | worker --concurrency 4 | operator | sim
# Runs as a fixed non-root UID (10001, matched by the chart's securityContext) and works with a
# read-only root filesystem: only /tmp and /data need to be writable.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/comfyfleet
COPY pyproject.toml README.md ./
COPY comfyfleet ./comfyfleet
# A non-editable install of the one distribution; its dependencies are pinned by pyproject's ranges
# and the wheel cache of the build, and the venv is copied whole into the runtime stage.
RUN /opt/comfyfleet/bin/pip install --no-compile ".[firebase,s3]" \
    && /opt/comfyfleet/bin/python -m compileall -q /opt/comfyfleet

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="comfyfleet" \
      org.opencontainers.image.description="ComfyUI image generation as a service: API, RQ dispatch workers, kopf operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 comfyfleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin comfyfleet \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/comfyfleet /opt/comfyfleet
ENV PATH=/opt/comfyfleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    COMFYFLEET_DATA_DIR=/data \
    COMFYFLEET_HOST=0.0.0.0
WORKDIR /data
USER 10001:10001
# API port, operator liveness and metrics.
EXPOSE 8000 8080 9090
ENTRYPOINT ["comfyfleet"]
CMD ["api"]
