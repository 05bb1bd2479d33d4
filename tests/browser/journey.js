// Kapal's customer journey from a browser, over grpc-web, with nothing but the platform: protobuf
// encoded and decoded by hand, grpc-web frames by hand, fetch() and a streamed response body.
//
// The gateway's URL comes from the `gateway` query parameter; the page is served from another
// origin, so every call is a cross-origin request the gateway's CORS answers must allow.
// Outcome: document.title becomes "PASS" or "FAIL: <reason>", and #result holds a JSON summary
// (read by run.mjs). Secrets (the session token, the instance password) are never written out.

const STATUS = {
  OK: 0, CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, NOT_FOUND: 5,
  FAILED_PRECONDITION: 9, UNAUTHENTICATED: 16,
};
const INSTANCE = { READY: 3, DELETED: 7, FAILED: 8 };
const INSTANCE_NAMES = [
  'UNSPECIFIED', 'PENDING', 'PROVISIONING', 'READY', 'DEGRADED', 'SUSPENDED', 'DELETING',
  'DELETED', 'FAILED',
];
const ORDER_COMPLETED = 2;
const ORDER_FAILED = 3;
const WATCH_TIMEOUT_MS = 120_000;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------------------------
// Protobuf (proto3 wire format), just what these messages need.

/** Appends `n` (a non-negative integer, below 2^53) as a varint. */
function pushVarint(out, n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`cannot encode ${n} as a varint`);
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
}

/**
 * Encodes a message given as {fieldNumber: value}: strings and Uint8Arrays (sub-messages, bytes)
 * as length-delimited fields, numbers and booleans as varints. Default values (proto3) are left
 * out, as any encoder does.
 */
function encode(fields) {
  const out = [];
  for (const [key, value] of Object.entries(fields)) {
    const field = Number(key);
    if (value === '' || value === 0 || value === false || value == null) continue;
    if (typeof value === 'string' || value instanceof Uint8Array) {
      const bytes = typeof value === 'string' ? utf8.encode(value) : value;
      pushVarint(out, field * 8 + 2);
      pushVarint(out, bytes.length);
      for (const b of bytes) out.push(b);
    } else if (typeof value === 'number' || typeof value === 'boolean') {
      pushVarint(out, field * 8);
      pushVarint(out, Number(value));
    } else {
      throw new Error(`field ${field}: cannot encode ${typeof value}`);
    }
  }
  return Uint8Array.from(out);
}

/** Reads a varint at `pos`; returns [value as BigInt, next position]. */
function readVarint(bytes, pos) {
  let value = 0n;
  for (let shift = 0n; shift < 70n; shift += 7n) {
    if (pos >= bytes.length) throw new Error('truncated varint');
    const b = bytes[pos++];
    value |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [value, pos];
  }
  throw new Error('varint longer than 10 bytes');
}

/**
 * Decodes any message generically into {fieldNumber: [values]}: varints as numbers (BigInt when
 * beyond 2^53), length-delimited fields as Uint8Array (strings and sub-messages alike: the
 * caller knows which), fixed32/fixed64 as their raw bytes.
 */
function decode(bytes) {
  const fields = {};
  let pos = 0;
  while (pos < bytes.length) {
    let key;
    [key, pos] = readVarint(bytes, pos);
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (field === 0) throw new Error('field number 0');
    let value;
    switch (wire) {
      case 0: {
        let v;
        [v, pos] = readVarint(bytes, pos);
        value = v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
        break;
      }
      case 1:
      case 5: {
        const size = wire === 1 ? 8 : 4;
        if (pos + size > bytes.length) throw new Error(`field ${field}: truncated fixed value`);
        value = bytes.subarray(pos, pos + size);
        pos += size;
        break;
      }
      case 2: {
        let len;
        [len, pos] = readVarint(bytes, pos);
        const end = pos + Number(len);
        if (end > bytes.length) throw new Error(`field ${field}: length beyond the message`);
        value = bytes.subarray(pos, end);
        pos = end;
        break;
      }
      default:
        throw new Error(`field ${field}: unsupported wire type ${wire}`);
    }
    (fields[field] ??= []).push(value);
  }
  return fields;
}

// Accessors on a decoded message (proto3: the last value wins, absent means the default).
const last = (m, f) => (m?.[f] ? m[f][m[f].length - 1] : undefined);
const str = (m, f) => { const v = last(m, f); return v === undefined ? '' : fromUtf8.decode(v); };
const num = (m, f) => last(m, f) ?? 0;
const sub = (m, f) => { const v = last(m, f); return v === undefined ? null : decode(v); };
const subs = (m, f) => (m?.[f] ?? []).map(decode);

// ---------------------------------------------------------------------------------------------
// grpc-web (binary, application/grpc-web+proto).

class GrpcError extends Error {
  constructor(code, message, via) {
    super(`gRPC status ${code}: ${message}`);
    this.code = code;
    this.grpcMessage = message;
    this.via = via;
  }
}

/** One data frame: flag 0x00, 4-byte big-endian length, the message. */
function dataFrame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

/** Splits a byte stream into frames as bytes arrive, in chunks of any size. */
class FrameReader {
  constructor() { this.buf = new Uint8Array(0); }

  /** Adds a chunk; returns the frames it completed: [{trailer: bool, payload}]. */
  push(chunk) {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    const frames = [];
    let pos = 0;
    while (joined.length - pos >= 5) {
      const flag = joined[pos];
      const len = new DataView(joined.buffer, joined.byteOffset + pos + 1, 4).getUint32(0);
      if (joined.length - pos - 5 < len) break;
      if (flag & 0x01) throw new Error('compressed frame, but no compression was asked for');
      frames.push({ trailer: (flag & 0x80) !== 0, payload: joined.slice(pos + 5, pos + 5 + len) });
      pos += 5 + len;
    }
    this.buf = joined.slice(pos);
    return frames;
  }

  get pending() { return this.buf.length; }
}

/** A trailer frame's payload: HTTP/1-style "name: value\r\n" lines. */
function parseTrailers(payload) {
  const out = {};
  for (const line of fromUtf8.decode(payload).split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return out;
}

function grpcMessage(raw) {
  if (!raw) return '';
  try { return decodeURIComponent(raw); } catch { return raw; }
}

/** The call's status: from the trailer frame, or from the headers (a trailers-only answer). */
function statusOf(trailers, headers) {
  if (trailers && trailers['grpc-status'] !== undefined) {
    return { code: Number(trailers['grpc-status']), message: grpcMessage(trailers['grpc-message']), via: 'trailer frame' };
  }
  const h = headers.get('grpc-status');
  if (h !== null) {
    return { code: Number(h), message: grpcMessage(headers.get('grpc-message')), via: 'headers' };
  }
  return null;
}

function requestHeaders(token) {
  const h = {
    'content-type': 'application/grpc-web+proto',
    'x-grpc-web': '1',
    'x-user-agent': 'kapal-browser-test/1',
  };
  if (token) h.authorization = `Bearer ${token}`;
  return h;
}

function checkHttp(res) {
  if (res.status !== 200) throw new Error(`HTTP ${res.status} from ${res.url}`);
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith('application/grpc-web')) throw new Error(`content-type ${JSON.stringify(type)} from ${res.url}`);
}

/** A unary call: returns the decoded response, or throws GrpcError with the call's status. */
async function unary(gateway, method, request, token) {
  const res = await fetch(`${gateway}/${method}`, {
    method: 'POST',
    headers: requestHeaders(token),
    body: dataFrame(encode(request)),
  });
  checkHttp(res);
  const reader = new FrameReader();
  const frames = reader.push(new Uint8Array(await res.arrayBuffer()));
  if (reader.pending) throw new Error(`${method}: ${reader.pending} bytes of an incomplete frame`);
  const messages = frames.filter((f) => !f.trailer).map((f) => f.payload);
  const trailer = frames.find((f) => f.trailer);
  const status = statusOf(trailer && parseTrailers(trailer.payload), res.headers);
  if (!status) throw new Error(`${method}: no grpc-status in the trailers or the headers`);
  if (status.code !== STATUS.OK) throw new GrpcError(status.code, status.message, status.via);
  if (messages.length !== 1) throw new Error(`${method}: ${messages.length} response messages`);
  return decode(messages[0]);
}

/**
 * Whether anything answers at `url`, CORS aside: a no-cors request gets an opaque response from
 * any server that answers, and fails only when nothing does. Tells a CORS refusal (the server is
 * there) from a connection refused, which fetch() reports with the same TypeError.
 */
async function reachable(url) {
  try {
    const res = await fetch(url, { method: 'POST', mode: 'no-cors', body: 'probe' });
    return res.type === 'opaque';
  } catch {
    return false;
  }
}

/** Expects the browser to refuse a cross-origin fetch that a reachable server answers. */
async function expectCorsRefusal(url, headers) {
  check(await reachable(url), `nothing answers at ${url}: a refusal would prove nothing`);
  try {
    await fetch(url, { method: 'POST', headers, body: dataFrame(encode({})) });
  } catch (e) {
    check(e instanceof TypeError, `expected a TypeError, got ${e}`);
    return `${url} is reachable, and the browser refused the CORS request (${e.message})`;
  }
  throw new Error(`the browser let the request to ${url} through`);
}

/** A call expected to fail: returns its status. */
async function expectError(gateway, method, request, token) {
  try {
    await unary(gateway, method, request, token);
  } catch (e) {
    if (e instanceof GrpcError) return { code: e.code, message: e.grpcMessage, via: e.via };
    throw e;
  }
  throw new Error(`${method} succeeded but should have failed`);
}

/**
 * Server streaming: WatchInstance, read incrementally from the response body. `onEvent` gets
 * each InstanceEvent as it arrives and returns true to stop watching (the call is then aborted).
 */
async function watchInstance(gateway, token, instanceId, onEvent) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error(`watch timed out after ${WATCH_TIMEOUT_MS} ms`)), WATCH_TIMEOUT_MS);
  const stats = { reads: 0, bytes: 0, events: 0 };
  try {
    const res = await fetch(`${gateway}/kapal.v1.InstanceService/WatchInstance`, {
      method: 'POST',
      headers: requestHeaders(token),
      body: dataFrame(encode({ 1: instanceId })),
      signal: abort.signal,
    });
    checkHttp(res);
    const early = statusOf(null, res.headers);
    if (early && early.code !== STATUS.OK) throw new GrpcError(early.code, early.message, early.via);
    const body = res.body.getReader();
    const frames = new FrameReader();
    for (;;) {
      const { done, value } = await body.read();
      if (done) break;
      stats.reads += 1;
      stats.bytes += value.length;
      for (const frame of frames.push(value)) {
        if (frame.trailer) {
          const status = statusOf(parseTrailers(frame.payload), res.headers);
          if (status && status.code !== STATUS.OK) throw new GrpcError(status.code, status.message, status.via);
          throw new Error(`the watch ended (status ${status?.code}) before the wanted state`);
        }
        stats.events += 1;
        if (onEvent(decode(frame.payload), stats)) {
          await body.cancel().catch(() => {});
          abort.abort();
          return stats;
        }
      }
    }
    throw new Error('the watch stream ended without trailers');
  } catch (e) {
    if (abort.signal.aborted && abort.signal.reason instanceof Error) throw abort.signal.reason;
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Follows an instance until `want`; returns the statuses seen on the way (deduplicated). */
async function watchUntil(gateway, token, instanceId, want) {
  const seen = [];
  const stats = await watchInstance(gateway, token, instanceId, (event) => {
    const instance = sub(event, 1);
    if (!instance) throw new Error('an InstanceEvent without instance');
    const status = num(instance, 4);
    const name = INSTANCE_NAMES[status] ?? String(status);
    if (seen[seen.length - 1] !== name) seen.push(name);
    if (status === INSTANCE.FAILED && want !== INSTANCE.FAILED) {
      throw new Error(`instance failed: ${str(instance, 5)}`);
    }
    return status === want;
  });
  return { seen, ...stats };
}

// ---------------------------------------------------------------------------------------------
// The journey.

const result = { pass: false, steps: [] };

function show() {
  document.getElementById('result').textContent = JSON.stringify(result, null, 2);
}

async function step(name, fn) {
  const li = document.createElement('li');
  li.textContent = name;
  document.getElementById('steps').append(li);
  const started = performance.now();
  const entry = { name };
  result.steps.push(entry);
  try {
    const detail = await fn();
    entry.ok = true;
    if (detail !== undefined) entry.detail = detail;
    li.className = 'ok';
    return detail;
  } catch (e) {
    entry.ok = false;
    entry.error = String(e?.message ?? e);
    li.className = 'fail';
    li.textContent += `: ${entry.error}`;
    throw new Error(`${name}: ${entry.error}`);
  } finally {
    entry.ms = Math.round(performance.now() - started);
    show();
  }
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function journey() {
  const param = new URLSearchParams(location.search).get('gateway');
  check(param, 'no ?gateway=<url> in the page URL');
  const gateway = param.replace(/\/+$/, '');
  const gatewayOrigin = new URL(gateway).origin;
  result.pageOrigin = location.origin;
  result.gatewayOrigin = gatewayOrigin;
  result.userAgent = navigator.userAgent;
  document.getElementById('page-origin').textContent = location.origin;
  document.getElementById('gateway').textContent = gateway;

  await step('the page and the gateway are different origins', () => {
    check(location.origin !== gatewayOrigin, `both are ${gatewayOrigin}: this would not test CORS`);
    return { page: location.origin, gateway: gatewayOrigin };
  });

  await step('CORS is enforced: a header the gateway does not allow is refused by the browser', () =>
    expectCorsRefusal(`${gateway}/kapal.v1.CatalogService/ListApps`, { ...requestHeaders(''), 'x-kapal-not-allowed': '1' }));

  const restricted = new URLSearchParams(location.search).get('restricted');
  if (restricted) {
    await step('a gateway whose CORS list lacks this origin is refused by the browser', () =>
      expectCorsRefusal(`${restricted.replace(/\/+$/, '')}/kapal.v1.CatalogService/ListApps`, requestHeaders('')));
  }

  const apps = await step('ListApps (anonymous): n8n, ghost and wordpress are in the catalog', async () => {
    const res = await unary(gateway, 'kapal.v1.CatalogService/ListApps', {}, '');
    const list = subs(res, 1).map((app) => ({ id: str(app, 1), name: str(app, 2), plans: subs(app, 5).map((p) => str(p, 1)) }));
    for (const id of ['n8n', 'ghost', 'wordpress']) {
      check(list.some((a) => a.id === id), `${id} missing from ${JSON.stringify(list.map((a) => a.id))}`);
    }
    check(list.find((a) => a.id === 'n8n').plans.includes('trial'), 'n8n has no trial plan');
    return list;
  });
  result.apps = apps.map((a) => a.id);

  result.unauthenticated = await step('ListOrders without a token is UNAUTHENTICATED (16)', async () => {
    const status = await expectError(gateway, 'kapal.v1.OrderService/ListOrders', {}, '');
    check(status.code === STATUS.UNAUTHENTICATED, `status ${status.code} (${status.message})`);
    return status;
  });

  const email = `browser-${crypto.randomUUID()}@example.com`;
  let token = ''; // a secret: never in the summary
  result.account = await step('SignUp with a unique email', async () => {
    const session = await unary(gateway, 'kapal.v1.AccountService/SignUp', { 1: email, 2: 'correct horse 42', 3: 'Browser' }, '');
    token = str(session, 1);
    check(token.length > 0, 'no token in the SessionResponse');
    const account = sub(session, 3);
    check(account && str(account, 2) === email, `account email ${JSON.stringify(str(account, 2))}, expected ${email}`);
    return { id: str(account, 1), email: str(account, 2), customerId: str(account, 3) };
  });

  const idempotencyKey = crypto.randomUUID();
  let order = await step('Checkout n8n on the trial plan', async () => {
    const o = await unary(gateway, 'kapal.v1.OrderService/Checkout', { 1: 'n8n', 2: 'trial', 3: idempotencyKey }, token);
    const summary = { id: str(o, 1), appId: str(o, 2), planId: str(o, 3), status: num(o, 4), instanceId: str(o, 8), idempotencyKey: str(o, 9) };
    check(summary.id && summary.appId === 'n8n' && summary.planId === 'trial', `order ${JSON.stringify(summary)}`);
    check(summary.idempotencyKey === idempotencyKey, 'the order does not carry our idempotency key');
    check(summary.status !== ORDER_FAILED, `order failed: ${str(o, 5)}`);
    const amount = sub(o, 6);
    check(num(amount, 1) === 0, `a trial costs Rp 0, the order says ${num(amount, 1)}`);
    return summary;
  });

  await step('Checkout again with the same idempotency key returns the same order', async () => {
    const again = await unary(gateway, 'kapal.v1.OrderService/Checkout', { 1: 'n8n', 2: 'trial', 3: idempotencyKey }, token);
    check(str(again, 1) === order.id, `another order: ${str(again, 1)} vs ${order.id}`);
    return str(again, 1);
  });

  if (order.status !== ORDER_COMPLETED || !order.instanceId) {
    order = await step('GetOrder until the order is completed', async () => {
      for (let i = 0; i < 120; i++) {
        const o = await unary(gateway, 'kapal.v1.OrderService/GetOrder', { 1: order.id }, token);
        check(num(o, 4) !== ORDER_FAILED, `order failed: ${str(o, 5)}`);
        if (num(o, 4) === ORDER_COMPLETED && str(o, 8)) return { ...order, status: num(o, 4), instanceId: str(o, 8) };
        await new Promise((r) => setTimeout(r, 500));
      }
      throw new Error('the order was not completed within 60 s');
    });
  }
  result.order = order;

  result.watch = await step('WatchInstance, read incrementally, until READY', async () => {
    const w = await watchUntil(gateway, token, order.instanceId, INSTANCE.READY);
    check(w.seen[w.seen.length - 1] === 'READY', `saw ${w.seen}`);
    return w;
  });

  result.instance = await step('GetInstance: URL and credentials', async () => {
    const inst = await unary(gateway, 'kapal.v1.InstanceService/GetInstance', { 1: order.instanceId }, token);
    check(num(inst, 4) === INSTANCE.READY, `status ${INSTANCE_NAMES[num(inst, 4)]}`);
    const creds = sub(inst, 11);
    check(creds, 'no credentials (Instance field 11)');
    const password = str(creds, 2);
    check(password.length >= 16, `a password of ${password.length} characters`);
    return {
      id: str(inst, 1),
      url: str(inst, 7),
      hostname: str(inst, 8),
      credentials: { username: str(creds, 1), passwordLength: password.length, loginUrl: str(creds, 3) },
    };
  });

  result.invoices = await step('ListInvoices: one invoice of Rp 0', async () => {
    const res = await unary(gateway, 'kapal.v1.SubscriptionService/ListInvoices', {}, token);
    const invoices = subs(res, 1).map((inv) => {
      const money = sub(inv, 6);
      return { number: str(inv, 2), amount: num(money, 1), currency: str(money, 2), status: num(inv, 7) };
    });
    check(invoices.length === 1, `${invoices.length} invoices`);
    check(invoices[0].amount === 0, `amount ${invoices[0].amount}`);
    return invoices;
  });

  result.unknownApp = await step('Checkout of an unknown app is INVALID_ARGUMENT (3)', async () => {
    const status = await expectError(gateway, 'kapal.v1.OrderService/Checkout', { 1: 'no-such-app', 2: 'trial', 3: crypto.randomUUID() }, token);
    check(status.code === STATUS.INVALID_ARGUMENT, `status ${status.code} (${status.message})`);
    check(status.message.length > 0, 'no message for a person');
    return status;
  });

  result.deleted = await step('DeleteInstance, then WatchInstance until DELETED', async () => {
    await unary(gateway, 'kapal.v1.InstanceService/DeleteInstance', { 1: order.instanceId }, token);
    return watchUntil(gateway, token, order.instanceId, INSTANCE.DELETED);
  });
}

function outcome(kind, text) {
  const el = document.getElementById('outcome');
  el.className = kind;
  el.textContent = text;
  document.title = text;
}

journey().then(
  () => {
    result.pass = true;
    show();
    outcome('pass', 'PASS');
  },
  (e) => {
    result.pass = false;
    result.reason = String(e?.message ?? e);
    show();
    outcome('fail', `FAIL: ${result.reason}`);
  },
);
