// @vitest-environment node
import { describe, expect, it } from "vitest";
import {
  ComfyFleetClient, ComfyFleetError, ComfyUIDisabledError, JobFailedError, configure, checkBackendStatus,
  generateWithComfyUI, getQueueStats, getUsage, getWorkerStats, parseSseFrame, type JobEvent,
} from "../src/client.js";
import { API, TOKENS, clientFor, expectOrderedWithoutRepeats, txt2img } from "./env.js";

describe("the old client's functions, against a real API", () => {
  configure({ baseUrl: API, getToken: () => TOKENS.alice });

  it("checkBackendStatus, getWorkerStats and getQueueStats report the fleet", async () => {
    const status = await checkBackendStatus();
    expect(status).toMatchObject({ online: true, status: "ok" });
    const workers = await getWorkerStats();
    expect(workers.ready + workers.busy).toBeGreaterThanOrEqual(1);
    expect(workers.workers[0].checkpoints.length).toBeGreaterThan(0);
    const queue = await getQueueStats();
    expect(queue).toHaveProperty("waiting");
    expect(queue).toHaveProperty("byPriority");
  });

  it("generateWithComfyUI follows progress in order to the outputs (SSE over fetch)", async () => {
    const events: JobEvent[] = [];
    const job = await generateWithComfyUI(txt2img(1, 8), { onEvent: (e) => events.push(e), transport: "sse" });
    expect(job.state).toBe("succeeded");
    expect(job.outputs[0].url).toContain("token=");
    const ids = events.map((e) => e.id!);
    expect(new Set(ids).size).toBe(ids.length);
    const percents = events.map((e) => e.job.progress.percent);
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
    expect(events.some((e) => e.event === "progress")).toBe(true);
    const png = await fetch(API + job.outputs[0].url!); // no header: the URL carries the job's token
    expect(png.status).toBe(200);
    expect(png.headers.get("content-type")).toBe("image/png");
  });

  it("resumes a stream the server ended (its lifetime) without losing or repeating events", async () => {
    const opened: string[] = [];
    const events: JobEvent[] = [];
    const client = clientFor("alice", {
      fetch: (input, init) => {
        if (String(input).includes("/events")) opened.push(String(input));
        return fetch(input, init);
      },
    });
    // 80 steps x 50 ms = 4 s of sampling: streams of 2 s end at least once on the way.
    const job = await client.generateWithComfyUI(txt2img(6, 80), { transport: "sse", onEvent: (e) => events.push(e) });
    expect(job.state).toBe("succeeded");
    expect(opened.length).toBeGreaterThanOrEqual(2);
    expectOrderedWithoutRepeats(events, 80);
  });

  it("falls back to polling and still ends at the final state", async () => {
    const seen: string[] = [];
    const job = await clientFor("alice", { pollIntervalMs: 100 }).generateWithComfyUI(txt2img(2, 4), {
      transport: "poll", onProgress: (j) => seen.push(j.state),
    });
    expect(job.state).toBe("succeeded");
    expect(seen.at(-1)).toBe("succeeded");
  });

  it("cancels a job, follows it to cancelled and finds it in the history", async () => {
    const alice = clientFor("alice");
    const job = await alice.generate(txt2img(3, 150));
    const cancelled = await alice.cancelJob(job.jobId);
    expect(["cancelled", "dispatched", "running", "queued"]).toContain(cancelled.state);
    const final = await alice.followJob(job, { transport: "sse" });
    expect(final.state).toBe("cancelled");
    const history = await alice.getJobHistory({ limit: 50 });
    expect(history.jobs.map((j) => j.jobId)).toContain(job.jobId);
    await expect(alice.cancelJob(job.jobId)).rejects.toMatchObject({ status: 409, code: "conflict" });
  });

  it("keeps users apart and admin actions for admins", async () => {
    const alice = clientFor("alice");
    const job = await alice.generate(txt2img(4));
    await expect(clientFor("bob").getJob(job.jobId)).rejects.toMatchObject({ status: 404 });
    await expect(alice.cleanQueue()).rejects.toMatchObject({ status: 403 });
    await expect(alice.addWorker("http://127.0.0.1:9")).rejects.toMatchObject({ status: 403 });
    await expect(clientFor("admin").getJobHistory({ user: "alice" })).resolves.toHaveProperty("jobs");
    await expect(alice.getJobHistory({ user: "bob" })).rejects.toBeInstanceOf(ComfyFleetError);
  });

  it("getUsage counts a finished job's GPU-seconds today; only admins read another user's", async () => {
    const bob = clientFor("bob");
    const before = await bob.getUsage();
    expect(before.user).toBe("bob");
    expect(before.days).toHaveLength(7); // the API's default: the last 7 UTC days, oldest first
    const job = await bob.generateWithComfyUI(txt2img(8, 6), { transport: "poll" });
    expect(job.state).toBe("succeeded");
    const after = await bob.getUsage({ days: 2 });
    expect(after.days.map((d) => d.date)).toEqual([...after.days.map((d) => d.date)].sort());
    const today = after.days.at(-1)!;
    expect(today.gpuSeconds).toBeGreaterThan(before.days.at(-1)!.gpuSeconds);
    expect(today.attempts).toBeGreaterThan(before.days.at(-1)!.attempts);
    expect(after.totalGpuSeconds).toBeGreaterThanOrEqual(today.gpuSeconds);
    const asAdmin = await clientFor("admin").getUsage({ user: "bob", days: 2 });
    expect(asAdmin).toMatchObject({ user: "bob", days: after.days });
    await expect(clientFor("alice").getUsage({ user: "bob" })).rejects.toMatchObject({ status: 403 });
    await expect(getUsage({ days: 1 })).resolves.toMatchObject({ user: "alice" });
    await expect(bob.getUsage({ days: 0 })).rejects.toMatchObject({ status: 422 });
  });

  it("verifyLora says which LoRAs exist", async () => {
    const res = await clientFor("alice").verifyLora(["detail_tweaker_xl.safetensors", "nope.safetensors"]);
    expect(res.results.map((r) => r.available)).toEqual([true, false]);
    expect(res.allAvailable).toBe(false);
  });

  it("a cancelled generation rejects with JobFailedError; bad input with the API's error", async () => {
    const alice = clientFor("alice");
    const bad = { workflow: { "1": { class_type: "NoSuchNode", inputs: {} } } };
    await expect(alice.generateWithComfyUI(bad)).rejects.toMatchObject({ status: 422, code: "invalid_workflow" });
    let cancelling: Promise<unknown> | null = null;
    const pending = alice.generateWithComfyUI(txt2img(5, 150), {
      onProgress: (job) => { cancelling ??= alice.cancelJob(job.jobId); },
    });
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailedError);
    expect((err as JobFailedError).job.state).toBe("cancelled");
    await cancelling;
  });

  it("honours the environment flag and reports an unreachable service as offline", async () => {
    const off = new ComfyFleetClient({ baseUrl: API, enabled: false });
    await expect(off.getQueueStats()).rejects.toBeInstanceOf(ComfyUIDisabledError);
    expect(await off.checkBackendStatus()).toMatchObject({ online: false, status: "disabled" });
    const gone = new ComfyFleetClient({ baseUrl: "http://127.0.0.1:9" });
    expect(await gone.checkBackendStatus()).toMatchObject({ online: false, status: "offline" });
    await expect(clientFor("alice", { getToken: () => "wrong-token-wrong-token" }).getQueueStats())
      .rejects.toMatchObject({ status: 401, code: "unauthorized" });
  });

  it("parses SSE frames as the server writes them", () => {
    expect(parseSseFrame(": keepalive")).toBeNull();
    expect(parseSseFrame('id: 5-0\nevent: progress\ndata: {"state":"running"}')).toEqual({
      id: "5-0", event: "progress", job: { state: "running" },
    });
  });
});
