/** The real API the tests talk to (started by tests/browser/test_ts_client.py). */
import { ComfyFleetClient, type ClientOptions } from "../src/client.js";

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
