"""What SREs see of a running fleet: job-level metrics, structured logs, traces (and the chart's dashboard).

- `metrics`: the job-level Prometheus families, pure functions that turn a job's facts into observations,
  and the sink they go to (the registry this process serves on /metrics).
- `fleet`: figures read from Redis at scrape time (queue per pool, oldest job, endpoints by pool and state).
- `logs`: JSON or text log lines carrying job_id/pool/endpoint/attempt/user/trace_id from a context.
- `tracing`: optional OpenTelemetry spans of a job's life, exported over OTLP when an endpoint is set.
- `hooks`: the one-line calls dispatch code makes at each step of a job (where each goes: its docstring).
- `catalog`: every metric name comfyfleet exports (dashboard and alert queries are tested against it).
- `console`: `comfyfleet status` and `comfyfleet jobs` over the public API.
"""
