import { defineConfig } from "vitest/config";

// Run by tests/browser/test_ts_client.py, which starts a real comfyfleet stack and passes its address in
// COMFYFLEET_TEST_API / COMFYFLEET_TEST_TOKENS.
export default defineConfig({
  esbuild: { jsx: "automatic" },
  test: {
    include: ["test/**/*.test.{ts,tsx}"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
    environmentOptions: { jsdom: { url: "http://localhost:3000" } },
  },
});
