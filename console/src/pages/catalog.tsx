import { useEffect, useMemo, useState } from 'preact/hooks';
import { OrderStatus, type Order } from '@kapal/client';
import { catalog, orders } from '../api';
import { ErrorText, Loading, Page, useAction, useLoad } from '../components';
import { bytes, rupiah } from '../format';
import { go, href } from '../router';
import { useSession } from '../session';

export function Catalog() {
  const apps = useLoad(() => catalog.listApps({}), []);
  return (
    <Page title="Catalog">
      <p>Pick an app and a plan. Prices are per month, in Rupiah; a trial costs nothing.</p>
      {apps.loading && !apps.data && <Loading what="the catalog" />}
      <ErrorText error={apps.error} />
      <div class="cards">
        {apps.data?.apps.map((app) => (
          <article class="card" key={app.id} aria-labelledby={`app-${app.id}`}>
            <h2 id={`app-${app.id}`}>{app.name}</h2>
            <p class="muted">Version {app.version}</p>
            <p>{app.description}</p>
            <table tabIndex={0}>
              <caption class="sr-only">Plans of {app.name}</caption>
              <thead>
                <tr>
                  <th scope="col">Plan</th>
                  <th scope="col">Price per month</th>
                  <th scope="col">Resources</th>
                  <th scope="col">
                    <span class="sr-only">Order</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {app.plans.map((plan) => (
                  <tr key={plan.id}>
                    <th scope="row">{plan.name}</th>
                    <td>
                      {rupiah(plan.monthlyPrice)}
                      {plan.trialDays > 0 && <div class="muted">free for {plan.trialDays} days</div>}
                    </td>
                    <td>
                      {plan.cpuMillis}m CPU, {bytes(plan.memoryMib * 1024 * 1024)} memory, {plan.storageGib} GiB storage
                    </td>
                    <td>
                      <a class="button" href={href('checkout', app.id, plan.id)}>
                        {plan.trialDays > 0 ? `Try ${app.name} free` : `Order ${app.name} ${plan.name}`}
                      </a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            {app.documentationUrl && (
              <p>
                <a href={app.documentationUrl} rel="noopener noreferrer">
                  {app.name} documentation
                </a>
              </p>
            )}
          </article>
        ))}
      </div>
    </Page>
  );
}

/** After sign-up or log-in, come back to this checkout. */
function comeBack() {
  sessionStorage.setItem('kapal.after-login', window.location.hash);
}

function newKey(): string {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function Checkout({ appId, planId }: { appId: string; planId: string }) {
  const session = useSession();
  const app = useLoad(() => catalog.getApp({ appId }), [appId]);
  const plan = app.data?.plans.find((p) => p.id === planId);
  // One key per visit of this page: a double click or a retry never orders twice.
  const key = useMemo(newKey, [appId, planId]);
  const act = useAction();
  const [order, setOrder] = useState<Order | undefined>();

  // An order accepted without an instance yet: ask again until it has one or failed.
  useEffect(() => {
    if (!order || order.instanceId || order.status !== OrderStatus.PENDING) return;
    const t = window.setTimeout(async () => {
      try {
        setOrder(await orders.getOrder({ orderId: order.id }));
      } catch (e) {
        act.setError(e);
      }
    }, 1000);
    return () => window.clearTimeout(t);
  }, [order]);
  useEffect(() => {
    if (order?.instanceId) go('instances', order.instanceId);
  }, [order?.instanceId]);

  if (!session.account) {
    return (
      <Page title="Checkout">
        <p>
          To order, <a href={href('signup')} onClick={comeBack}>create an account</a> or{' '}
          <a href={href('login')} onClick={comeBack}>
            log in
          </a>
          .
        </p>
      </Page>
    );
  }
  return (
    <Page title="Checkout">
      {app.loading && !app.data && <Loading what="the app" />}
      <ErrorText error={app.error} />
      {app.data && !plan && <p class="error" role="alert">{app.data.name} has no plan "{planId}".</p>}
      {app.data && plan && (
        <form
          class="form"
          onSubmit={(e) => {
            e.preventDefault();
            act.run(async () => setOrder(await orders.checkout({ appId, planId, idempotencyKey: key })));
          }}
        >
          <dl class="facts">
            <dt>App</dt>
            <dd>{app.data.name}</dd>
            <dt>Plan</dt>
            <dd>{plan.name}</dd>
            <dt>Price</dt>
            <dd>
              {rupiah(plan.monthlyPrice)} per month
              {plan.trialDays > 0 && ` (free trial for ${plan.trialDays} days)`}
            </dd>
            <dt>Resources</dt>
            <dd>
              {plan.cpuMillis}m CPU, {plan.memoryMib} MiB memory, {plan.storageGib} GiB storage
            </dd>
          </dl>
          <ErrorText error={act.error} />
          {act.error !== undefined && !session.account.emailVerified && (
            <p>
              <a href={href('verify')}>Verify your email address</a>
            </p>
          )}
          {order?.status === OrderStatus.FAILED && (
            <p class="error" role="alert">
              {order.failureReason}
            </p>
          )}
          {order && order.status === OrderStatus.PENDING && !order.instanceId && (
            <p role="status">Order {order.id} accepted; waiting for its instance…</p>
          )}
          <button type="submit" class="primary" disabled={act.busy || (!!order && order.status !== OrderStatus.FAILED)}>
            {plan.trialDays > 0 ? 'Start free trial' : `Pay ${rupiah(plan.monthlyPrice)} and order`}
          </button>
        </form>
      )}
    </Page>
  );
}
