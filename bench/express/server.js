// The Express 5 + Bull 4 baseline for bench/frontdoor.py: the same contract as comfyfleet's
// POST /api/comfyui/generate (the same JSON fields and limits, 422 naming the field, enqueue on a
// Bull queue of the request's priority, 202 with a job id). No dispatch: jobs only queue.
//   REDIS_URL=redis://127.0.0.1:6379 PORT=3000 WORKERS=2 node server.js
"use strict";
const cluster = require("node:cluster");
const crypto = require("node:crypto");

const WORKERS = Number(process.env.WORKERS || 1);
const PORT = Number(process.env.PORT || 3000);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";

const TEMPLATES = new Set(["txt2img", "weightless"]);
const POOL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
// GenerateParams: [kind, min, max, extra] per field, as comfyfleet/jobs/params.py declares them.
const PARAMS = {
  prompt: ["str", 0, 10000], negativePrompt: ["str", 0, 10000], negative_prompt: ["str", 0, 10000],
  seed: ["int", 0, 2 ** 53 - 1], steps: ["int", 1, 150], cfg: ["num", 0, 30],
  width: ["int", 64, 4096, 8], height: ["int", 64, 4096, 8], batch_size: ["int", 1, 16],
  sampler_name: ["str", 0, 64], scheduler: ["str", 0, 64], denoise: ["num", 0, 1],
  checkpoint: ["str", 0, 255], lora: ["str", 0, 255], lora_strength: ["num", -10, 10],
  image: ["str", 0, 255], filename_prefix: ["str", 0, 128],
};
const FIELDS = new Set(["workflow", "template", "params", "priority", "pool", "timeoutSeconds", "timeout_seconds",
  "idempotencyKey", "idempotency_key", "inputImages", "input_images"]);

class Invalid extends Error {
  constructor(field, message) { super(`${field}: ${message}`); this.field = field; }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const pick = (body, a, b) => (body[a] !== undefined ? body[a] : body[b]);

function intIn(value, field, min, max, multiple) {
  if (!Number.isInteger(value)) throw new Invalid(field, "must be an integer");
  if (value < min || value > max) throw new Invalid(field, `must be between ${min} and ${max}`);
  if (multiple && value % multiple !== 0) throw new Invalid(field, `must be a multiple of ${multiple}`);
}

function validate(body) {
  if (!isObject(body)) throw new Invalid("body", "must be a JSON object");
  for (const key of Object.keys(body)) if (!FIELDS.has(key)) throw new Invalid(key, "extra fields not permitted");
  const workflow = body.workflow === undefined ? null : body.workflow;
  const template = body.template === undefined ? null : body.template;
  if ((workflow === null) === (template === null)) throw new Invalid("body", "give exactly one of workflow or template");
  if (workflow !== null && !isObject(workflow)) throw new Invalid("workflow", "must be an object");
  if (template !== null) {
    if (typeof template !== "string" || template.length > 64) throw new Invalid("template", "must be a string of at most 64");
    if (!TEMPLATES.has(template)) throw new Invalid("template", `unknown template '${template}'`);
  }
  const params = body.params === undefined ? {} : body.params;
  if (!isObject(params)) throw new Invalid("params", "must be an object");
  for (const [key, value] of Object.entries(params)) {
    const spec = PARAMS[key];
    const field = `params.${key}`;
    if (!spec) throw new Invalid(field, "extra fields not permitted");
    if (value === null) continue;
    const [kind, min, max, extra] = spec;
    if (kind === "str") {
      if (typeof value !== "string" || value.length > max) throw new Invalid(field, `must be a string of at most ${max}`);
      if (key === "filename_prefix" && !/^[\w\-./]+$/.test(value)) throw new Invalid(field, "invalid characters");
    } else if (kind === "int") {
      intIn(value, field, min, max, extra);
    } else if (typeof value !== "number" || value < min || value > max) {
      throw new Invalid(field, `must be a number between ${min} and ${max}`);
    }
  }
  const priority = body.priority === undefined ? 5 : body.priority;
  intIn(priority, "priority", 1, 10);
  const pool = body.pool === undefined ? null : body.pool;
  if (pool !== null && (typeof pool !== "string" || pool.length > 63 || !POOL.test(pool))) {
    throw new Invalid("pool", "must be a DNS label");
  }
  const timeout = pick(body, "timeoutSeconds", "timeout_seconds");
  if (timeout !== undefined && timeout !== null) intIn(timeout, "timeoutSeconds", 5, 86400);
  const idem = pick(body, "idempotencyKey", "idempotency_key");
  if (idem !== undefined && idem !== null && (typeof idem !== "string" || idem.length < 1 || idem.length > 128)) {
    throw new Invalid("idempotencyKey", "must be a string of 1 to 128");
  }
  const images = pick(body, "inputImages", "input_images") || {};
  if (!isObject(images) || Object.keys(images).length > 8) throw new Invalid("inputImages", "at most 8 images");
  return { workflow, template, params, priority, pool, timeoutSeconds: timeout || null };
}

function serve() {
  const express = require("express");
  const Queue = require("bull");
  // One Bull queue per priority, like comfyfleet's <prefix>-p10 .. -p01 queues.
  const queues = new Map();
  const queueFor = (priority) => {
    if (!queues.has(priority)) queues.set(priority, new Queue(`generate-p${String(priority).padStart(2, "0")}`, REDIS_URL));
    return queues.get(priority);
  };
  const app = express();
  app.use(express.json({ limit: "32mb" }));
  app.post("/api/comfyui/generate", async (req, res) => {
    let job;
    try {
      job = validate(req.body);
    } catch (err) {
      if (err instanceof Invalid) {
        return res.status(422).json({ error: { code: "validation_error", message: err.message, details: [{ field: err.field, message: err.message }] } });
      }
      throw err;
    }
    const jobId = crypto.randomUUID().replace(/-/g, "");
    const now = new Date().toISOString();
    await queueFor(job.priority).add({ ...job, owner: "anonymous", createdAt: now }, { jobId, removeOnComplete: true });
    res.status(202).location(`/api/comfyui/job/${jobId}`).json({
      jobId, owner: "anonymous", state: "queued", priority: job.priority, pool: job.pool, template: job.template,
      progress: { value: 0, max: 0, node: null, percent: 0 }, attempts: 0, maxAttempts: 3, error: null,
      outputs: [], worker: null, source: "api", cancelRequested: false, createdAt: now, updatedAt: now,
      startedAt: null, finishedAt: null,
    });
  });
  app.use((err, req, res, next) => {
    if (err.type === "entity.parse.failed") return res.status(400).json({ error: { code: "bad_request", message: "body: invalid JSON" } });
    next(err);
  });
  app.listen(PORT, "127.0.0.1");
}

if (WORKERS > 1 && cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on("exit", (worker, code) => { console.error(`worker ${worker.process.pid} exited ${code}`); process.exit(1); });
} else {
  serve();
}
