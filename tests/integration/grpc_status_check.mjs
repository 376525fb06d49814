// Checks tpserve's gRPC status codes and google.rpc.Status details (docs/API.md, "Errors") from a client no
// one here wrote: @grpc/grpc-js with @grpc/proto-loader, the details decoded by protobufjs (proto-loader's own
// dependency) from the `grpc-status-details-bin` trailer. Run by grpc_status_test.cc, which starts two servers
// and passes, in the environment:
//   GRPC_JS_DIR   node_modules folder holding @grpc/grpc-js and @grpc/proto-loader
//   PROTO_DIR     the repository's proto/ folder (tpserve/v1/generation.proto, google/rpc/*.proto)
//   ADDR          server 1: --max_num_seqs=1 --max_queued_requests=1 --drain_timeout=0
//   SERVER_PID    server 1's pid
//   LOST_ADDR     server 2: --restart_workers=false --recovery_timeout=1
//   LOST_WORKER_PIDS  server 2's worker pids, comma-separated
// Prints one line per check; exits 1 on the first failure. The last check drains server 1 (SIGTERM).
import { createRequire } from "node:module";
import { join } from "node:path";
import assert from "node:assert/strict";

const env = process.env;
const require = createRequire(join(env.GRPC_JS_DIR, "noop.js"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const loadOptions = { keepCase: true, longs: Number, enums: String, defaults: true, includeDirs: [env.PROTO_DIR] };
const api = grpc.loadPackageDefinition(protoLoader.loadSync("tpserve/v1/generation.proto", loadOptions)).tpserve.v1;

// google.rpc types, parsed from the same vendored files the server compiles.
const root = new protobuf.Root();
root.resolvePath = (_origin, target) =>
  target.startsWith("google/protobuf/") ? target : join(env.PROTO_DIR, target);
root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
root.resolveAll();
const Status = root.lookupType("google.rpc.Status");

function details(err) {
  const bin = err.metadata?.get("grpc-status-details-bin") ?? [];
  assert.equal(bin.length, 1, `one grpc-status-details-bin trailer (code ${err.code}: ${err.details})`);
  const status = Status.decode(bin[0]);
  assert.equal(status.code, err.code, "google.rpc.Status.code equals the call's status");
  assert.equal(status.message, err.details, "google.rpc.Status.message equals the call's message");
  const out = {};
  for (const any of status.details) {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    out[name] = root.lookupType(name).toObject(root.lookupType(name).decode(any.value), { longs: Number });
  }
  return out;
}

function expectReason(d, reason) {
  assert.ok(d["google.rpc.ErrorInfo"], "ErrorInfo present");
  assert.equal(d["google.rpc.ErrorInfo"].reason, reason);
  assert.equal(d["google.rpc.ErrorInfo"].domain, "tpserve.v1");
}

function expectRetry(d) {
  const r = d["google.rpc.RetryInfo"];
  assert.ok(r && r.retry_delay, "RetryInfo with retry_delay present");
  assert.ok((r.retry_delay.seconds ?? 0) * 1e9 + (r.retry_delay.nanos ?? 0) > 0, "positive retry delay");
}

function expectField(d, field) {
  const b = d["google.rpc.BadRequest"];
  assert.ok(b, "BadRequest present");
  assert.equal(b.field_violations.length, 1);
  assert.equal(b.field_violations[0].field, field);
  assert.ok(b.field_violations[0].description.length > 0, "the violation says why");
}

function unary(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + 60000 }, (err, resp) => resolve({ err, resp }));
  });
}

// Streams a request; resolves with {messages, err} when the stream ends. onFirst runs after the first message.
function stream(client, request, onFirst) {
  return new Promise((resolve) => {
    const messages = [];
    const call = client.GenerateStream(request, { deadline: Date.now() + 120000 });
    call.on("data", (m) => {
      messages.push(m);
      if (messages.length === 1 && onFirst) onFirst();
    });
    call.on("error", (err) => resolve({ messages, err }));
    call.on("end", () => resolve({ messages, err: null }));
  });
}

const greedy = (prompt, n) => ({
  prompt: Buffer.from(prompt),
  sampling: { temperature: 0 },
  stopping: { max_new_tokens: n, ignore_eos: true },
});

// The last message of a stream that ended in error: what was generated, usage, FINISH_REASON_ERROR.
function expectErrorTail(messages) {
  const last = messages[messages.length - 1];
  assert.ok(last, "a last message before the error status");
  assert.equal(last.finish_reason, "FINISH_REASON_ERROR");
  const ids = messages.reduce((n, m) => n + m.token_ids.length, 0);
  assert.equal(last.usage.completion_tokens, ids, "usage counts every id the stream delivered");
  assert.ok(last.usage.prompt_tokens > 0);
}

const checks = [];
const check = (name, fn) => checks.push([name, fn]);
const client = new api.Generation(env.ADDR, grpc.credentials.createInsecure());
const lost = new api.Generation(env.LOST_ADDR, grpc.credentials.createInsecure());

check("Tokenize without input: INVALID_ARGUMENT naming input", async () => {
  const { err } = await unary(client, "Tokenize", {});
  assert.ok(err, "an error");
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  const d = details(err);
  expectField(d, "input");
  expectReason(d, "INVALID_ARGUMENT");
});

check("a bad field: INVALID_ARGUMENT with BadRequest.FieldViolation", async () => {
  const req = greedy("Once upon a time", 4);
  req.sampling.top_p = 2;
  const { err } = await unary(client, "Generate", req);
  assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
  const d = details(err);
  expectField(d, "sampling.top_p");
  expectReason(d, "INVALID_ARGUMENT");
  assert.equal(d["google.rpc.RetryInfo"], undefined, "no RetryInfo: the same request fails again");
});

check("a prompt over the context: INVALID_ARGUMENT, CONTEXT_LENGTH_EXCEEDED", async () => {
  const req = greedy("Once upon a time", 100000);
  const { err } = await unary(client, "Generate", req);
  assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
  const d = details(err);
  expectField(d, "stopping.max_new_tokens");
  expectReason(d, "CONTEXT_LENGTH_EXCEEDED");
});

// Server 1 (one running, one waiting at most) gets 1 + 4 long streams at once: at least two of the four find
// the queue full, whatever finished meanwhile.
check("a full queue: RESOURCE_EXHAUSTED, QUEUE_FULL, RetryInfo", async () => {
  let started;
  const first = new Promise((r) => (started = r));
  const all = [stream(client, greedy("Once upon a time", 450), () => started())];
  await first;
  for (let i = 0; i < 4; ++i) all.push(stream(client, greedy("Lily and Tom", 450)));
  const ended = await Promise.all(all);
  const refused = ended.filter((e) => e.err?.code === grpc.status.RESOURCE_EXHAUSTED);
  assert.ok(refused.length >= 2, `at least 2 of 4 refused, got ${refused.length}`);
  for (const { err, messages } of refused) {
    assert.equal(messages.length, 0, "a refused request streams nothing");
    const d = details(err);
    expectReason(d, "QUEUE_FULL");
    expectRetry(d);
  }
  for (const { err } of ended) assert.ok(err === null || err.code === grpc.status.RESOURCE_EXHAUSTED, err?.details);
});

check("drain timeout: an in-flight stream ends UNAVAILABLE, DRAINING, after a FINISH_REASON_ERROR message", async () => {
  // --drain_timeout=0: SIGTERM after the first of 450 tokens ends the stream at once.
  const { messages, err } = await stream(client, greedy("Once upon a time", 450), () =>
    process.kill(Number(env.SERVER_PID), "SIGTERM"));
  assert.equal(err?.code, grpc.status.UNAVAILABLE, err?.details);
  const d = details(err);
  expectReason(d, "DRAINING");
  expectRetry(d);
  expectErrorTail(messages);
  assert.ok(messages[messages.length - 1].usage.completion_tokens >= 1);
});

check("a lost worker group: UNAVAILABLE, WORKER_GROUP_LOST, RetryInfo", async () => {
  for (const pid of env.LOST_WORKER_PIDS.split(",")) process.kill(Number(pid), "SIGKILL");
  // Held for --recovery_timeout=1, then ended by the server.
  const { messages, err } = await stream(lost, greedy("Once upon a time", 8));
  assert.equal(err?.code, grpc.status.UNAVAILABLE, err?.details);
  const d = details(err);
  expectReason(d, "WORKER_GROUP_LOST");
  expectRetry(d);
  expectErrorTail(messages);
});

for (const [name, fn] of checks) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    console.log(`FAIL ${name}\n${e.stack ?? e}`);
    process.exit(1);
  }
}
client.close();
lost.close();
process.exit(0);
