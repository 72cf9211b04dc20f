// kvserve through the official OpenAI Node client: completions and chat completions (plain and
// streaming), models.list,
// cached-token usage, response_format json_schema, and errors surfacing as the client's typed exceptions with the server's
// message. run_openai_client.py starts kvserve on stories260K and sets KVSERVE_URL, KVSERVE_MODEL,
// KVSERVE_API_KEY and KVSERVE_EXPECTED (stories260K's expected.json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import OpenAI from 'openai';

const baseURL = `${process.env.KVSERVE_URL}/v1`;
const model = process.env.KVSERVE_MODEL;
const apiKey = process.env.KVSERVE_API_KEY;
const expected = JSON.parse(fs.readFileSync(process.env.KVSERVE_EXPECTED, 'utf8'));
const once = expected.prompt_once_upon_a_time;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });

test('models.list returns the served model with its context length', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].id, model);
  assert.equal(models[0].object, 'model');
  assert.equal(models[0].max_model_len, 512);
});

test('completions.create: greedy text equals the reference continuation', async () => {
  const r = await client.completions.create({
    model, prompt: once.prompt, max_tokens: once.max_tokens, temperature: 0,
  });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].text, once.text);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.prompt_tokens, once.prompt_ids_with_bos.length);
  assert.equal(r.usage.completion_tokens, once.max_tokens);
  assert.equal(r.usage.total_tokens, once.prompt_ids_with_bos.length + once.max_tokens);
});

test('completions.create with stream: chunks concatenate to the same text', async () => {
  const stream = await client.completions.create({
    model, prompt: once.prompt, max_tokens: once.max_tokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  const finishes = [];
  let usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finishes.push(c.finish_reason);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, once.text);
  assert.deepEqual(finishes, ['length']);
  assert.equal(usage.completion_tokens, once.max_tokens);
});

test('a stop string ends the text before it', async () => {
  const r = await client.completions.create({
    model, prompt: once.prompt, max_tokens: once.max_tokens, temperature: 0, stop: [' named'],
  });
  assert.equal(r.choices[0].text, once.text.slice(0, once.text.indexOf(' named')));
  assert.equal(r.choices[0].finish_reason, 'stop');
});

test('a repeated long prompt reports cached tokens', async () => {
  const prompt = 'Once upon a time, there was a little boy named Tim. Tim had a big red ball. '
    + 'He liked to play with his ball in the park with his friends. One day, Tim saw a dog';
  await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0 });
  const r = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0 });
  assert.ok(r.usage.prompt_tokens_details.cached_tokens >= 32,
    JSON.stringify(r.usage));
});

test('400 raises BadRequestError with the server message', async () => {
  await assert.rejects(
    client.completions.create({ model, prompt: once.prompt, max_tokens: 600 }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `got ${e?.constructor?.name}`);
      assert.equal(e.status, 400);
      assert.match(e.message, /maximum context length is 512 tokens/);
      assert.equal(e.code, 'context_length_exceeded');
      assert.equal(e.param, 'max_tokens');
      return true;
    });
  await assert.rejects(
    client.completions.create({ model, prompt: 'x', temperature: -1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'temperature');
});

test('404 raises NotFoundError for an unknown model', async () => {
  await assert.rejects(
    client.completions.create({ model: 'gpt-nonexistent', prompt: 'x', max_tokens: 2 }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, `got ${e?.constructor?.name}`);
      assert.equal(e.status, 404);
      assert.match(e.message, /gpt-nonexistent/);
      return true;
    });
});

test('401 raises AuthenticationError for a wrong key', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError
    && e.status === 401);
});

const messages = [
  { role: 'system', content: 'You are a storyteller.' },
  { role: 'user', content: 'Tell me about a cat.' },
];

test('chat.completions.create: greedy chat equals completions on the rendered prompt', async () => {
  // POST /tokenize with messages is vLLM's extension: not in the client
  const res = await fetch(`${process.env.KVSERVE_URL}/tokenize`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages }),
  });
  assert.equal(res.status, 200);
  const ids = (await res.json()).tokens;
  const c = await client.completions.create({
    model, prompt: ids, max_tokens: 16, temperature: 0, ignore_eos: true,
  });
  const r = await client.chat.completions.create({
    model, messages, max_tokens: 16, temperature: 0, ignore_eos: true,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, model);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, c.choices[0].text);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.prompt_tokens, ids.length);
  assert.equal(r.usage.completion_tokens, 16);
});

test('chat.completions.create with stream: deltas concatenate to the same content', async () => {
  const body = { model, messages, max_completion_tokens: 16, temperature: 0, ignore_eos: true };
  const full = await client.chat.completions.create(body);
  const stream = await client.chat.completions.create({
    ...body, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let role = null;
  const finishes = [];
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      text += c.delta.content ?? '';
      if (c.finish_reason) finishes.push(c.finish_reason);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(role, 'assistant');
  assert.equal(text, full.choices[0].message.content);
  assert.deepEqual(finishes, ['length']);
  assert.equal(usage.completion_tokens, 16);
});

test('chat logprobs come in the chat shape', async () => {
  const r = await client.chat.completions.create({
    model, messages, max_tokens: 3, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  assert.equal(content[0].top_logprobs.length, 2);
});

test('chat tool_choice naming a function not in tools is a BadRequestError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages,
      tool_choice: { type: 'function', function: { name: 'g' } },
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'tool_choice'
      && /not in tools/.test(e.message));
});

test('chat response_format json_schema gives JSON valid under the schema', async () => {
  const schema = {
    type: 'object',
    properties: {
      name: { type: 'string', minLength: 1, maxLength: 12 },
      age: { type: 'integer', minimum: 0, maximum: 120 },
      mood: { enum: ['happy', 'sad'] },
    },
    required: ['name', 'age', 'mood'],
    additionalProperties: false,
  };
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages, max_tokens: 200, temperature: 1, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } },
    });
    assert.equal(r.choices[0].finish_reason, 'stop');
    const v = JSON.parse(r.choices[0].message.content);
    assert.deepEqual(Object.keys(v).sort(), ['age', 'mood', 'name']);
    assert.ok(typeof v.name === 'string' && v.name.length >= 1 && [...v.name].length <= 12);
    assert.ok(Number.isInteger(v.age) && v.age >= 0 && v.age <= 120);
    assert.ok(['happy', 'sad'].includes(v.mood));
  }
});

test('a bad schema is a BadRequestError naming the keyword', async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages, response_format: { type: 'json_schema',
      json_schema: { name: 'x', schema: { type: 'object', patternProperties: {} } } } }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format'
      && /patternProperties/.test(e.message));
});

test('the server still answers after the errors', async () => {
  const r = await client.completions.create({
    model, prompt: once.prompt, max_tokens: once.max_tokens, temperature: 0,
  });
  assert.equal(r.choices[0].text, once.text);
});
