import { useState } from 'preact/hooks';
import { CreditNoteStatus, SubscriptionStatus, type App, type CreditNote, type Invoice, type Subscription, type SubscriptionEvent } from '@kapal/client';
import { allPages, catalog, subscriptions } from '../api';
import { ConfirmButton, ErrorText, Loading, Page, useAction, useLoad } from '../components';
import { day, invoiceStatus, isoTime, rupiah, subscriptionStatus, when } from '../format';
import { href } from '../router';

export function Subscriptions() {
  const list = useLoad(
    async () => ({
      subscriptions: await allPages(async (pageToken) => {
        const r = await subscriptions.listSubscriptions({ pageToken });
        return { rows: r.subscriptions, next: r.nextPageToken };
      }),
    }),
    [],
  );
  const apps = useLoad(() => catalog.listApps({}), []);
  return (
    <Page title="Subscriptions">
      {list.loading && !list.data && <Loading what="your subscriptions" />}
      <ErrorText error={list.error} />
      {list.data?.subscriptions.length === 0 && (
        <p>
          No subscriptions yet. <a href={href('catalog')}>Choose an app in the catalog</a>.
        </p>
      )}
      {list.data?.subscriptions.map((s) => (
        <SubscriptionCard key={s.id} sub={s} app={apps.data?.apps.find((a) => a.id === s.appId)} />
      ))}
    </Page>
  );
}

const ENDED = [SubscriptionStatus.EXPIRED, SubscriptionStatus.CANCELED];

export function SubscriptionEvents({ events }: { events: SubscriptionEvent[] }) {
  if (events.length === 0) return <p class="muted">No events.</p>;
  return (
    <table tabIndex={0}>
      <thead>
        <tr>
          <th scope="col">When</th>
          <th scope="col">From</th>
          <th scope="col">To</th>
          <th scope="col">Cause</th>
        </tr>
      </thead>
      <tbody>
        {events.map((e, i) => (
          <tr key={i}>
            <td>
              <time dateTime={isoTime(e.at)}>{when(e.at)}</time>
            </td>
            <td>{e.fromStatus === SubscriptionStatus.UNSPECIFIED ? '—' : subscriptionStatus(e.fromStatus)}</td>
            <td>{e.toStatus === SubscriptionStatus.UNSPECIFIED ? 'Created' : subscriptionStatus(e.toStatus)}</td>
            <td>{e.cause}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function SubscriptionCard({ sub: initial, app }: { sub: Subscription; app?: App }) {
  const [sub, setSub] = useState(initial);
  const [plan, setPlan] = useState('');
  const [events, setEvents] = useState<SubscriptionEvent[] | undefined>();
  const renew = useAction();
  const change = useAction();
  const cancel = useAction();
  const ev = useAction();
  const ended = ENDED.includes(sub.status);
  const trial = sub.status === SubscriptionStatus.TRIALING;
  const planName = (id: string) => app?.plans.find((p) => p.id === id)?.name ?? id;
  const paidPlans = app?.plans.filter((p) => p.trialDays === 0) ?? [];
  const title = `${app?.name ?? sub.appId}, ${planName(sub.planId)}`;
  const hid = `sub-${sub.id}`;
  return (
    <article class="card" aria-labelledby={hid}>
      <h2 id={hid}>{title}</h2>
      <dl class="facts">
        <dt>Status</dt>
        <dd>
          <span class={`badge s-${SubscriptionStatus[sub.status]?.toLowerCase()}`}>{subscriptionStatus(sub.status)}</span>
          {sub.cancelAtPeriodEnd && !ended && ' (cancelled: ends at the end of the period)'}
        </dd>
        <dt>Price</dt>
        <dd>{rupiah(sub.price)} per month</dd>
        <dt>Current period</dt>
        <dd>
          {day(sub.currentPeriodStart)} to {day(sub.currentPeriodEnd)}
        </dd>
        {trial && (
          <>
            <dt>Trial ends</dt>
            <dd>{when(sub.trialEnd)}</dd>
          </>
        )}
        <dt>{sub.autoRenew && !sub.cancelAtPeriodEnd ? 'Renews on' : 'Ends on'}</dt>
        <dd>{ended ? '—' : day(sub.currentPeriodEnd)}</dd>
        {sub.nextPlanId && (
          <>
            <dt>Next plan</dt>
            <dd>{planName(sub.nextPlanId)} from the next renewal</dd>
          </>
        )}
        <dt>Instance</dt>
        <dd>{sub.instanceId ? <a href={href('instances', sub.instanceId)}>{sub.instanceId}</a> : '—'}</dd>
      </dl>

      {!ended && (
        <>
          <div class="field-inline">
            <input
              id={`${hid}-renew`}
              type="checkbox"
              checked={sub.autoRenew}
              disabled={renew.busy || sub.cancelAtPeriodEnd}
              onChange={(e) => {
                const want = e.currentTarget.checked;
                renew.run(async () => setSub(await subscriptions.setAutoRenew({ subscriptionId: sub.id, autoRenew: want })));
              }}
            />
            <label for={`${hid}-renew`}>Auto-renew</label>
          </div>
          <ErrorText error={renew.error} />

          <form
            class="inline-form"
            onSubmit={(e) => {
              e.preventDefault();
              change.run(async () => setSub(await subscriptions.changePlan({ subscriptionId: sub.id, planId: plan })));
            }}
          >
            <label for={`${hid}-plan`}>{trial ? 'Plan after the trial' : 'New plan'}</label>
            <select id={`${hid}-plan`} value={plan} required onChange={(e) => setPlan(e.currentTarget.value)}>
              <option value="">Choose a plan</option>
              {paidPlans.map((p) => (
                <option key={p.id} value={p.id}>
                  {p.name} ({rupiah(p.monthlyPrice)} per month){p.id === sub.planId && !trial ? ', current' : ''}
                </option>
              ))}
            </select>
            <button type="submit" disabled={change.busy || !plan}>
              Change plan
            </button>
          </form>
          <ErrorText error={change.error} />

          {!sub.cancelAtPeriodEnd && (
            <div class="actions">
              <ConfirmButton
                label="Cancel subscription"
                question="Cancel this subscription?"
                detail={`It ends on ${day(sub.currentPeriodEnd)}; the instance keeps running until then.`}
                confirmLabel="Yes, cancel it"
                danger
                disabled={cancel.busy}
                onConfirm={() => cancel.run(async () => setSub(await subscriptions.cancelSubscription({ subscriptionId: sub.id })))}
              />
            </div>
          )}
          <ErrorText error={cancel.error} />
        </>
      )}

      <details
        onToggle={(e) => {
          if ((e.currentTarget as HTMLDetailsElement).open) {
            ev.run(async () =>
              setEvents(
                await allPages(async (pageToken) => {
                  const r = await subscriptions.listSubscriptionEvents({ subscriptionId: sub.id, pageToken });
                  return { rows: r.events, next: r.nextPageToken };
                }),
              ),
            );
          }
        }}
      >
        <summary>History of this subscription</summary>
        <ErrorText error={ev.error} />
        {events && <SubscriptionEvents events={events} />}
      </details>
    </article>
  );
}

export function Invoices() {
  const list = useLoad(
    async () => ({
      invoices: await allPages(async (pageToken) => {
        const r = await subscriptions.listInvoices({ pageToken });
        return { rows: r.invoices, next: r.nextPageToken };
      }),
    }),
    [],
  );
  return (
    <Page title="Invoices">
      {list.loading && !list.data && <Loading what="your invoices" />}
      <ErrorText error={list.error} />
      {list.data?.invoices.length === 0 && <p>No invoices yet.</p>}
      {list.data && list.data.invoices.length > 0 && (
        <>
          <InvoiceTable invoices={list.data.invoices} caption="Your invoices" />
          <CreditNotes invoices={list.data.invoices} />
        </>
      )}
    </Page>
  );
}

/** Invoices, with what was credited back on each. */
export function InvoiceTable({ invoices, caption }: { invoices: Invoice[]; caption: string }) {
  return (
    <table tabIndex={0}>
      <caption class="sr-only">{caption}</caption>
      <thead>
        <tr>
          <th scope="col">Number</th>
          <th scope="col">Period</th>
          <th scope="col" class="num">Amount</th>
          <th scope="col">Status</th>
          <th scope="col" class="num">Credited</th>
          <th scope="col">Paid</th>
          <th scope="col">Payment</th>
        </tr>
      </thead>
      <tbody>
        {invoices.map((inv) => (
          <tr key={inv.id}>
            <th scope="row">{inv.number}</th>
            <td>
              {day(inv.periodStart)} to {day(inv.periodEnd)}
            </td>
            <td class="num">{rupiah(inv.amount)}</td>
            <td>{invoiceStatus(inv.status)}</td>
            <td class="num">{inv.credited && inv.credited.amount > 0n ? rupiah(inv.credited) : '—'}</td>
            <td>{when(inv.paidAt)}</td>
            <td>{inv.paymentProvider ? `${inv.paymentProvider} ${inv.paymentReference}` : '—'}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** A credit note's state in words: refunded, a refund billing is still trying (with its
 * attempts and the next try), or failed. */
export function creditNoteState(n: CreditNote): string {
  switch (n.status) {
    case CreditNoteStatus.REFUNDED:
      return n.finishedAt ? `Refunded ${when(n.finishedAt)}` : 'Refunded';
    case CreditNoteStatus.PENDING: {
      const tries = `${n.refundAttempts} attempt${n.refundAttempts === 1 ? '' : 's'} so far`;
      return n.nextAttemptAt ? `Refund pending: ${tries}, next try ${when(n.nextAttemptAt)}` : `Refund pending: ${tries}`;
    }
    case CreditNoteStatus.FAILED:
      return 'Failed: nothing was credited';
    default:
      return 'Unknown';
  }
}

/** Every credit note of `invoices`, newest invoice first. Operators also see each refund's
 * attempts and the provider's last answer. */
export function CreditNotes({ invoices, operator = false }: { invoices: Invoice[]; operator?: boolean }) {
  const notes = invoices.flatMap((inv) => inv.creditNotes.map((n) => ({ inv, n })));
  return (
    <section aria-labelledby="credit-notes-title">
      <h2 id="credit-notes-title">Credit notes</h2>
      {notes.length === 0 ? (
        <p>No credit notes.</p>
      ) : (
        <table tabIndex={0}>
          <caption class="sr-only">Credit notes</caption>
          <thead>
            <tr>
              <th scope="col">Invoice</th>
              <th scope="col">Issued</th>
              <th scope="col" class="num">Amount</th>
              <th scope="col">Reason</th>
              <th scope="col">State</th>
              {operator && <th scope="col">Refund</th>}
            </tr>
          </thead>
          <tbody>
            {notes.map(({ inv, n }) => (
              <tr key={n.id}>
                <th scope="row">{inv.number}</th>
                <td>
                  <time dateTime={isoTime(n.createdAt)}>{when(n.createdAt)}</time>
                </td>
                <td class="num">{rupiah(n.amount)}</td>
                <td>{n.reason}</td>
                <td>
                  <span class={`badge c-${CreditNoteStatus[n.status]?.toLowerCase()}`}>{creditNoteState(n)}</span>
                </td>
                {operator && (
                  <td>
                    {n.refundProvider} {n.refundReference || '—'}; {n.refundAttempts} attempt{n.refundAttempts === 1 ? '' : 's'}
                    {n.lastError && <span class="hint"> (last error: {n.lastError})</span>}
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
