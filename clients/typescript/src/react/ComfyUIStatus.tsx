/**
 * ComfyUIStatus: service online/offline, endpoint pool health, queue statistics (active, waiting,
 * completed, failed) and a collapsible detailed view of each endpoint; refreshes itself every 30 s.
 */
import { useCallback, useEffect, useState } from "react";
import type { BackendStatus, ComfyFleetClient, QueueStats, WorkerStats } from "../client.js";

export interface ComfyUIStatusProps {
  client: ComfyFleetClient;
  /** Auto-refresh period in ms (default 30 000, as the old widget); 0 turns it off. */
  refreshIntervalMs?: number;
  /** Start with the detailed view open. */
  defaultExpanded?: boolean;
  className?: string;
}

interface Snapshot {
  status: BackendStatus;
  workers: WorkerStats | null;
  queue: QueueStats | null;
  error: string | null;
  at: Date;
}

async function load(client: ComfyFleetClient): Promise<Snapshot> {
  const status = await client.checkBackendStatus();
  if (!status.online) return { status, workers: null, queue: null, error: status.error ?? null, at: new Date() };
  try {
    const [workers, queue] = await Promise.all([client.getWorkerStats(), client.getQueueStats()]);
    return { status, workers, queue, error: null, at: new Date() };
  } catch (err) {
    return { status, workers: null, queue: null, error: String((err as Error).message ?? err), at: new Date() };
  }
}

export function ComfyUIStatus({ client, refreshIntervalMs = 30_000, defaultExpanded = false, className }:
  ComfyUIStatusProps) {
  const [snap, setSnap] = useState<Snapshot | null>(null);
  const [expanded, setExpanded] = useState(defaultExpanded);
  const [loading, setLoading] = useState(false);

  const refresh = useCallback(async () => {
    setLoading(true);
    try {
      setSnap(await load(client));
    } finally {
      setLoading(false);
    }
  }, [client]);

  useEffect(() => {
    void refresh();
    if (!refreshIntervalMs) return undefined;
    const timer = setInterval(() => void refresh(), refreshIntervalMs);
    return () => clearInterval(timer);
  }, [refresh, refreshIntervalMs]);

  const online = snap?.status.online ?? false;
  const label = !snap ? "checking…" : online ? (snap.status.status === "degraded" ? "degraded" : "online") : "offline";
  const q = snap?.queue;
  const w = snap?.workers;
  return (
    <section className={className} aria-label="ComfyUI status" data-status={label}>
      <header>
        <strong>ComfyUI</strong>{" "}
        <span role="status" aria-live="polite">{label}</span>
        {snap?.status.version ? <small> v{snap.status.version}</small> : null}
        <button type="button" onClick={() => void refresh()} disabled={loading}>
          {loading ? "Refreshing…" : "Refresh"}
        </button>
      </header>
      {w ? (
        <p aria-label="worker pool">
          Workers: <span data-testid="ready">{w.ready}</span> ready, <span data-testid="busy">{w.busy}</span> busy,{" "}
          <span data-testid="unhealthy">{w.unhealthy}</span> unhealthy
        </p>
      ) : null}
      {q ? (
        <dl aria-label="queue">
          <dt>Active</dt><dd data-testid="active">{q.active}</dd>
          <dt>Waiting</dt><dd data-testid="waiting">{q.waiting}</dd>
          <dt>Completed</dt><dd data-testid="completed">{q.completed}</dd>
          <dt>Failed</dt><dd data-testid="failed">{q.failed}</dd>
        </dl>
      ) : null}
      {snap?.error ? <p role="alert">{snap.error}</p> : null}
      {w ? (
        <>
          <button type="button" aria-expanded={expanded} onClick={() => setExpanded(!expanded)}>
            {expanded ? "Hide details" : "Show details"}
          </button>
          {expanded ? (
            <table aria-label="workers">
              <thead><tr><th>Endpoint</th><th>Pool</th><th>State</th><th>Job</th><th>Checkpoints</th><th>LoRAs</th></tr></thead>
              <tbody>
                {w.workers.map((x) => (
                  <tr key={x.id}>
                    <td>{x.id}</td><td>{x.pool}</td><td>{x.state}</td><td>{x.currentJob ?? "—"}</td>
                    <td>{x.checkpoints.join(", ")}</td><td>{x.loras.join(", ")}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : null}
        </>
      ) : null}
      {snap ? <small>updated {snap.at.toLocaleTimeString()}</small> : null}
    </section>
  );
}

export default ComfyUIStatus;
