"""Process settings from the environment (prefix COMFYFLEET_), one class per process."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "token", "dev", "example"}
# The shortest queue timeout a job or the server default may have (the queue-timeout index relies on it).
QUEUE_TIMEOUT_MIN_SECONDS = 5


def _split_csv(value: object) -> object:
    """Accept `a,b,c` as well as a JSON list for list-valued settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMFYFLEET_", extra="ignore", env_nested_delimiter="__")


class CommonSettings(_Base):
    """Settings every comfyfleet process shares."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Key prefix in Redis, so several installs (or test runs) can share one Redis.
    redis_prefix: str = "cf"
    data_dir: Path = Path(".data")
    dev_mode: bool = False
    log_level: str = "INFO"
    # Where outputs go: local files under data_dir, Firebase Storage (the firebase_* settings) or S3 (s3_*).
    output_store: Literal["local", "firebase", "s3"] = "local"
    # Mirror every job record into Firestore (write-behind from Redis; Redis stays the live truth).
    firestore_enabled: bool = False
    firebase_project_id: str = ""
    firebase_bucket: str = ""
    # Path to a service-account JSON (mounted from a Secret); empty = application default credentials.
    firebase_credentials_file: Path | None = None
    firestore_collection: str = "comfyfleet_jobs"
    # Signed download URLs for outputs in Storage live this long (7 days is the V4 signing maximum).
    storage_url_expiry_seconds: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600)

    # ---- integrations: outbound URL policy, S3 output store, inline outputs ----
    # Hosts and networks user-given URLs (webhooks, input images) may reach beyond the public internet, e.g.
    # `hooks.internal,10.1.2.0/24`; an allow-listed host may also use plain http. Empty: public https only.
    outbound_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Plain http to public hosts; off because a webhook body and its signature would travel in clear.
    outbound_allow_http: bool = False
    # One outbound exchange (DNS, connect, redirects, body) ends after this long; 10 s is generous for a webhook
    # receiver or an image CDN and keeps a slow host from holding a submit or a delivery slot.
    outbound_timeout_seconds: float = Field(10.0, gt=0, le=120)
    # Redirects followed (each checked against the policy); 3 covers http->https->CDN chains.
    outbound_max_redirects: int = Field(3, ge=0, le=10)
    # The S3-compatible output store (COMFYFLEET_OUTPUT_STORE=s3): AWS S3, GCS interop, MinIO, R2.
    s3_bucket: str = ""
    # Key prefix in the bucket; keys are <prefix>/<owner>/<job id>/<file>, the Firebase store's layout.
    s3_prefix: str = "generations"
    s3_region: str = "us-east-1"
    # Empty for AWS; the service URL for MinIO, R2, GCS interop (https://storage.googleapis.com) or a test server.
    s3_endpoint_url: str = ""
    # Credentials from a Secret; empty = the standard AWS chain (AWS_ACCESS_KEY_ID..., IRSA, instance profile).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # Path-style addressing (bucket in the path) is what MinIO and most self-hosted servers expect.
    s3_path_style: bool = False
    # Outputs asked for inline (`output.inline`) are embedded as base64 up to this size each; larger ones are
    # only linked. 1 MiB keeps job records, events and responses small (a 1024px WebP is ~100-300 KiB).
    output_inline_max_bytes: int = Field(1024 * 1024, ge=0, le=8 * 1024 * 1024)

    @field_validator("outbound_allow_hosts", mode="before")
    @classmethod
    def _csv_hosts(cls, value: object) -> object:
        return _split_csv(value)

    # --- observability (comfyfleet.observability) ---
    # `json`: one JSON object per line with job_id/pool/endpoint/attempt/user, for log collectors (Loki, Cloud
    # Logging); `text` stays the default because it is what a person reads in a terminal.
    log_format: Literal["text", "json"] = "text"
    # Per-component levels over log_level, e.g. `api=INFO,dispatch=DEBUG,operator=WARNING` (or a JSON object):
    # turn one noisy or suspect part up or down without drowning the others.
    log_levels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318; empty = tracing off (no OpenTelemetry import).
    otlp_endpoint: str = ""
    # Share of job traces kept (parent-based ratio sampling): 1.0 keeps every job, lower it for busy fleets.
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)

    @field_validator("log_levels", mode="before")
    @classmethod
    def _levels(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("{"):
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("log_levels must be component=LEVEL pairs, e.g. api=INFO,dispatch=DEBUG")
            return {k.strip(): v.strip().upper() for k, v in pairs}
        if isinstance(value, str):
            import json

            return json.loads(value)
        return value

    @field_validator("log_levels", mode="after")
    @classmethod
    def _known_levels(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(LOG_COMPONENTS))
        if unknown:
            raise ValueError(f"log_levels names unknown components {unknown}; known: {', '.join(LOG_COMPONENTS)}")
        return {k: _check_level(v) for k, v in value.items()}

    @field_validator("log_level")
    @classmethod
    def _level_name(cls, value: str) -> str:
        return _check_level(value)


class DispatchSettings(CommonSettings):
    """RQ dispatch workers: queueing, retries, leases and timeouts."""

    # Default per-job timeout: a 1024px SDXL image takes ~10-40 s on one GPU; 5 min covers queue jitter
    # and cold model loads while still catching wedged pods.
    job_timeout_seconds: int = Field(300, ge=5, le=24 * 3600)
    # 3 attempts in all: one retry rarely fixes a dead pod if the first replacement is cold, two does.
    max_attempts: int = Field(3, ge=1, le=10)
    # Backoff before retry N is base * 2**(N-1) seconds; short because the failure was the pod, not the job.
    retry_backoff_seconds: float = Field(1.0, ge=0, le=600)
    # A lease is renewed every lease_ttl/3; a dead RQ worker frees its pod within lease_ttl seconds.
    lease_ttl_seconds: int = Field(15, ge=3, le=600)
    # No websocket frame for this long while a job runs triggers a /history + /queue check on the pod.
    silence_timeout_seconds: float = Field(10.0, gt=0)
    # Finished job records stay in Redis this long (the API reads them); outputs live in the store.
    result_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # How many queued jobs per priority level the scheduler looks past the head to backfill a free pod.
    # Jobs that cannot run at all (parked, failed fast, unreadable) never count against it.
    schedule_window: int = Field(64, ge=1, le=10_000)
    # Jobs one dispatcher process runs at once (asyncio tasks, ~100 KB each): 256 covers a large pool per
    # replica; the chart's 2 replicas give 512 slots with no tuning. More pods than slots is reported loudly.
    max_in_flight: int = Field(256, ge=1, le=10_000)
    # Threads for blocking Redis and file calls of the dispatcher (Redis calls take ~0.1-1 ms each).
    io_threads: int = Field(16, ge=2, le=256)
    # RQ execution heartbeats (its started registry); RQ itself defaults to 30 s.
    job_monitoring_interval_seconds: int = Field(10, ge=1, le=600)
    # The dispatcher's /healthz and /metrics; port 0 turns the listener off.
    dispatcher_host: str = "0.0.0.0"
    dispatcher_port: int = Field(8081, ge=0, le=65535)
    # Remove a finished prompt's entry from the pod's ComfyUI history once its outputs are stored (history
    # otherwise grows without bound on a long-lived pod).
    delete_pod_history: bool = True
    # Keep a finished job's uploads and outputs on the pod's disk (by default the worker image's cleanup route
    # deletes them once the outputs are stored; pods of other images keep them anyway).
    keep_pod_files: bool = False
    # After interrupting a cancelled or timed-out prompt, wait this long for ComfyUI to reach a node boundary
    # before settling the job anyway; the endpoint then stays leased until the prompt really leaves the pod.
    cancel_grace_seconds: float = Field(15.0, ge=0.5, le=600)
    # A failing output store (a Storage or S3 outage) is retried this long before the job fails with
    # storage_error; the pod's outputs stay where they are meanwhile.
    store_retry_seconds: float = Field(60.0, ge=0, le=3600)

    # ---- integrations: webhook delivery (comfyfleet.webhooks) ----
    # Standard Webhooks signing secret, `whsec_` + base64 of 24-64 random bytes; empty turns webhooks off
    # (jobs asking for one are refused with 422). Receivers verify with the same secret.
    webhook_secret: str = ""
    # A failing delivery is retried with backoff base * 2**(attempt-1), capped at backoff_max, until it is
    # retry_window old: 5 s doubling to 10 min for 24 h rides out a receiver's deploy or outage overnight.
    webhook_backoff_seconds: float = Field(5.0, ge=0.01, le=3600)
    webhook_backoff_max_seconds: float = Field(600.0, ge=0.01, le=24 * 3600)
    webhook_retry_window_seconds: float = Field(24 * 3600, ge=1, le=7 * 24 * 3600)
    # Deliveries in flight at once per deliverer process; more than this wait their turn (never block dispatch).
    webhook_concurrency: int = Field(16, ge=1, le=1000)
    # --- reliability (issue 9) ---
    # A job that has not started within this many seconds of being queued fails with queue_timeout
    # (a request may set its own queueTimeoutSeconds): an hour covers a cold scale-from-zero pool.
    queue_timeout_seconds: int = Field(3600, ge=QUEUE_TIMEOUT_MIN_SECONDS, le=7 * 24 * 3600)

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: str) -> str:
        if value:
            from comfyfleet.webhooks.signing import secret_key

            secret_key(value)  # raises ValueError with the reason
        return value


class PoolSettings(CommonSettings):
    """Health monitoring of the ComfyUI endpoints in the registry."""

    health_interval_seconds: float = Field(5.0, gt=0)
    # One failed probe can be a GC pause; two in a row means the pod is not answering.
    unhealthy_after_failures: int = Field(2, ge=1)
    probe_timeout_seconds: float = Field(3.0, gt=0)
    # Static endpoints registered at start (COMFYFLEET_COMFYUI_URLS=http://a:8188,http://b:8188).
    comfyui_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    default_pool: str = "default"
    # Prefetch for the static endpoints above: 1 queues each pod's next prompt on it while the current one
    # runs, so the GPU never waits for dispatch (pools under the operator set `spec.prefetch` instead).
    comfyui_prefetch: int = Field(0, ge=0, le=1)

    @field_validator("comfyui_urls", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)


class StaticToken(BaseModel):
    """One static API bearer token and who it stands for."""

    token: str
    owner: str
    admin: bool = False


class ApiSettings(PoolSettings, DispatchSettings):
    """The REST API process."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    auth_mode: Literal["none", "static", "firebase"] = "static"
    # Firebase auth: also reject revoked tokens (one extra Auth API call per request).
    firebase_check_revoked: bool = False
    # Custom claim that grants admin routes to a Firebase user.
    firebase_admin_claim: str = "admin"
    # JSON list: [{"token": "...", "owner": "alice", "admin": true}]
    api_tokens: list[StaticToken] = Field(default_factory=list)
    # 16 MiB: an API-format workflow is ~10-50 KiB, but bodies may carry base64 input images (a few MiB each).
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    sync_timeout_seconds: float = Field(120.0, gt=0, le=3600)
    # Run the endpoint health monitor inside the API (off when the operator publishes pods).
    run_health_monitor: bool = True
    public_url: str = ""
    # --- browsers (owner: browser) ---
    # Origins whose pages may call the API (CORS), e.g. https://app.example.com; none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # HMAC secret of job access tokens (`accessToken`, `?token=` on streams and outputs). Empty: one
    # random secret per install is kept in Redis, so every API replica accepts every replica's tokens.
    job_access_secret: str = ""
    # Job access tokens live 15 min: long enough to open a stream and show a page of thumbnails, short
    # enough that a URL copied out of a log is soon useless. Reading the job again gives a fresh one.
    job_access_ttl_seconds: int = Field(900, ge=30, le=24 * 3600)
    # Open SSE/WebSocket streams per user and API process; one more is refused with 429. A page needs
    # one per job it watches; 20 covers a busy dashboard while one user cannot tie up the process.
    max_streams_per_user: int = Field(20, ge=1, le=10_000)
    # A stream is closed after this long; clients reconnect with Last-Event-ID and lose nothing. Bounds
    # what a forgotten tab (or a client that never reads) holds on the server.
    max_stream_seconds: float = Field(3600.0, gt=0, le=24 * 3600)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _csv_origins(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"cors_origins: {origin!r} is not an origin like https://app.example.com "
                                 "(scheme and host, no path; '*' is not accepted)")
        return [o.lower() for o in value]

    @field_validator("job_access_secret")
    @classmethod
    def _check_token_secret(cls, value: str) -> str:
        if value and (len(value) < 32 or value.lower() in PLACEHOLDER_SECRETS):
            raise ValueError("job_access_secret must be at least 32 random characters (or empty: kept in Redis)")
        return value

    # ---- integrations: webhook defaults and input images by URL ----
    # Default webhook per owner for jobs that name none: JSON {"alice": "https://hooks.example/cf"}.
    webhook_defaults: dict[str, str] = Field(default_factory=dict)
    # An input image (base64, data URL or fetched from an https URL) may be this large; 20 MiB holds a 4K PNG.
    input_image_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)

    # --- reliability: fair use, bounds, operational routes (issue 9) ------------------------------
    # 0 turns a limit off. A user with this many jobs queued or running gets 429 until one finishes:
    # enough for a batch script to keep a pool busy, not enough for one user to fill the queue.
    max_jobs_in_flight_per_user: int = Field(50, ge=0)
    # Submissions per user per rolling minute (sliding window); 120 = 2/s, above any interactive use.
    max_submissions_per_minute_per_user: int = Field(120, ge=0)
    # Queued (not yet started) jobs across the install, and per target pool: beyond these the queue is
    # not draining and new work only grows Redis (the chart runs it with noeviction), so refuse early.
    max_queue_depth: int = Field(10_000, ge=0)
    max_queue_depth_per_pool: int = Field(2_000, ge=0)
    # Largest workflow graph: real API-format graphs are 10-50 KiB and under ~12 levels deep; the
    # depth bound stays well below pydantic-core's ~200-level JSON parser limit so every record stored
    # can be read back.
    max_workflow_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    max_workflow_depth: int = Field(32, ge=4, le=150)
    max_workflow_nodes: int = Field(2_000, ge=1)
    # Ask clients to come back after this many seconds when Redis is unreachable or full (503).
    unavailable_retry_after_seconds: int = Field(5, ge=1, le=3600)
    # /metrics and /health/detailed: open (Prometheus scrapes without a token, as the chart's
    # ServiceMonitor does) or behind the same bearer auth as the API.
    protect_ops_routes: bool = False
    # How often the API looks for queued jobs past their queue timeout.
    queue_sweep_interval_seconds: float = Field(5.0, gt=0)
    # Per-user-per-day GPU-second totals are kept this long.
    usage_retention_days: int = Field(400, ge=1)

    # ---- bench: API worker processes ----
    # `comfyfleet api` worker processes (uvicorn --workers; uvloop + httptools). One process tops out at about
    # one core of request handling; bench/frontdoor.py measures 1 and 2. Each worker runs its own health monitor.
    api_workers: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _check_auth(self) -> ApiSettings:
        if self.auth_mode == "none" and not _is_loopback(self.host):
            raise ValueError(
                f"auth_mode=none is for local development only and refuses to bind to non-loopback host {self.host!r}"
            )
        if self.auth_mode == "static":
            if not self.api_tokens:
                raise ValueError("auth_mode=static needs COMFYFLEET_API_TOKENS (a JSON list of {token, owner, admin})")
            if not self.dev_mode:
                weak = [t.owner for t in self.api_tokens if t.token.lower() in PLACEHOLDER_SECRETS or len(t.token) < 16]
                if weak:
                    raise ValueError(f"api_tokens for {weak} are placeholders or shorter than 16 characters")
        return self


class SimSettings(_Base):
    """The ComfyUI simulator (`comfyfleet sim`); flags override these."""

    model_config = SettingsConfigDict(env_prefix="COMFYFLEET_SIM_", extra="ignore")

    host: str = "127.0.0.1"
    # 0 = a free port chosen by the OS (read it from urls_file / --print-urls).
    port: int = Field(8188, ge=0, le=65535)
    data_dir: Path | None = None
    # Seconds per KSampler step; real GPUs run 0.05-0.5 s per SDXL step.
    step_seconds: float = Field(0.02, ge=0)
    checkpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
    )
    loras: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["detail_tweaker_xl.safetensors", "pixel_art_xl.safetensors"]
    )
    # Probability that a prompt fails at run time with an execution_error.
    failure_rate: float = Field(0.0, ge=0, le=1)
    # Exit the process (as a crashed GPU pod would) after this many sampler steps of a job; 0 = never.
    crash_after_steps: int = Field(0, ge=0)
    # Accept prompts but never finish them, and go silent on the websocket.
    hang: bool = False
    # Seconds before the server starts listening, like a cold ComfyUI loading custom nodes.
    slow_start_seconds: float = Field(0.0, ge=0)
    # ComfyUI caches node outputs keyed on inputs; --cache-none turns it off.
    cache: bool = True
    # --- many pods in one process (issue 8): 200 simulated pods fit on 2 cores this way. ---
    # Pods on consecutive ports from `port` (port 0: each pod gets a free port from the OS).
    count: int = Field(1, ge=1, le=4096)
    # Explicit ports, one pod each (instead of port + count).
    ports: Annotated[list[int], NoDecode] = Field(default_factory=list)
    # Distinct addresses (127.0.0.2, 127.0.0.3, ...), one pod per address and port, like real ComfyUIs
    # side by side on port 8188; replaces `host`.
    hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Per-pod knob overrides, by pod index in URL order: {"0": {"crash_after_steps": 3}} (JSON).
    pod_knobs: dict[int, dict[str, object]] = Field(default_factory=dict)
    # Write the pods' URLs here, one a line, once they listen (atomically, so a reader never sees half).
    urls_file: Path | None = None
    # A node class that takes this many seconds and honours no interrupt meanwhile, like a VAE decode or
    # an upscale on a GPU (real ComfyUI interrupts only at node boundaries and sampler steps); 0 = off.
    slow_node_seconds: float = Field(0.0, ge=0)
    slow_node_class: str = "VAEDecode"

    @field_validator("checkpoints", "loras", "hosts", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("ports", mode="before")
    @classmethod
    def _csv_ports(cls, value: object) -> object:
        return _split_csv(str(value)) if isinstance(value, int) else _split_csv(value)

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if not 0 <= p <= 65535]
        if bad:
            raise ValueError(f"ports out of range 0-65535: {bad}")
        return value

    @field_validator("slow_node_class")
    @classmethod
    def _known_node(cls, value: str) -> str:
        from comfyfleet.sim.catalog import NODE_CLASSES  # the simulator's node list, loaded only when used

        if value not in NODE_CLASSES:
            raise ValueError(f"unknown node class {value!r}; one of {', '.join(sorted(NODE_CLASSES))}")
        return value

    @field_validator("pod_knobs")
    @classmethod
    def _pod_knob_names(cls, value: dict[int, dict[str, object]]) -> dict[int, dict[str, object]]:
        for index, knobs in value.items():
            unknown = sorted(set(knobs) - set(SIM_POD_KNOBS))
            if index < 0 or unknown:
                raise ValueError(f"pod {index}: unknown knobs {unknown}; per-pod knobs are {', '.join(SIM_POD_KNOBS)}"
                                 if unknown else f"pod index {index} is negative")
        return value

    def for_pod(self, index: int) -> SimSettings:
        """These settings with pod `index`'s knob overrides applied (and validated)."""
        overrides = self.pod_knobs.get(index)
        if not overrides:
            return self
        return SimSettings.model_validate({**self.model_dump(exclude={"pod_knobs"}), **overrides})


# The SimSettings fields that may differ between the pods of one simulator process.
SIM_POD_KNOBS = ("step_seconds", "checkpoints", "loras", "failure_rate", "crash_after_steps", "hang",
                 "slow_start_seconds", "cache", "slow_node_seconds", "slow_node_class")  # fmt: skip


class OperatorSettings(CommonSettings):
    """The kopf operator."""

    namespace: str = ""  # empty = all namespaces
    # How often the operator probes each pod's ComfyUI and re-evaluates autoscaling.
    probe_interval_seconds: float = Field(5.0, gt=0)
    metrics_port: int = Field(9090, ge=0, le=65535)
    liveness_port: int = Field(8080, ge=0, le=65535)
    # How often a GenerationJob's status is refreshed from its job record while it runs; 2 s keeps
    # `kubectl get gj -w` lively without a status write per progress event.
    job_sync_interval_seconds: float = Field(2.0, gt=0)
    # The API's public base URL; GenerationJob outputs get absolute download URLs when it is set.
    public_url: str = ""
    # kopf peering: empty runs standalone (one operator replica, as the chart deploys it); a name
    # makes several replicas elect one active operator through kopf's KopfPeering objects.
    peering_name: str = ""
    # Scale autoscaled pools up on the dispatch wake-ups (a job queued, a pod freed) instead of
    # waiting for the probe timer, so a burst gets its pods within about a second whatever
    # probe_interval_seconds is. Scale-down stays on the timer. Off with peering (every replica
    # would react; only kopf knows which one is active).
    scale_up_on_wake: bool = True
    # Wake-ups within this window share one pass: a burst of submits costs one queue read, and the
    # first job of the burst waits at most this long before its pods are asked for.
    scale_up_debounce_seconds: float = Field(0.075, ge=0, le=5)


class LocalSettings(_Base):
    """The CLI on a workstation: `comfyfleet submit` (API address, token) and `comfyfleet up` defaults."""

    api: str = "http://127.0.0.1:8000"
    token: str | None = None
    # `comfyfleet up` is local development: auth off by default (it binds to loopback only).
    auth_mode: Literal["none", "static", "firebase"] = "none"
    # Probe the local simulators every second so a fresh stack is ready almost at once.
    health_interval_seconds: float = Field(1.0, gt=0)
    # Use this Redis when it answers; otherwise `comfyfleet up` starts its own redis-server.
    redis_url: str | None = None


LOG_COMPONENTS = ("api", "dispatch", "operator", "sim", "cli")


def _check_level(value: str) -> str:
    level = value.strip().upper()
    if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
        raise ValueError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
