/** The real API the tests talk to (started by tests/browser/test_ts_client.py). */
import { expect } from "vitest";
import { ComfyFleetClient, type ClientOptions, type JobEvent } from "../src/client.js";

export const API = process.env.COMFYFLEET_TEST_API ?? "";
const tokens = JSON.parse(process.env.COMFYFLEET_TEST_TOKENS ?? "{}") as Record<string, string>;
if (!API || !tokens.alice) {
  throw new Error("run through tests/browser/test_ts_client.py (it starts the API and sets COMFYFLEET_TEST_API)");
}
export const TOKENS = tokens as { alice: string; bob: string; admin: string };

export function clientFor(user: keyof typeof TOKENS, extra: Partial<ClientOptions> = {}): ComfyFleetClient {
  return new ComfyFleetClient({ baseUrl: API, getToken: async () => TOKENS[user], ...extra });
}

export const txt2img = (seed: number, steps = 4) => ({
  template: "txt2img",
  params: { seed, steps, prompt: "a red fox" },
});

/** Event ids strictly increasing (none twice), sampler steps never going back and reaching `steps`. */
export function expectOrderedWithoutRepeats(events: JobEvent[], steps: number): void {
  const keys = events.map((e) => e.id!.split("-").map(Number));
  for (let i = 1; i < keys.length; i++) {
    const [a, b] = [keys[i - 1], keys[i]];
    expect(b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]), `event ${i} comes after event ${i - 1}`).toBe(true);
  }
  const values = events.filter((e) => e.job.progress.node === "3").map((e) => e.job.progress.value);
  expect(values).toEqual([...values].sort((x, y) => x - y));
  expect(Math.max(...values)).toBe(steps);
}
