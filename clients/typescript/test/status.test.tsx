// @vitest-environment jsdom
import { cleanup, configure, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { ComfyFleetClient, type JobEvent } from "../src/client.js";
import { ComfyUIStatus } from "../src/react/ComfyUIStatus.js";
import { API, clientFor, expectOrderedWithoutRepeats, txt2img } from "./env.js";

afterEach(cleanup);
// The machine may be busy: give the real API time to answer (waitFor still polls every 50 ms).
configure({ asyncUtilTimeout: 15_000 });

describe("ComfyUIStatus against a real API", () => {
  it("shows the service online, the pool and the queue, and details on demand", async () => {
    const client = clientFor("alice");
    const workers = await client.getWorkerStats();
    render(<ComfyUIStatus client={client} />);
    await waitFor(() => expect(screen.getByRole("status").textContent).toBe("online"));
    expect(screen.getByTestId("ready").textContent).toBe(String(workers.ready));
    const queue = await client.getQueueStats();
    expect(screen.getByTestId("completed").textContent).toBe(String(queue.completed));
    expect(screen.queryByRole("table")).toBeNull();
    fireEvent.click(screen.getByRole("button", { name: "Show details" }));
    const table = screen.getByRole("table", { name: "workers" });
    expect(within(table).getAllByRole("row")).toHaveLength(workers.workers.length + 1);
    expect(within(table).getByText(workers.workers[0].id)).toBeTruthy();
  });

  it("refreshes by itself: a finished job shows up in Completed", async () => {
    const client = clientFor("alice");
    render(<ComfyUIStatus client={client} refreshIntervalMs={200} />);
    await waitFor(() => expect(screen.getByRole("status").textContent).toBe("online"));
    const before = Number(screen.getByTestId("completed").textContent);
    await client.generateWithComfyUI(txt2img(21, 2));
    await waitFor(() => expect(Number(screen.getByTestId("completed").textContent)).toBeGreaterThan(before));
  });

  it("shows offline when the service cannot be reached", async () => {
    render(<ComfyUIStatus client={new ComfyFleetClient({ baseUrl: "http://127.0.0.1:9" })} />);
    await waitFor(() => expect(screen.getByRole("status").textContent).toBe("offline"));
    expect(screen.queryByTestId("ready")).toBeNull();
  });
});

describe("progress over a browser WebSocket (jsdom's, with an Origin header)", () => {
  it("follows a job with the job's token in the URL and never the bearer token", async () => {
    const urls: string[] = [];
    const Spy = class extends WebSocket {
      constructor(url: string | URL) {
        urls.push(String(url));
        super(url);
      }
    };
    const client = clientFor("alice", { WebSocket: Spy as typeof WebSocket });
    const events: JobEvent[] = [];
    const job = await client.generateWithComfyUI(txt2img(22, 6), { transport: "websocket", onEvent: (e) => events.push(e) });
    expect(job.state).toBe("succeeded");
    expect(events[0].event).toBe("state");
    expect(events.some((e) => e.event === "progress")).toBe(true);
    expect(urls.length).toBeGreaterThanOrEqual(1);
    expect(urls[0]).toMatch(/^ws:\/\/.*\/api\/comfyui\/ws\?token=[^&]+&jobId=/);
    expect(urls.join(" ")).not.toContain(process.env.COMFYFLEET_TEST_TOKENS ? JSON.parse(process.env.COMFYFLEET_TEST_TOKENS).alice : "x");
    expect(API).toBeTruthy();
  });

  it("reconnects with lastEventId when the server ends the stream, losing nothing", async () => {
    const urls: string[] = [];
    const Spy = class extends WebSocket {
      constructor(url: string | URL) {
        urls.push(String(url));
        super(url);
      }
    };
    const events: JobEvent[] = [];
    const job = await clientFor("alice", { WebSocket: Spy as typeof WebSocket })
      .generateWithComfyUI(txt2img(23, 80), { transport: "websocket", onEvent: (e) => events.push(e) });
    expect(job.state).toBe("succeeded");
    expect(urls.length).toBeGreaterThanOrEqual(2);
    expect(urls[1]).toContain("lastEventId=");
    expectOrderedWithoutRepeats(events, 80);
  });
});
