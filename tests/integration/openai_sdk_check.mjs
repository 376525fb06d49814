// Drives a running `tpserve serve` through the official OpenAI JavaScript SDK (npm `openai`), a client no one
// here wrote. Run by openai_sdk_test.cc, which starts the server and passes, in the environment:
//   OPENAI_SDK_DIR  node_modules folder holding `openai`
//   BASE_URL        http://127.0.0.1:<http_port>/v1     METRICS_URL  http://127.0.0.1:<metrics_port>/metrics
//   API_KEY, MODEL, SERVER_PID
//   EXPECTED_FILE   JSON {chat: {text, prompt_tokens}, completion: {text, prompt_tokens}}: the gRPC API's greedy
//                   answers to the same requests (CHAT_MESSAGES, PROMPT, MAX_TOKENS below)
// Prints one line per check; exits 1 on the first failure. The last check drains the server (SIGTERM).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import assert from "node:assert/strict";

const env = process.env;
const require = createRequire(join(env.OPENAI_SDK_DIR, "noop.js"));
const sdk = require("openai");
const OpenAI = sdk.OpenAI ?? sdk.default ?? sdk;

const expected = JSON.parse(readFileSync(env.EXPECTED_FILE, "utf8"));
const MODEL = env.MODEL;
const PROMPT = "Once upon a time";
const CHAT_MESSAGES = [{ role: "user", content: "Tell me a story about a cat." }];
const MAX_TOKENS = 24;

const client = new OpenAI({ baseURL: env.BASE_URL, apiKey: env.API_KEY, maxRetries: 0, timeout: 60000 });

async function metrics() {
  const r = await fetch(env.METRICS_URL);
  const text = await r.text();
  const get = (name, labels = "") => {
    for (const line of text.split("\n")) {
      if (line.startsWith("#")) continue;
      const sp = line.lastIndexOf(" ");
      const key = line.slice(0, sp);
      if (key.startsWith(name + "{") && key.includes(labels)) return Number(line.slice(sp + 1));
    }
    return NaN;
  };
  return get;
}

// Polls until pred(metrics) holds; bounded, fails with `what`.
async function waitMetrics(pred, what, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (pred(await metrics())) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function expectError(promise, status, check = () => {}) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an APIError, got ${e}`);
    assert.equal(e.status, status, `HTTP status (${e.message})`);
    assert.ok(typeof e.error?.message === "string" && e.error.message.length > 0, "error.message");
    check(e);
    return e;
  }
  throw new Error(`expected HTTP ${status}, the call succeeded`);
}

const checks = [];
const check = (name, fn) => checks.push([name, fn]);

check("models.list names the served model", async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [MODEL]);
});

check("chat, greedy: the gRPC API's text", async () => {
  const r = await client.chat.completions.create({ model: MODEL, messages: CHAT_MESSAGES, max_tokens: MAX_TOKENS, temperature: 0 });
  assert.equal(r.object, "chat.completion");
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, MODEL);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(r.choices[0].message.content, expected.chat.text);
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.prompt_tokens, expected.chat.prompt_tokens);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.equal(typeof r.usage.prompt_tokens_details.cached_tokens, "number");
});

check("completions, greedy: the gRPC API's text", async () => {
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 });
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0].text, expected.completion.text);
  assert.equal(r.usage.prompt_tokens, expected.completion.prompt_tokens);
});

// The server speculates (--speculative-method ngram): a long greedy story repeats itself, so proposals are
// verified and the final usage carries tpserve's usage.speculative counts through the SDK's response object.
check("completions, greedy, long: usage.speculative", async () => {
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 150, temperature: 0, ignore_eos: true });
  const sp = r.usage.speculative;
  assert.ok(sp, `no usage.speculative in ${JSON.stringify(r.usage)}`);
  assert.ok(sp.num_drafts > 0, "proposals verified");
  assert.ok(sp.num_accepted_tokens <= sp.num_draft_tokens, "accepted <= proposed");
  assert.ok(sp.num_accepted_tokens < r.usage.completion_tokens, "the model adds a token to every verify step");
});

check("chat, streaming with include_usage: same text, then usage, then [DONE]", async () => {
  const stream = await client.chat.completions.create({
    model: MODEL, messages: CHAT_MESSAGES, max_tokens: MAX_TOKENS, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = "", chunks = 0, usage = null, finish = null, role = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      text += c.delta.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
      ++chunks;
    }
  }
  assert.equal(role, "assistant");
  assert.equal(text, expected.chat.text);
  assert.ok(chunks > 2, `one chunk per engine step, got ${chunks}`);
  assert.ok(["stop", "length"].includes(finish));
  assert.ok(usage && usage.completion_tokens > 0 && usage.prompt_tokens === expected.chat.prompt_tokens);
});

check("completions, streaming: same text", async () => {
  const stream = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0, stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices.map((c) => c.text).join("");
  assert.equal(text, expected.completion.text);
});

check("stop string: text ends before it, finish_reason stop", async () => {
  const words = expected.completion.text.split(" ").filter((w) => w.length > 2);
  assert.ok(words.length >= 3, "greedy text too short to pick a stop string");
  const stop = " " + words[2];
  const want = expected.completion.text.slice(0, expected.completion.text.indexOf(stop));
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0, stop: [stop, "zzzz"] });
  assert.equal(r.choices[0].text, want);
  assert.equal(r.choices[0].finish_reason, "stop");
});

check("n = 2: two choices, one seed stream each, prompt blocks shared through the prefix cache", async () => {
  const before = (await metrics())("tpserve:prefix_cache_hits_total");
  const prompt = PROMPT + " there was a very small and very old house in the middle of a big green forest";
  const ask = () => client.completions.create({ model: MODEL, prompt, max_tokens: 16, temperature: 1, seed: 1234, n: 2 });
  const a = await ask();
  assert.deepEqual(a.choices.map((c) => c.index).sort(), [0, 1]);
  const hits = (await metrics())("tpserve:prefix_cache_hits_total") - before;
  assert.ok(hits >= 16, `choice 1 should read choice 0's full prompt blocks from the cache (hits ${hits})`);
  assert.notEqual(a.choices[0].text, a.choices[1].text, "choices sample with different seeds");
  const b = await ask();
  assert.deepEqual(b.choices.map((c) => c.text), a.choices.map((c) => c.text), "same seed, same choices");
});

check("chat logprobs with top_logprobs", async () => {
  const r = await client.chat.completions.create({
    model: MODEL, messages: CHAT_MESSAGES, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(t.logprob <= 0);
    // Greedy: the sampled token is the most likely one.
    assert.equal(t.logprob, Math.max(...t.top_logprobs.map((x) => x.logprob)));
    assert.deepEqual(t.bytes, [...Buffer.from(t.token, "utf8")]);
  }
});

check("completions logprobs", async () => {
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 8);
  assert.equal(lp.token_logprobs.length, 8);
  assert.equal(lp.top_logprobs.length, 8);
  assert.equal(Object.keys(lp.top_logprobs[0]).length, 2);
  assert.equal(lp.text_offset[0], 0);
});

check("400 names the bad field", async () => {
  const e = await expectError(client.chat.completions.create({ model: MODEL, messages: CHAT_MESSAGES, max_tokens: 4, temperature: -1 }), 400);
  assert.equal(e.param, "temperature");
  assert.equal(e.type, "invalid_request_error");
  const e2 = await expectError(client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 4, top_p: "x" }), 400);
  assert.equal(e2.param, "top_p");
  await expectError(client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 100000 }), 400, (e) => assert.equal(e.param, "max_tokens"));
});

check("401 without the API key, and with a wrong one", async () => {
  const anon = new OpenAI({ baseURL: env.BASE_URL, apiKey: "wrong-key", maxRetries: 0 });
  await expectError(anon.models.list(), 401);
  await expectError(anon.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 4 }), 401);
  const r = await fetch(env.BASE_URL + "/completions", { method: "POST", body: JSON.stringify({ prompt: PROMPT }) });
  assert.equal(r.status, 401);
});

check("404 model_not_found", async () => {
  await expectError(client.completions.create({ model: "gpt-4o", prompt: PROMPT, max_tokens: 4 }), 404, (e) => {
    assert.equal(e.code, "model_not_found");
    assert.equal(e.param, "model");
  });
});

check("429 with Retry-After when the queue is full", async () => {
  // A burst of 12 against --max-queued-requests=2: the queue holds requests until the engine admits them
  // (up to --max-num-seqs=4 at a time), so a few get in and the rest are refused at once.
  const calls = Array.from({ length: 12 }, () =>
    client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 400, temperature: 0, ignore_eos: true })
      .then(() => null, (e) => e));
  const results = await Promise.all(calls);
  const refused = results.filter((e) => e !== null);
  assert.ok(refused.length >= 1, "some requests should be refused");
  for (const e of refused) {
    assert.equal(e.status, 429, `${e.message}`);
    assert.equal(e.code, "queue_full");
    assert.ok(Number(e.headers["retry-after"]) >= 1, "Retry-After");
  }
  assert.ok(results.filter((e) => e === null).length >= 2, "the admitted requests finish");
});

check("a stream abandoned mid-way is cancelled and its KV freed", async () => {
  const before = (await metrics())('tpserve:request_success_total', 'finished_reason="abort"') || 0;
  const stream = await client.chat.completions.create({
    model: MODEL, messages: CHAT_MESSAGES, max_tokens: 400, temperature: 0, stream: true, n: 2,
    ignore_eos: true,
  });
  let n = 0;
  for await (const chunk of stream) {
    if (++n === 4) break;  // leaving the loop aborts the HTTP request: the SDK closes the connection
  }
  await waitMetrics((m) => m("tpserve:kv_cache_usage_perc") === 0 && m("tpserve:num_requests_running") === 0,
                    "KV usage back to 0 after the abandoned stream");
  const after = (await metrics())('tpserve:request_success_total', 'finished_reason="abort"');
  assert.ok(after - before >= 1, `the abandoned stream's sequences end as abort (${before} -> ${after})`);
});

check("503 while draining (SIGTERM), and in-flight requests still finish", async () => {
  // Two long requests (the queue holds two) keep the drain open while new requests are refused.
  const inflight = Array.from({ length: 2 }, () =>
    client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 480, temperature: 0, ignore_eos: true }));
  await waitMetrics((m) => m("tpserve:num_requests_running") >= 1, "requests running");
  process.kill(Number(env.SERVER_PID), "SIGTERM");
  // Requests sent before the signal is handled still succeed; from the drain on they get 503.
  const end = Date.now() + 10000;
  let refused = null;
  while (refused === null) {
    if (Date.now() > end) throw new Error("no 503 within 10 s of SIGTERM");
    try {
      await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 1 });
    } catch (e) {
      refused = e;
    }
  }
  assert.ok(refused instanceof OpenAI.APIError, `expected an APIError, got ${refused}`);
  assert.equal(refused.status, 503, refused.message);
  assert.equal(refused.code, "service_unavailable");
  assert.ok(Number(refused.headers["retry-after"]) >= 1);
  for (const r of await Promise.all(inflight)) assert.equal(r.usage.completion_tokens, 480);
});

for (const [name, fn] of checks) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.stack ?? e}`);
    process.exit(1);
  }
}
console.log(`all ${checks.length} checks passed`);
