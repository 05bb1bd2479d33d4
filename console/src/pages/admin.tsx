// Operator pages (ADMIN accounts only; the API refuses the calls for anyone else anyway).
import { useEffect, useState } from 'preact/hooks';
import {
  AlertSeverity,
  InstanceStatus,
  SubscriptionStatus,
  type AdminInstance,
  type Credentials,
  type InstanceUsage,
  type ResourceAmounts,
  type SubscriptionEvent,
} from '@kapal/client';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { createClient } from '@connectrpc/connect';
import { AdminService, BillingAdminService } from '@kapal/client';
import { allPages, catalog, transport } from '../api';
import { BarChart, CapacityBar, LineChart } from '../charts';
import { ErrorText, Loading, Page, Pager, useAction, useLoad, usePager } from '../components';
import { bytes, day, instanceStatus, isoTime, millicores, percent, rupiah, rupiahNumber, severity, subscriptionStatus, when } from '../format';
import { href } from '../router';
import { StatusBadge } from './instances';
import { SubscriptionEvents } from './billing';

// Here rather than in api.ts: this module is loaded only when an operator opens an operator page.
const admin = createClient(AdminService, transport);
const billingAdmin = createClient(BillingAdminService, transport);

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
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Instance</th>
              <th scope="col">Owner</th>
              <th scope="col">Plan</th>
              <th scope="col">Status</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {list.data.instances.map((ai) => (
              <tr key={ai.instance?.id}>
                <th scope="row">
                  <a href={href('admin', 'instances', ai.instance?.id ?? '')}>
                    {ai.instance?.appId} {ai.instance?.id.slice(0, 8)}
                  </a>
                </th>
                <td>{ai.email}</td>
                <td>{ai.instance?.planId}</td>
                <td>{ai.instance && <StatusBadge status={ai.instance.status} />}</td>
                <td>{when(ai.instance?.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Pager pager={pager} nextToken={list.data?.nextPageToken} />
    </Page>
  );
}

function AdminInstancePage({ id }: { id: string }) {
  const got = useLoad(() => admin.getInstanceAsAdmin({ instanceId: id }), [id]);
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
  const inst = ai?.instance;
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
          {ai.email} (account {ai.accountId}, customer {ai.customerId})
        </dd>
        <dt>Namespace</dt>
        <dd>{ai.namespace}</dd>
        <dt>URL</dt>
        <dd>{inst.url}</dd>
        <dt>Plan</dt>
        <dd>{inst.planId}</dd>
        <dt>Status</dt>
        <dd>
          <StatusBadge status={inst.status} /> {inst.statusReason}
        </dd>
        {inst.suspendedByBilling && (
          <>
            <dt>Billing</dt>
            <dd>Suspended by billing</dd>
          </>
        )}
      </dl>

      <h2>Status history</h2>
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
              <th scope="col">Instance</th>
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
                <td>{e.instanceId ? <a href={href('admin', 'instances', e.instanceId)}>{e.instanceId}</a> : '—'}</td>
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
