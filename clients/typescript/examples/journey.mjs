// Kapal's TypeScript client end to end, from Node.js over grpc-web (the transport the console
// uses in browsers): signs up a customer, reads the catalog, checks out the free trial of an app
// and watches the new instance until it is READY.
//
//   npm ci --prefix clients/typescript
//   KAPAL_PASSWORD='a long passphrase 1' node clients/typescript/examples/journey.mjs \
//       --url http://127.0.0.1:8080 --email you@example.com --app n8n
//
// Each step prints one line ("signed up:", "catalog:", "order:", "status:", "ready:"), like the
// Python and Go examples; the password is read from KAPAL_PASSWORD so it is not on the command
// line. Exits non-zero with the server's message when a call fails. Uses only the generated
// descriptors of @kapal/client with @connectrpc/connect: nothing here frames protobuf by hand.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-node';
import {
  AccountService,
  CatalogService,
  InstanceService,
  InstanceStatus,
  OrderService,
  OrderStatus,
} from '@kapal/client';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:8080' },
    email: { type: 'string', default: `partner-${randomUUID().slice(0, 8)}@example.com` },
    app: { type: 'string', default: 'n8n' },
    timeout: { type: 'string', default: '300' },
  },
});
const password = process.env.KAPAL_PASSWORD ?? 'a long passphrase 1';

let token = '';
const transport = createGrpcWebTransport({
  baseUrl: args.url,
  httpVersion: '1.1',
  // Every call but sign-up, log-in and the catalog carries the session token.
  interceptors: [(next) => (req) => {
    if (token) req.header.set('authorization', `Bearer ${token}`);
    return next(req);
  }],
});
const accounts = createClient(AccountService, transport);
const catalog = createClient(CatalogService, transport);
const orders = createClient(OrderService, transport);
const instances = createClient(InstanceService, transport);

function fail(message) {
  console.error(message);
  process.exit(1);
}

try {
  const session = await accounts.signUp({ email: args.email, password, displayName: 'TypeScript journey' });
  if (!session.token) fail('sign-up opened no session (the server verifies email first: verify, then log in)');
  token = session.token;
  console.log(`signed up: ${session.account?.email} account=${session.account?.id}`);

  const { apps } = await catalog.listApps({});
  const trial = apps.find((a) => a.id === args.app)?.plans.find((p) => p.trialDays > 0);
  if (!trial) fail(`catalog: no trial plan for ${args.app}`);
  const price = trial.monthlyPrice;
  console.log(`catalog: ${apps.length} apps; ${args.app} trial plan ${trial.id} (${trial.trialDays} days, ${price?.amount ?? 0n} ${price?.currency ?? 'IDR'})`);

  // One idempotency key per intended order: retrying Checkout with it never orders twice.
  const order = await orders.checkout({ appId: args.app, planId: trial.id, idempotencyKey: randomUUID() });
  const status = `ORDER_STATUS_${OrderStatus[order.status]}`;
  console.log(`order: ${order.id} ${status} instance=${order.instanceId}`);
  if (order.status !== OrderStatus.COMPLETED) fail(`checkout: order ${status}: ${order.failureReason}`);

  // WatchInstance sends the current state first, then every change; the deadline bounds the wait.
  const ready = await (async () => {
    const signal = AbortSignal.timeout(Number(args.timeout) * 1000);
    for await (const event of instances.watchInstance({ instanceId: order.instanceId }, { signal })) {
      const inst = event.instance;
      if (!inst) continue;
      console.log(`status: INSTANCE_STATUS_${InstanceStatus[inst.status]} ${inst.statusReason}`);
      if (inst.status === InstanceStatus.READY) return inst;
      if (inst.status === InstanceStatus.FAILED) fail(`instance failed: ${inst.statusReason}`);
    }
    return fail('the watch ended before the instance was ready');
  })();
  console.log(`ready: ${ready.id} ${ready.url}`);
} catch (err) {
  fail(err instanceof ConnectError ? `${err.code}: ${err.rawMessage}` : String(err));
}
