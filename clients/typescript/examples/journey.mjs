// A partner's first steps with Kapal from Node.js, over grpc-web (the same transport the console
// uses in browsers): sign up, read the catalog, check out a trial and watch it until it is READY.
//
//   npm ci && node examples/journey.mjs http://127.0.0.1:8080
//
// Uses only the generated descriptors of this package with @connectrpc/connect; nothing here
// frames protobuf or grpc-web by hand.
import { randomUUID } from 'node:crypto';
import { createClient } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-node';
import {
  AccountService,
  CatalogService,
  InstanceService,
  InstanceStatus,
  OrderService,
} from '@kapal/client';

const baseUrl = process.argv[2] ?? 'http://127.0.0.1:8080';
let token = '';
const transport = createGrpcWebTransport({
  baseUrl,
  httpVersion: '1.1',
  // Every call after sign-up carries the session token.
  interceptors: [(next) => (req) => {
    if (token) req.header.set('authorization', `Bearer ${token}`);
    return next(req);
  }],
});

const accounts = createClient(AccountService, transport);
const catalog = createClient(CatalogService, transport);
const orders = createClient(OrderService, transport);
const instances = createClient(InstanceService, transport);

const email = `partner-${randomUUID().slice(0, 8)}@example.com`;
const session = await accounts.signUp({ email, password: 'correct-horse-42' });
token = session.token;
console.log(`signed up ${session.account?.email} (customer ${session.account?.customerId})`);

const idr = new Intl.NumberFormat('id-ID', { style: 'currency', currency: 'IDR' });
const { apps } = await catalog.listApps({});
for (const app of apps) {
  const plans = app.plans.map((p) => `${p.id} ${idr.format(Number(p.monthlyPrice?.amount ?? 0n))}`);
  console.log(`${app.id}: ${plans.join(', ')}`);
}

const app = apps.find((a) => a.id === 'n8n') ?? apps[0];
const trial = app.plans.find((p) => p.trialDays > 0) ?? app.plans[0];
const order = await orders.checkout({ appId: app.id, planId: trial.id, idempotencyKey: randomUUID() });
console.log(`order ${order.id}: instance ${order.instanceId}`);

// The stream sends the current state first, then every change.
const watch = new AbortController();
const deadline = setTimeout(() => watch.abort(), 300_000);
for await (const event of instances.watchInstance({ instanceId: order.instanceId }, { signal: watch.signal })) {
  const inst = event.instance;
  console.log(`${InstanceStatus[inst.status]}: ${inst.statusReason}`);
  if (inst.status === InstanceStatus.READY) {
    console.log(`ready at ${inst.url}`);
    break;
  }
  if (inst.status === InstanceStatus.FAILED) process.exitCode = 1;
}
clearTimeout(deadline);
watch.abort();
