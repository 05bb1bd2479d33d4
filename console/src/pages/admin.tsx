// Operator pages (ADMIN accounts only; the API refuses the calls for anyone else anyway).
import { useEffect, useState } from 'preact/hooks';
import {
  AlertSeverity,
  DesiredState,
  InstanceStatus,
  InvoiceStatus,
  SubscriptionStatus,
  type AccountSuspension,
  type AdminInstance,
  type AuditEvent,
  type Credentials,
  type Instance,
  type InstanceDiagnostics,
  type InstanceUsage,
  type ResourceAmounts,
  type SubscriptionEvent,
} from '@kapal/client';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { AdminService, BillingAdminService, OperatorService } from '@kapal/client';
import { allPages, catalog, errorMessage, transport } from '../api';
import { BarChart, CapacityBar, LineChart } from '../charts';
import { ConfirmButton, ErrorText, FieldError, Loading, Page, Pager, useAction, useLoad, usePager } from '../components';
import { bytes, day, instanceStatus, isoTime, millicores, percent, rupiah, rupiahNumber, severity, subscriptionStatus, when } from '../format';
import { href } from '../router';
import { actorName, StatusBadge } from './instances';
import { CreditNotes, creditNoteState, InvoiceTable, SubscriptionEvents } from './billing';

// Here rather than in api.ts: this module is loaded only when an operator opens an operator page.
const admin = createClient(AdminService, transport);
const billingAdmin = createClient(BillingAdminService, transport);
const operator = createClient(OperatorService, transport);

export default function AdminRoutes({ path }: { path: string[] }) {
  const [first, id] = path;
  switch (first) {
    case 'instances':
      return id ? <AdminInstancePage id={id} /> : <AdminInstances />;
    case 'capacity':
      return <CapacityPage />;
    case 'alerts':
      return <AlertsPage />;
    case 'audit':
      return <AuditPage />;
    case 'revenue':
      return <RevenuePage />;
    case 'subscriptions':
      return <AdminSubscriptions />;
    case 'accounts':
      return id ? <AdminAccountPage id={id} /> : <AdminAccounts />;
  }
  return (
    <Page title="Page not found">
      <p>
        There is no such operator page. <a href={href('admin', 'instances')}>All instances</a>.
      </p>
    </Page>
  );
}

const PAGE_SIZE = 20;

function enumOptions<E extends Record<string, string | number>>(e: E, words: (v: number) => string) {
  return Object.values(e)
    .filter((v): v is number => typeof v === 'number' && v !== 0)
    .map((v) => (
      <option key={v} value={String(v)}>
        {words(v)}
      </option>
    ));
}

function AppSelect({ id, value, onChange }: { id: string; value: string; onChange: (v: string) => void }) {
  const apps = useLoad(() => catalog.listApps({}), []);
  return (
    <select id={id} value={value} onChange={(e) => onChange(e.currentTarget.value)}>
      <option value="">All apps</option>
      {apps.data?.apps.map((a) => (
        <option key={a.id} value={a.id}>
          {a.name}
        </option>
      ))}
    </select>
  );
}

function AdminInstances() {
  const [status, setStatus] = useState('0');
  const [app, setApp] = useState('');
  const [account, setAccount] = useState('');
  const [accountApplied, setAccountApplied] = useState('');
  const pager = usePager();
  const list = useLoad(
    () =>
      admin.listAllInstances({
        pageSize: PAGE_SIZE,
        pageToken: pager.token,
        status: Number(status) as InstanceStatus,
        appId: app,
        accountId: accountApplied,
      }),
    [pager.token, status, app, accountApplied],
  );
  return (
    <Page title="All instances">
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          pager.reset();
          setAccountApplied(account.trim());
        }}
      >
        <label for="f-status">Status</label>
        <select
          id="f-status"
          value={status}
          onChange={(e) => {
            pager.reset();
            setStatus(e.currentTarget.value);
          }}
        >
          <option value="0">All statuses</option>
          {enumOptions(InstanceStatus, (v) => instanceStatus(v as InstanceStatus))}
        </select>
        <label for="f-app">App</label>
        <AppSelect
          id="f-app"
          value={app}
          onChange={(v) => {
            pager.reset();
            setApp(v);
          }}
        />
        <label for="f-account">Account id</label>
        <input id="f-account" type="text" size={38} value={account} onInput={(e) => setAccount(e.currentTarget.value)} />
        <button type="submit">Filter</button>
      </form>
      <ErrorText error={list.error} />
      {list.loading && !list.data && <Loading what="instances" />}
      {list.data && list.data.instances.length === 0 && <p>No instances match.</p>}
      {list.data && list.data.instances.length > 0 && (
        <InstanceTable instances={list.data.instances} owner />
      )}
      <Pager pager={pager} nextToken={list.data?.nextPageToken} />
    </Page>
  );
}

function AdminInstancePage({ id }: { id: string }) {
  const got = useLoad(() => admin.getInstanceAsAdmin({ instanceId: id }), [id]);
  // The instance's status every 5 s (a plain read: only credentials are audited), so an action
  // taken here shows its effect.
  const reloadInstance = got.reload;
  useEffect(() => {
    const t = window.setInterval(reloadInstance, 5000);
    return () => window.clearInterval(t);
  }, [reloadInstance]);
  const [acted, setActed] = useState<Instance | undefined>();
  const [reason, setReason] = useState('');
  const [creds, setCreds] = useState<Credentials | undefined>();
  const read = useAction();
  const subId = got.data?.instance?.subscriptionId ?? '';
  const events = useLoad<SubscriptionEvent[]>(
    async () => (subId ? await subscriptionEventsAsAdmin(subId) : []),
    [subId],
  );
  const [samples, setSamples] = useState<{ t: number; u: InstanceUsage }[]>([]);
  const [usageError, setUsageError] = useState<unknown>();
  useEffect(() => {
    let stop = false;
    let t: number | undefined;
    const poll = async () => {
      try {
        const u = await admin.getInstanceUsage({ instanceId: id });
        if (stop) return;
        setUsageError(undefined);
        setSamples((s) => [...s.slice(-359), { t: Date.now(), u }]);
      } catch (e) {
        if (!stop) setUsageError(e);
      }
      if (!stop) t = window.setTimeout(poll, 10000);
    };
    poll();
    return () => {
      stop = true;
      window.clearTimeout(t);
    };
  }, [id]);

  const ai: AdminInstance | undefined = got.data;
  // The answer of an action until the next read is newer than it.
  const inst = acted && (!ai?.instance?.updatedAt || (acted.updatedAt && acted.updatedAt.seconds > ai.instance.updatedAt.seconds)) ? acted : ai?.instance;
  if (!ai || !inst) {
    return (
      <Page title="Instance">
        {got.loading && <Loading what="the instance" />}
        <ErrorText error={got.error} />
      </Page>
    );
  }
  const last = samples[samples.length - 1]?.u;
  return (
    <Page title={`${inst.appId} instance of ${ai.email}`}>
      <dl class="facts">
        <dt>Instance id</dt>
        <dd>{inst.id}</dd>
        <dt>Owner</dt>
        <dd>
          {ai.email} (<a href={href('admin', 'accounts', ai.accountId)}>account {ai.accountId}</a>, customer {ai.customerId})
        </dd>
        <dt>Namespace</dt>
        <dd>{ai.namespace}</dd>
        <dt>URL</dt>
        <dd>{inst.url}</dd>
        <dt>Plan</dt>
        <dd>{inst.planId}</dd>
        <dt>Status</dt>
        <dd data-testid="status">
          <StatusBadge status={inst.status} /> {inst.statusReason}
        </dd>
        {inst.suspendedByBilling && (
          <>
            <dt>Billing</dt>
            <dd>Suspended by billing</dd>
          </>
        )}
      </dl>

      <h2>Timeline</h2>
      <ol class="history">
        <li>
          <time dateTime={isoTime(inst.createdAt)}>{when(inst.createdAt)}</time> ordered
        </li>
        {inst.readyAt && (
          <li>
            <time dateTime={isoTime(inst.readyAt)}>{when(inst.readyAt)}</time> first ready
          </li>
        )}
        <li>
          <time dateTime={isoTime(inst.updatedAt)}>{when(inst.updatedAt)}</time> last change: <StatusBadge status={inst.status} /> {inst.statusReason}
        </li>
        {inst.dataDeletedAfter && (
          <li>
            <time dateTime={isoTime(inst.dataDeletedAfter)}>{when(inst.dataDeletedAfter)}</time> data removed for good
          </li>
        )}
      </ol>

      <OperatorActions
        inst={inst}
        onDone={(r) => {
          setActed(r);
          got.reload();
        }}
      />

      <DiagnosticsSection id={id} />

      <h2>Subscription events</h2>
      <p>
        Subscription <code>{subId || '—'}</code>
      </p>
      <ErrorText error={events.error} />
      {events.data && <SubscriptionEvents events={events.data} />}

      <h2>Usage</h2>
      <ErrorText error={usageError} />
      {last && (
        <div class="charts">
          <LineChart
            label="CPU"
            max={Number(last.cpuLimitMillis)}
            format={(v) => millicores(v)}
            note={(last.metricsNote || 'not reported').replace(/\.+$/, '')}
            series={[{ name: 'CPU in use', cls: 'c1', points: samples.filter((s) => s.u.cpuMillis !== undefined).map((s) => ({ t: s.t, v: Number(s.u.cpuMillis) })) }]}
          />
          <LineChart
            label="Memory"
            max={Number(last.memoryLimitBytes)}
            format={(v) => bytes(v)}
            note={(last.metricsNote || 'not reported').replace(/\.+$/, '')}
            series={[{ name: 'Memory in use', cls: 'c2', points: samples.filter((s) => s.u.memoryBytes !== undefined).map((s) => ({ t: s.t, v: Number(s.u.memoryBytes) })) }]}
          />
          <p>Storage: {bytes(last.storageCapacityBytes)} bound{last.storageUsedBytes !== undefined && `, ${bytes(last.storageUsedBytes)} used`}.</p>
        </div>
      )}

      <h2>Credentials</h2>
      <p>Reading a customer's credentials is recorded in the audit log with your reason.</p>
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          read.run(async () => {
            const r = await admin.getInstanceAsAdmin({ instanceId: id, includeCredentials: true, reason });
            if (!r.instance?.credentials) throw new Error('The instance has no credentials yet.');
            setCreds(r.instance.credentials);
          });
        }}
      >
        <label for="cred-reason">Reason for reading the credentials</label>
        <input id="cred-reason" type="text" required maxLength={500} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
        <ErrorText error={read.error} />
        <button type="submit" disabled={read.busy}>
          Read credentials
        </button>
      </form>
      {creds && (
        <dl class="facts">
          <dt>Login URL</dt>
          <dd>{creds.loginUrl}</dd>
          <dt>Username</dt>
          <dd>
            <code>{creds.username}</code>
          </dd>
          <dt>Password</dt>
          <dd>
            <code data-testid="password">{creds.password}</code>
          </dd>
        </dl>
      )}
      <p>
        <a href={href('admin', 'audit')}>Audit log</a>
      </p>
    </Page>
  );
}

function amounts(a: ResourceAmounts | undefined) {
  return { cpu: Number(a?.cpuMillis ?? 0n), mem: Number(a?.memoryBytes ?? 0n), pods: Number(a?.pods ?? 0n) };
}

function CapacityPage() {
  const cap = useLoad(() => admin.getCapacity({}), []);
  const c = cap.data;
  const alloc = amounts(c?.allocatable);
  const req = amounts(c?.requested);
  const kapal = amounts(c?.requestedByKapal);
  const committed = amounts(c?.committed);
  return (
    <Page title="Capacity">
      <button type="button" onClick={cap.reload} disabled={cap.loading}>
        Refresh
      </button>
      <ErrorText error={cap.error} />
      {cap.loading && !c && <Loading what="capacity" />}
      {c && (
        <>
          <p class="muted">
            Read {when(c.observedAt)}. Checkouts are refused when committed CPU or memory would pass {c.ceilingPercent} % of allocatable.
          </p>
          <h2>Cluster</h2>
          <CapacityBar
            label="CPU"
            allocatable={alloc.cpu}
            ceilingPercent={c.ceilingPercent}
            format={millicores}
            rows={[
              { name: 'Committed', cls: 'c4', v: committed.cpu },
              { name: 'Requested', cls: 'c1', v: req.cpu },
              { name: 'By Kapal', cls: 'c3', v: kapal.cpu },
            ]}
          />
          <CapacityBar
            label="Memory"
            allocatable={alloc.mem}
            ceilingPercent={c.ceilingPercent}
            format={bytes}
            rows={[
              { name: 'Committed', cls: 'c4', v: committed.mem },
              { name: 'Requested', cls: 'c1', v: req.mem },
              { name: 'By Kapal', cls: 'c3', v: kapal.mem },
            ]}
          />
          <CapacityBar
            label="Pods"
            allocatable={alloc.pods}
            format={(v) => String(v)}
            rows={[
              { name: 'Requested', cls: 'c1', v: req.pods },
              { name: 'By Kapal', cls: 'c3', v: kapal.pods },
            ]}
          />
          <h2>Nodes</h2>
          <table tabIndex={0}>
            <thead>
              <tr>
                <th scope="col">Node</th>
                <th scope="col">Ready</th>
                <th scope="col">Schedulable</th>
                <th scope="col">CPU requested / allocatable</th>
                <th scope="col">Memory requested / allocatable</th>
                <th scope="col">Pods</th>
              </tr>
            </thead>
            <tbody>
              {c.nodes.map((n) => {
                const a = amounts(n.allocatable);
                const r = amounts(n.requested);
                return (
                  <tr key={n.name}>
                    <th scope="row">{n.name}</th>
                    <td>{n.ready ? 'yes' : 'NO'}</td>
                    <td>{n.schedulable ? 'yes' : 'no'}</td>
                    <td>
                      {millicores(r.cpu)} / {millicores(a.cpu)} ({a.cpu ? percent(r.cpu / a.cpu) : '—'})
                    </td>
                    <td>
                      {bytes(r.mem)} / {bytes(a.mem)} ({a.mem ? percent(r.mem / a.mem) : '—'})
                    </td>
                    <td>
                      {r.pods} / {a.pods}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <BarChart
            label="CPU requested per node (millicores)"
            format={(v) => millicores(v)}
            bars={c.nodes.map((n) => ({
              label: n.name,
              values: [
                { name: 'Requested', cls: 'c1', v: Number(n.requested?.cpuMillis ?? 0n) },
                { name: 'Allocatable', cls: 'c3', v: Number(n.allocatable?.cpuMillis ?? 0n) },
              ],
            }))}
          />
        </>
      )}
    </Page>
  );
}

function AlertsPage() {
  const alerts = useLoad(() => admin.listAlerts({}), []);
  return (
    <Page title="Alerts">
      <button type="button" onClick={alerts.reload} disabled={alerts.loading}>
        Refresh
      </button>
      <ErrorText error={alerts.error} />
      {alerts.loading && !alerts.data && <Loading what="alerts" />}
      {alerts.data?.alerts.length === 0 && <p role="status">Nothing needs attention now.</p>}
      {alerts.data && alerts.data.alerts.length > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Severity</th>
              <th scope="col">Kind</th>
              <th scope="col">Subject</th>
              <th scope="col">What is wrong</th>
              <th scope="col">Since</th>
            </tr>
          </thead>
          <tbody>
            {alerts.data.alerts.map((a, i) => (
              <tr key={i}>
                <td>
                  <span class={`badge s-${AlertSeverity[a.severity]?.toLowerCase()}`}>{severity(a.severity)}</span>
                </td>
                <td>{a.kind}</td>
                <td>{/^[0-9a-f-]{36}$/.test(a.subject) ? <a href={href('admin', 'instances', a.subject)}>{a.subject}</a> : a.subject}</td>
                <td>{a.message}</td>
                <td>{when(a.since)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}

function AuditPage() {
  const pager = usePager();
  const list = useLoad(() => admin.listAuditEvents({ pageSize: PAGE_SIZE, pageToken: pager.token }), [pager.token]);
  return (
    <Page title="Audit log">
      <ErrorText error={list.error} />
      {list.loading && !list.data && <Loading what="the audit log" />}
      {list.data?.events.length === 0 && <p>No events.</p>}
      {list.data && list.data.events.length > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Operator</th>
              <th scope="col">Action</th>
              <th scope="col">Subject</th>
              <th scope="col">Reason</th>
            </tr>
          </thead>
          <tbody>
            {list.data.events.map((e) => (
              <tr key={e.id}>
                <td>
                  <time dateTime={isoTime(e.at)}>{when(e.at)}</time>
                </td>
                <td>{e.actorEmail}</td>
                <td>{e.action}</td>
                <td>
                  <AuditSubject e={e} />
                </td>
                <td>{e.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Pager pager={pager} nextToken={list.data?.nextPageToken} />
    </Page>
  );
}

/** What an audit entry is about: an account for the account actions, an instance otherwise
 * (AuditEvent.instance_id holds the target of either). */
function AuditSubject({ e }: { e: AuditEvent }) {
  // Billing's actions name an invoice or a subscription: linked to its owner's account.
  if (!e.instanceId && e.instanceAccountId && (e.action === 'credit_invoice' || e.action === 'extend_subscription')) {
    const what = e.action === 'credit_invoice' ? 'invoice' : 'subscription';
    return (
      <a href={href('admin', 'accounts', e.instanceAccountId)}>
        {what} {e.target.slice(0, 8)} of account {e.instanceAccountId}
      </a>
    );
  }
  if (!e.instanceId) return <>—</>;
  if (e.action.endsWith('_account')) {
    return <a href={href('admin', 'accounts', e.instanceId)}>account {e.instanceId}</a>;
  }
  return <a href={href('admin', 'instances', e.instanceId)}>{e.instanceId}</a>;
}

function Kpi({ label, value, detail }: { label: string; value: string; detail?: string }) {
  return (
    <div class="kpi">
      <span>{label}</span>
      <span class="v">{value}</span>
      {detail && <span class="muted">{detail}</span>}
    </div>
  );
}

function RevenuePage() {
  const [from, setFrom] = useState('');
  const [to, setTo] = useState('');
  const [range, setRange] = useState<{ from: string; to: string }>({ from: '', to: '' });
  const rep = useLoad(
    () =>
      billingAdmin.getRevenueReport({
        from: range.from ? timestampFromDate(new Date(`${range.from}T00:00:00Z`)) : undefined,
        to: range.to ? timestampFromDate(new Date(`${range.to}T00:00:00Z`)) : undefined,
      }),
    [range.from, range.to],
  );
  const r = rep.data;
  return (
    <Page title="Revenue">
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          setRange({ from, to });
        }}
      >
        <label for="r-from">From</label>
        <input id="r-from" type="date" value={from} onInput={(e) => setFrom(e.currentTarget.value)} />
        <label for="r-to">To (exclusive)</label>
        <input id="r-to" type="date" value={to} onInput={(e) => setTo(e.currentTarget.value)} />
        <button type="submit">Show report</button>
      </form>
      <ErrorText error={rep.error} />
      {rep.loading && !r && <Loading what="the report" />}
      {r && (
        <>
          <p class="muted">
            {day(r.from)} to {day(r.to)}, made {when(r.generatedAt)}.
          </p>
          <div class="kpis">
            <Kpi label="MRR" value={rupiah(r.mrr)} />
            <Kpi label="Trial conversion" value={percent(r.trialConversionRate)} detail={`${r.trialsConverted} of ${r.trialsEnded} ended trials`} />
            <Kpi label="Renewal rate" value={percent(r.renewalRate)} detail={`${r.renewalsPaid} of ${r.renewalsDue} renewals paid`} />
            <Kpi label="Churn" value={percent(r.churnRate)} detail={`${r.churned} paid subscriptions ended`} />
            <Kpi label="Invoiced" value={rupiah(r.invoicedTotal)} />
            <Kpi label="Collected" value={rupiah(r.collectedTotal)} />
          </div>
          <h2>MRR per app</h2>
          <BarChart
            label="MRR per app"
            format={rupiahNumber}
            bars={r.byApp.map((a) => ({ label: a.appId, values: [{ name: 'MRR', cls: 'c1', v: Number(a.mrr?.amount ?? 0n) }] }))}
          />
          <h2>Subscriptions per app</h2>
          <BarChart
            label="Subscriptions per app by status"
            format={(v) => String(v)}
            bars={r.byApp.map((a) => ({
              label: a.appId,
              values: [
                { name: 'Trialing', cls: 'c2', v: Number(a.trialing) },
                { name: 'Active', cls: 'c3', v: Number(a.active) },
                { name: 'Past due', cls: 'c4', v: Number(a.pastDue) },
                { name: 'Suspended', cls: 'c1', v: Number(a.suspended) },
              ],
            }))}
          />
          <h2>Invoices per month</h2>
          <BarChart
            label="Invoiced and collected per month"
            format={rupiahNumber}
            bars={r.invoicesByMonth.map((m) => ({
              label: m.month,
              values: [
                { name: 'Invoiced', cls: 'c1', v: Number(m.invoiced?.amount ?? 0n) },
                { name: 'Collected', cls: 'c3', v: Number(m.collected?.amount ?? 0n) },
              ],
            }))}
          />
          <table tabIndex={0}>
            <caption>Invoices per month</caption>
            <thead>
              <tr>
                <th scope="col">Month</th>
                <th scope="col" class="num">Invoices</th>
                <th scope="col" class="num">Paid</th>
                <th scope="col" class="num">Failed</th>
                <th scope="col" class="num">Void</th>
                <th scope="col" class="num">Invoiced</th>
                <th scope="col" class="num">Collected</th>
              </tr>
            </thead>
            <tbody>
              {r.invoicesByMonth.map((m) => (
                <tr key={m.month}>
                  <th scope="row">{m.month}</th>
                  <td class="num">{String(m.invoices)}</td>
                  <td class="num">{String(m.paid)}</td>
                  <td class="num">{String(m.failed)}</td>
                  <td class="num">{String(m.void)}</td>
                  <td class="num">{rupiah(m.invoiced)}</td>
                  <td class="num">{rupiah(m.collected)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </Page>
  );
}

/** Every event of a subscription, oldest first, a page at a time. */
function subscriptionEventsAsAdmin(subscriptionId: string): Promise<SubscriptionEvent[]> {
  return allPages(async (pageToken) => {
    const r = await billingAdmin.listSubscriptionEventsAsAdmin({ subscriptionId, pageToken });
    return { rows: r.events, next: r.nextPageToken };
  });
}

function SubEventsCell({ id }: { id: string }) {
  const [events, setEvents] = useState<SubscriptionEvent[] | undefined>();
  const act = useAction();
  return (
    <details
      onToggle={(e) => {
        if ((e.currentTarget as HTMLDetailsElement).open && !events) {
          act.run(async () => setEvents(await subscriptionEventsAsAdmin(id)));
        }
      }}
    >
      <summary>Events</summary>
      <ErrorText error={act.error} />
      {events && <SubscriptionEvents events={events} />}
    </details>
  );
}

function AdminSubscriptions() {
  const [status, setStatus] = useState('0');
  const [app, setApp] = useState('');
  const [account, setAccount] = useState('');
  const [accountApplied, setAccountApplied] = useState('');
  const pager = usePager();
  const list = useLoad(
    () =>
      billingAdmin.listAllSubscriptions({
        pageSize: PAGE_SIZE,
        pageToken: pager.token,
        status: Number(status) as SubscriptionStatus,
        appId: app,
        accountId: accountApplied,
      }),
    [pager.token, status, app, accountApplied],
  );
  return (
    <Page title="All subscriptions">
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          pager.reset();
          setAccountApplied(account.trim());
        }}
      >
        <label for="s-status">Status</label>
        <select
          id="s-status"
          value={status}
          onChange={(e) => {
            pager.reset();
            setStatus(e.currentTarget.value);
          }}
        >
          <option value="0">All statuses</option>
          {enumOptions(SubscriptionStatus, (v) => subscriptionStatus(v as SubscriptionStatus))}
        </select>
        <label for="s-app">App</label>
        <AppSelect
          id="s-app"
          value={app}
          onChange={(v) => {
            pager.reset();
            setApp(v);
          }}
        />
        <label for="s-account">Account id</label>
        <input id="s-account" type="text" size={38} value={account} onInput={(e) => setAccount(e.currentTarget.value)} />
        <button type="submit">Filter</button>
      </form>
      <ErrorText error={list.error} />
      {list.loading && !list.data && <Loading what="subscriptions" />}
      {list.data && list.data.subscriptions.length === 0 && <p>No subscriptions match.</p>}
      {list.data && list.data.subscriptions.length > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Subscription</th>
              <th scope="col">Account</th>
              <th scope="col">Status</th>
              <th scope="col" class="num">Price</th>
              <th scope="col">Period ends</th>
              <th scope="col">Renewal</th>
              <th scope="col">Instance</th>
              <th scope="col">History</th>
            </tr>
          </thead>
          <tbody>
            {list.data.subscriptions.map((s) => (
              <tr key={s.id}>
                <th scope="row">
                  {s.appId} {s.planId}
                  <div class="muted">
                    <code>{s.id}</code>
                  </div>
                </th>
                <td>
                  <code>{s.accountId}</code>
                </td>
                <td>
                  <span class={`badge s-${SubscriptionStatus[s.status]?.toLowerCase()}`}>{subscriptionStatus(s.status)}</span>
                </td>
                <td class="num">{rupiah(s.price)}</td>
                <td>{day(s.currentPeriodEnd)}</td>
                <td>
                  {s.cancelAtPeriodEnd ? 'cancelled' : s.autoRenew ? 'auto-renew' : 'off'}
                  {s.nextPlanId && `, then ${s.nextPlanId}`}
                </td>
                <td>{s.instanceId ? <a href={href('admin', 'instances', s.instanceId)}>{s.instanceId.slice(0, 8)}</a> : '—'}</td>
                <td>
                  <SubEventsCell id={s.id} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Pager pager={pager} nextToken={list.data?.nextPageToken} />
    </Page>
  );
}

/** Whether an INVALID_ARGUMENT is about the operator's reason (the server names it). */
function isReasonError(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.InvalidArgument && /reason/i.test(errorMessage(e));
}

/** A textbox for an operator's reason, with the server's refusal of it right under it. */
function ReasonField(props: { id: string; label: string; hint: string; value: string; error: unknown; onInput: (v: string) => void }) {
  const bad = isReasonError(props.error);
  return (
    <>
      <label for={props.id}>{props.label}</label>
      <input
        id={props.id}
        type="text"
        required
        minLength={3}
        maxLength={500}
        value={props.value}
        aria-invalid={bad ? true : undefined}
        aria-describedby={bad ? `${props.id}-hint ${props.id}-error` : `${props.id}-hint`}
        onInput={(e) => props.onInput(e.currentTarget.value)}
      />
      <p id={`${props.id}-hint`} class="hint">
        {props.hint}
      </p>
      {bad && <FieldError id={`${props.id}-error`} error={props.error} />}
    </>
  );
}

function reasonDetail(reason: string, what: string): string {
  const r = reason.trim();
  return r ? `${what} Your reason, kept in the audit log: "${r}".` : `${what} You have not given a reason yet: the server asks for one.`;
}

/** Restart, stop and start any customer's instance, each with a reason (audited, and shown in the
 * instance's history to its owner) and a confirmation. */
function OperatorActions({ inst, onDone }: { inst: Instance; onDone: (i: Instance) => void }) {
  const [reason, setReason] = useState('');
  const [override, setOverride] = useState(false);
  const [done, setDone] = useState('');
  const act = useAction();
  const stopped = inst.desiredState === DesiredState.STOPPED;
  const deleted = inst.desiredState === DesiredState.DELETED;
  const run = (what: string, f: typeof operator.stopInstanceAsOperator) => {
    setDone('');
    act.run(async () => {
      const r = await f({ instanceId: inst.id, reason, overrideCapacity: override });
      // Each action gets its own reason.
      setReason('');
      setOverride(false);
      setDone(`${what}. The audit log and the customer's history of the instance show it with your reason.`);
      onDone(r);
    });
  };
  return (
    <section aria-labelledby="op-actions-title">
      <h2 id="op-actions-title">Operator actions</h2>
      <div class="form">
        <ReasonField
          id="op-reason"
          label="Reason for the action"
          hint="3-500 characters, e.g. a support ticket. The customer reads it in the instance's history."
          value={reason}
          error={act.error}
          onInput={setReason}
        />
        {stopped && (
          <label class="check">
            <input type="checkbox" checked={override} onChange={(e) => setOverride(e.currentTarget.checked)} /> Start even over the capacity ceiling
            (recorded)
          </label>
        )}
      </div>
      <div class="actions">
        <ConfirmButton
          label="Restart"
          question="Restart this customer's instance?"
          detail={reasonDetail(reason, "The app's workloads are restarted one by one.")}
          confirmLabel="Yes, restart it"
          disabled={act.busy || stopped || deleted}
          onConfirm={() => run('Restarted', (r) => operator.restartInstanceAsOperator(r))}
        />
        {stopped ? (
          <ConfirmButton
            label="Start"
            question="Start this customer's instance?"
            detail={reasonDetail(reason, override ? 'It starts even if that pushes committed capacity over the ceiling.' : 'It starts if the cluster has room under the ceiling.')}
            confirmLabel="Yes, start it"
            disabled={act.busy}
            onConfirm={() => run('Started', (r) => operator.startInstanceAsOperator(r))}
          />
        ) : (
          <ConfirmButton
            label="Stop"
            question="Stop this customer's instance?"
            detail={reasonDetail(reason, 'The app is scaled to zero; its data is kept and the customer can start it again.')}
            confirmLabel="Yes, stop it"
            danger
            disabled={act.busy || deleted}
            onConfirm={() => run('Stopped', (r) => operator.stopInstanceAsOperator(r))}
          />
        )}
      </div>
      {!isReasonError(act.error) && <ErrorText error={act.error} />}
      {done && (
        <p class="notice" role="status">
          {done}
        </p>
      )}
    </section>
  );
}

function yesNo(b: boolean): string {
  return b ? 'yes' : 'no';
}

/** What Kubernetes says about the instance (GetInstanceDiagnosticsAsOperator): read with a
 * reason, which the audit log keeps. */
function DiagnosticsSection({ id }: { id: string }) {
  const [reason, setReason] = useState('');
  const [lines, setLines] = useState('50');
  const [diag, setDiag] = useState<InstanceDiagnostics | undefined>();
  const read = useAction();
  return (
    <section aria-labelledby="diag-title">
      <h2 id="diag-title">Diagnostics</h2>
      <p>The instance's history, Kubernetes events, pods, volumes and log tails. Reading them is recorded in the audit log with your reason.</p>
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          read.run(async () => setDiag(await operator.getInstanceDiagnosticsAsOperator({ instanceId: id, reason, logLines: Number(lines) })));
        }}
      >
        <ReasonField
          id="diag-reason"
          label="Reason for reading the diagnostics"
          hint="3-500 characters, e.g. a support ticket."
          value={reason}
          error={read.error}
          onInput={setReason}
        />
        <label for="diag-lines">Log lines per container</label>
        <select id="diag-lines" value={lines} onChange={(e) => setLines(e.currentTarget.value)}>
          {['20', '50', '200', '500'].map((n) => (
            <option key={n} value={n}>
              {n}
            </option>
          ))}
        </select>
        {!isReasonError(read.error) && <ErrorText error={read.error} />}
        <button type="submit" disabled={read.busy}>
          {diag ? 'Read diagnostics again' : 'Read diagnostics'}
        </button>
      </form>
      {diag && <DiagnosticsView d={diag} />}
    </section>
  );
}

function DiagnosticsView({ d }: { d: InstanceDiagnostics }) {
  const containers = d.pods.flatMap((p) => p.containers.map((c) => ({ pod: p.name, c })));
  return (
    <div class="diagnostics">
      <p class="muted" role="status">
        Read from the cluster {when(d.observedAt)}; namespace <code>{d.namespace || '—'}</code>.
      </p>

      <h3 id="diag-history">Status history and actions</h3>
      {d.history.length === 0 ? (
        <p>No history yet.</p>
      ) : (
        <table tabIndex={0} aria-labelledby="diag-history">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Status</th>
              <th scope="col">What happened</th>
              <th scope="col">By</th>
            </tr>
          </thead>
          <tbody>
            {d.history.map((h, i) => (
              <tr key={i}>
                <td>
                  <time dateTime={isoTime(h.at)}>{when(h.at)}</time>
                </td>
                <td>
                  <StatusBadge status={h.status} />
                </td>
                <td>{h.reason}</td>
                <td>{actorName(h.actor)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h3 id="diag-events">Kubernetes events</h3>
      {d.events.length === 0 ? (
        <p>No events (Kubernetes keeps them for an hour).</p>
      ) : (
        <table tabIndex={0} aria-labelledby="diag-events">
          <thead>
            <tr>
              <th scope="col">Last seen</th>
              <th scope="col">Type</th>
              <th scope="col">Reason</th>
              <th scope="col">Object</th>
              <th scope="col">Message</th>
              <th scope="col" class="num">Count</th>
              <th scope="col">Source</th>
            </tr>
          </thead>
          <tbody>
            {d.events.map((e, i) => (
              <tr key={i}>
                <td>{when(e.lastSeen ?? e.firstSeen)}</td>
                <td>
                  <span class={`badge ${e.type === 'Warning' ? 's-warning' : 's-ready'}`}>{e.type}</span>
                </td>
                <td>{e.reason}</td>
                <td>
                  <code>{e.object}</code>
                </td>
                <td>{e.message}</td>
                <td class="num">{e.count}</td>
                <td>{e.source}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h3 id="diag-pods">Pods</h3>
      {d.pods.length === 0 ? (
        <p>No pods (the instance is stopped, or not placed yet).</p>
      ) : (
        <table tabIndex={0} aria-labelledby="diag-pods">
          <thead>
            <tr>
              <th scope="col">Pod</th>
              <th scope="col">Phase</th>
              <th scope="col">Node</th>
              <th scope="col" class="num">Restarts</th>
              <th scope="col">Last termination</th>
              <th scope="col">Conditions not met</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {d.pods.map((p) => {
              const restarts = p.containers.reduce((n, c) => n + c.restartCount, 0);
              const ended = p.containers.filter((c) => c.lastTerminationReason);
              const unmet = p.conditions.filter((c) => c.status !== 'True');
              return (
                <tr key={p.name}>
                  <th scope="row">
                    <code>{p.name}</code>
                  </th>
                  <td>{p.phase}</td>
                  <td>{p.node || 'not scheduled'}</td>
                  <td class="num">{restarts}</td>
                  <td>
                    {ended.length === 0
                      ? 'none'
                      : ended.map((c) => (
                          <div key={c.name}>
                            {c.name}: {c.lastTerminationReason} (exit {c.lastExitCode}) {when(c.lastTerminatedAt)}
                          </div>
                        ))}
                  </td>
                  <td>
                    {unmet.length === 0
                      ? 'none'
                      : unmet.map((c) => (
                          <div key={c.type}>
                            {c.type} {c.status}
                            {c.reason && `: ${c.reason}`}
                            {c.message && ` (${c.message})`}
                          </div>
                        ))}
                  </td>
                  <td>{when(p.createdAt)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}

      {containers.length > 0 && (
        <>
          <h3 id="diag-containers">Containers</h3>
          <table tabIndex={0} aria-labelledby="diag-containers">
            <thead>
              <tr>
                <th scope="col">Container</th>
                <th scope="col">Image</th>
                <th scope="col">Ready</th>
                <th scope="col">State</th>
                <th scope="col" class="num">Restarts</th>
              </tr>
            </thead>
            <tbody>
              {containers.map(({ pod, c }) => (
                <tr key={`${pod}/${c.name}`}>
                  <th scope="row">
                    <code>
                      {pod}/{c.name}
                    </code>
                    {c.init && ' (init)'}
                  </th>
                  <td>
                    <code>{c.image}</code>
                  </td>
                  <td>{yesNo(c.ready)}</td>
                  <td>
                    {c.state || 'not reported'}
                    {c.stateReason && `: ${c.stateReason}`}
                    {c.stateMessage && <div class="muted">{c.stateMessage}</div>}
                  </td>
                  <td class="num">{c.restartCount}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}

      <h3 id="diag-volumes">Volumes</h3>
      {d.volumes.length === 0 ? (
        <p>No volume claims.</p>
      ) : (
        <table tabIndex={0} aria-labelledby="diag-volumes">
          <thead>
            <tr>
              <th scope="col">Claim</th>
              <th scope="col">Phase</th>
              <th scope="col">Volume</th>
              <th scope="col">Storage class</th>
              <th scope="col" class="num">Requested</th>
              <th scope="col" class="num">Capacity</th>
            </tr>
          </thead>
          <tbody>
            {d.volumes.map((v) => (
              <tr key={v.claim}>
                <th scope="row">
                  <code>{v.claim}</code>
                </th>
                <td>{v.phase}</td>
                <td>{v.volume ? <code>{v.volume}</code> : 'not bound'}</td>
                <td>{v.storageClass || '—'}</td>
                <td class="num">{bytes(v.requestedBytes)}</td>
                <td class="num">{v.capacityBytes > 0n ? bytes(v.capacityBytes) : '—'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h3>Logs</h3>
      {containers.length === 0 && <p>No containers, so no logs.</p>}
      {containers.map(({ pod, c }) => (
        <details key={`${pod}/${c.name}`} class="log">
          <summary>
            Log of {pod}/{c.name} ({c.logTail.length} lines)
          </summary>
          {c.logTail.length > 0 ? (
            <pre tabIndex={0}>{c.logTail.join('\n')}</pre>
          ) : (
            <p class="muted">{c.logNote || 'Nothing logged.'}</p>
          )}
        </details>
      ))}
    </div>
  );
}

/** An account's suspension as the audit log tells it: its newest suspend_account or
 * unsuspend_account entry (the API has no call that reads it directly). Looks at the newest
 * 2,000 audit entries. */
type SuspensionState = { suspended: boolean; event?: AuditEvent };

async function suspensionFromAudit(accountId: string): Promise<SuspensionState> {
  let token = '';
  for (let i = 0; i < 4; i++) {
    const r = await admin.listAuditEvents({ pageSize: 500, pageToken: token });
    const e = r.events.find((e) => e.instanceId === accountId && (e.action === 'suspend_account' || e.action === 'unsuspend_account'));
    if (e) return { suspended: e.action === 'suspend_account', event: e };
    if (!r.nextPageToken) break;
    token = r.nextPageToken;
  }
  return { suspended: false };
}

function suspensionText(s: SuspensionState): string {
  if (!s.event) return 'Not suspended (no suspension in the recent audit log).';
  const by = `${when(s.event.at)} by ${s.event.actorEmail}`;
  return s.suspended ? `Suspended since ${by}: ${s.event.reason}` : `Not suspended; the last suspension was lifted ${by}: ${s.event.reason}`;
}

function suspensionResult(r: AccountSuspension): string {
  const n = (k: number) => `${k} instance${k === 1 ? '' : 's'}`;
  if (r.suspended) return `The account is suspended. Stopped ${n(r.instanceIds.length)}; its calls are refused with your reason.`;
  const left = r.notStarted.length ? ` Not started: ${r.notStarted.join('; ')}.` : '';
  return `The suspension is lifted. Started again: ${n(r.instanceIds.length)}.${left}`;
}

/** One customer's account: its instances and subscriptions, and suspending or lifting a
 * suspension with a reason and a confirmation. */
function AdminAccountPage({ id }: { id: string }) {
  const insts = useLoad(() => admin.listAllInstances({ accountId: id, pageSize: 100 }), [id]);
  const subs = useLoad(() => billingAdmin.listAllSubscriptions({ accountId: id, pageSize: 100 }), [id]);
  const state = useLoad(() => suspensionFromAudit(id), [id]);
  const [reason, setReason] = useState('');
  const [result, setResult] = useState('');
  const act = useAction();
  const first = insts.data?.instances[0];
  const suspended = state.data?.suspended;
  const run = (f: () => Promise<AccountSuspension>) => {
    setResult('');
    act.run(async () => {
      setResult(suspensionResult(await f()));
      setReason('');
      state.reload();
      insts.reload();
    });
  };
  return (
    <Page title="Customer account">
      <dl class="facts">
        <dt>Account id</dt>
        <dd>
          <code>{id}</code>
        </dd>
        <dt>Email</dt>
        <dd>{first ? first.email : insts.data ? 'not known here (the account has no instances)' : '…'}</dd>
        <dt>Customer id</dt>
        <dd>{first ? <code>{first.customerId}</code> : '—'}</dd>
        <dt>Suspension</dt>
        <dd>{state.data ? suspensionText(state.data) : '…'}</dd>
      </dl>
      <ErrorText error={state.error} />

      <section aria-labelledby="suspend-title">
        <h2 id="suspend-title">Suspension</h2>
        <p>
          A suspended account's running instances are stopped (data kept) and every call it makes is refused with your reason; its subscriptions
          keep their state. Lifting the suspension starts those instances again where there is room.
        </p>
        <div class="form">
          <ReasonField
            id="acct-reason"
            label="Reason"
            hint="3-500 characters, e.g. a support ticket. The customer is told it when their calls are refused."
            value={reason}
            error={act.error}
            onInput={setReason}
          />
        </div>
        <div class="actions">
          {suspended !== true && (
            <ConfirmButton
              label="Suspend account"
              question="Suspend this account?"
              detail={reasonDetail(reason, 'Its running instances stop and its calls are refused until you lift the suspension.')}
              confirmLabel="Yes, suspend it"
              danger
              disabled={act.busy || !state.data}
              onConfirm={() => run(() => operator.suspendAccount({ accountId: id, reason }))}
            />
          )}
          {suspended !== false && (
            <ConfirmButton
              label="Lift suspension"
              question="Lift this account's suspension?"
              detail={reasonDetail(reason, 'Its calls are accepted again and the instances the suspension stopped start again.')}
              confirmLabel="Yes, lift it"
              disabled={act.busy}
              onConfirm={() => run(() => operator.unsuspendAccount({ accountId: id, reason }))}
            />
          )}
        </div>
        {!isReasonError(act.error) && <ErrorText error={act.error} />}
        {result && (
          <p class="notice" role="status">
            {result}
          </p>
        )}
      </section>

      <h2>Instances</h2>
      <ErrorText error={insts.error} />
      {insts.loading && !insts.data && <Loading what="instances" />}
      {insts.data && insts.data.instances.length === 0 && <p>No instances.</p>}
      {insts.data && insts.data.instances.length > 0 && (
        <InstanceTable instances={insts.data.instances} reason />
      )}

      <h2>Subscriptions</h2>
      <ErrorText error={subs.error} />
      {subs.data && subs.data.subscriptions.length === 0 && <p>No subscriptions.</p>}
      {subs.data && subs.data.subscriptions.length > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Subscription</th>
              <th scope="col">Status</th>
              <th scope="col" class="num">Price</th>
              <th scope="col">Period ends</th>
            </tr>
          </thead>
          <tbody>
            {subs.data.subscriptions.map((s) => (
              <tr key={s.id}>
                <th scope="row">
                  {s.appId} {s.planId}
                </th>
                <td>
                  <span class={`badge s-${SubscriptionStatus[s.status]?.toLowerCase()}`}>{subscriptionStatus(s.status)}</span>
                </td>
                <td class="num">{rupiah(s.price)}</td>
                <td>{day(s.currentPeriodEnd)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <AccountInvoices id={id} />
      <p>
        <a href={href('admin', 'audit')}>Audit log</a>
      </p>
    </Page>
  );
}

/** Whether an error is about the amount of a credit note (the server names it, or says how much
 * is left to credit). */
function isAmountError(e: unknown): boolean {
  if (!(e instanceof ConnectError)) return false;
  const m = errorMessage(e);
  return (e.code === Code.InvalidArgument && /amount|currency/i.test(m)) || (e.code === Code.FailedPrecondition && /is left to credit/i.test(m));
}

/** A customer account's invoices and credit notes as operators see them (refund attempts and the
 * provider's last answer), and issuing a credit note on a paid invoice: an amount and a reason,
 * confirmed; the server's refusal shows under the field it is about. */
function AccountInvoices({ id }: { id: string }) {
  const list = useLoad(
    async () => ({
      invoices: await allPages(async (pageToken) => {
        const r = await billingAdmin.listInvoicesAsAdmin({ accountId: id, pageSize: 100, pageToken });
        return { rows: r.invoices, next: r.nextPageToken };
      }),
    }),
    [id],
  );
  const paid = (list.data?.invoices ?? []).filter((i) => i.status === InvoiceStatus.PAID);
  const [invoice, setInvoice] = useState('');
  const [amount, setAmount] = useState('');
  const [reason, setReason] = useState('');
  const [done, setDone] = useState('');
  const act = useAction();
  const chosen = invoice || paid[0]?.id || '';
  const chosenInvoice = paid.find((i) => i.id === chosen);
  const amountBad = isAmountError(act.error);
  const reasonBad = isReasonError(act.error);
  const issue = () => {
    setDone('');
    act.run(async () => {
      if (!/^\d+$/.test(amount.trim())) {
        throw new ConnectError('amount must be a positive whole number of rupiah', Code.InvalidArgument);
      }
      const r = await billingAdmin.creditInvoice({
        invoiceId: chosen,
        amount: { amount: BigInt(amount.trim()), currency: 'IDR' },
        reason,
      });
      setAmount('');
      setReason('');
      setDone(
        r.creditNote
          ? `Credit note of ${rupiah(r.creditNote.amount)} on ${r.invoice?.number ?? 'the invoice'}: ${creditNoteState(r.creditNote)}.`
          : 'Credit note issued.',
      );
      list.reload();
    });
  };
  return (
    <section aria-labelledby="acct-invoices-title">
      <h2 id="acct-invoices-title">Invoices</h2>
      <ErrorText error={list.error} />
      {list.loading && !list.data && <Loading what="invoices" />}
      {list.data && list.data.invoices.length === 0 && <p>No invoices.</p>}
      {list.data && list.data.invoices.length > 0 && (
        <>
          <InvoiceTable invoices={list.data.invoices} caption="The account's invoices" />
          <CreditNotes invoices={list.data.invoices} operator />
        </>
      )}
      <section aria-labelledby="credit-title">
        <h2 id="credit-title">Issue a credit note</h2>
        <p>
          The amount is refunded through the payment provider that settled the invoice and shown to the customer on the invoice with your reason. A
          refund the provider does not answer is tried again by billing.
        </p>
        {paid.length === 0 ? (
          <p>No paid invoice to credit.</p>
        ) : (
          <>
            <div class="form">
              <label for="credit-invoice">Invoice</label>
              <select id="credit-invoice" value={chosen} onChange={(e) => setInvoice(e.currentTarget.value)}>
                {paid.map((i) => (
                  <option key={i.id} value={i.id}>
                    {i.number}: {rupiah(i.amount)}
                    {i.credited && i.credited.amount > 0n ? `, ${rupiah(i.credited)} credited` : ''}
                  </option>
                ))}
              </select>
              <label for="credit-amount">Amount in rupiah</label>
              <input
                id="credit-amount"
                type="text"
                inputMode="numeric"
                required
                value={amount}
                aria-invalid={amountBad ? true : undefined}
                aria-describedby={amountBad ? 'credit-amount-hint credit-amount-error' : 'credit-amount-hint'}
                onInput={(e) => setAmount(e.currentTarget.value)}
              />
              <p id="credit-amount-hint" class="hint">
                Whole rupiah, e.g. 39500; at most what is left to credit on the invoice.
              </p>
              {amountBad && <FieldError id="credit-amount-error" error={act.error} />}
              <ReasonField
                id="credit-reason"
                label="Reason for the credit note"
                hint="3-500 characters, e.g. a support ticket. The customer reads it on the invoice."
                value={reason}
                error={act.error}
                onInput={setReason}
              />
            </div>
            <div class="actions">
              <ConfirmButton
                label="Issue credit note"
                question="Issue this credit note?"
                detail={reasonDetail(
                  reason,
                  `Rp ${amount.trim() || '?'} is refunded to the customer on ${chosenInvoice?.number ?? 'the invoice'} (${rupiah(chosenInvoice?.amount)}).`,
                )}
                confirmLabel="Yes, issue it"
                disabled={act.busy || !chosen}
                onConfirm={issue}
              />
            </div>
          </>
        )}
        {!amountBad && !reasonBad && <ErrorText error={act.error} />}
        {done && (
          <p class="notice" role="status">
            {done}
          </p>
        )}
      </section>
    </section>
  );
}

/** Finding a customer's account: by id, or among the owners of the newest instances (the API
 * has no listing of accounts). */
function AdminAccounts() {
  const [account, setAccount] = useState('');
  const owners = useLoad(() => admin.listAllInstances({ pageSize: 200 }), []);
  const seen = new Map<string, AdminInstance>();
  for (const ai of owners.data?.instances ?? []) if (!seen.has(ai.accountId)) seen.set(ai.accountId, ai);
  return (
    <Page title="Customer accounts">
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          if (account.trim()) window.location.hash = href('admin', 'accounts', account.trim()).slice(1);
        }}
      >
        <label for="a-account">Account id</label>
        <input id="a-account" type="text" size={38} required value={account} onInput={(e) => setAccount(e.currentTarget.value)} />
        <button type="submit">Open account</button>
      </form>
      <h2>Owners of the newest instances</h2>
      <ErrorText error={owners.error} />
      {owners.loading && !owners.data && <Loading what="accounts" />}
      {owners.data && seen.size === 0 && <p>No instances yet.</p>}
      {seen.size > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Email</th>
              <th scope="col">Account id</th>
              <th scope="col">Customer id</th>
            </tr>
          </thead>
          <tbody>
            {[...seen.values()].map((ai) => (
              <tr key={ai.accountId}>
                <th scope="row">
                  <a href={href('admin', 'accounts', ai.accountId)}>{ai.email}</a>
                </th>
                <td>
                  <code>{ai.accountId}</code>
                </td>
                <td>
                  <code>{ai.customerId}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}

/** Instances as operators list them: the fleet (`owner`: with each owner's email) and one
 * account's (`reason`: with the status reason). */
function InstanceTable({
  instances,
  owner = false,
  reason = false,
}: {
  instances: AdminInstance[];
  owner?: boolean;
  reason?: boolean;
}) {
  return (
    <table tabIndex={0}>
      <thead>
        <tr>
          <th scope="col">Instance</th>
          {owner && <th scope="col">Owner</th>}
          <th scope="col">Plan</th>
          <th scope="col">Status</th>
          <th scope="col">Created</th>
        </tr>
      </thead>
      <tbody>
        {instances.map((ai) => (
          <tr key={ai.instance?.id}>
            <th scope="row">
              <a href={href('admin', 'instances', ai.instance?.id ?? '')}>
                {ai.instance?.appId} {ai.instance?.id.slice(0, 8)}
              </a>
            </th>
            {owner && <td>{ai.email}</td>}
            <td>{ai.instance?.planId}</td>
            <td>
              {ai.instance && <StatusBadge status={ai.instance.status} />}
              {reason && <> {ai.instance?.statusReason}</>}
            </td>
            <td>{when(ai.instance?.createdAt)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
