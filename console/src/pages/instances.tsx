import { useEffect, useState } from 'preact/hooks';
import { Code, ConnectError } from '@connectrpc/connect';
import { DesiredState, InstanceStatus, type Credentials, type Instance, type InstanceHistoryEntry, type InstanceUsage } from '@kapal/client';
import { instances } from '../api';
import { LineChart } from '../charts';
import { ConfirmButton, Copy, ErrorText, Loading, Page, useAction, useLoad } from '../components';
import { bytes, instanceStatus, isoTime, millicores, when } from '../format';
import { go, href } from '../router';

export function Instances() {
  const list = useLoad(() => instances.listInstances({ pageSize: 200 }), []);
  return (
    <Page title="Your instances">
      {list.loading && !list.data && <Loading what="your instances" />}
      <ErrorText error={list.error} />
      {list.data && list.data.instances.length === 0 && (
        <p>
          You have no instances yet. <a href={href('catalog')}>Choose an app in the catalog</a>.
        </p>
      )}
      {list.data && list.data.instances.length > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Instance</th>
              <th scope="col">Plan</th>
              <th scope="col">Status</th>
              <th scope="col">URL</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {list.data.instances.map((i) => (
              <tr key={i.id}>
                <th scope="row">
                  <a href={href('instances', i.id)}>
                    {i.appId} {i.id.slice(0, 8)}
                  </a>
                </th>
                <td>{i.planId}</td>
                <td>
                  <StatusBadge status={i.status} />
                </td>
                <td>{i.url}</td>
                <td>{when(i.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}

export function StatusBadge({ status }: { status: InstanceStatus }) {
  return <span class={`badge s-${InstanceStatus[status]?.toLowerCase()}`}>{instanceStatus(status)}</span>;
}

const PHASES: { status: InstanceStatus; name: string }[] = [
  { status: InstanceStatus.PENDING, name: 'Ordered' },
  { status: InstanceStatus.PROVISIONING, name: 'Provisioning' },
  { status: InstanceStatus.READY, name: 'Ready' },
];

/** Where provisioning is: each phase done, current or to come, and the reason of the current one. */
export function Progress({ instance }: { instance: Instance }) {
  const failed = instance.status === InstanceStatus.FAILED;
  const s = instance.status;
  const reached =
    instance.readyAt || s === InstanceStatus.READY ? 3 : s === InstanceStatus.PROVISIONING || failed ? 1 : 0;
  return (
    <section aria-labelledby="progress-title">
      <h2 id="progress-title">Provisioning</h2>
      <ol class="phases">
        {PHASES.map((p, i) => {
          const state = i < reached ? 'done' : i === reached ? (failed ? 'failed' : 'current') : 'todo';
          return (
            <li key={p.name} class={`phase ${state}`} aria-current={state === 'current' ? 'step' : undefined}>
              <span class="phase-name">{p.name}</span>
              <span class="sr-only"> ({state === 'todo' ? 'to come' : state})</span>
            </li>
          );
        })}
      </ol>
      <p role="status" aria-live="polite">
        <StatusBadge status={instance.status} /> {instance.statusReason}
      </p>
    </section>
  );
}

type Sample = { t: number; u: InstanceUsage };

function metricsNote(u: InstanceUsage): string {
  return (u.metricsNote || 'not reported by the cluster').replace(/\.+$/, '');
}

export function InstancePage({ id }: { id: string }) {
  const loaded = useLoad(() => instances.getInstance({ instanceId: id }), [id]);
  const [live, setLive] = useState<Instance | undefined>();
  // The history the server keeps (ListInstanceEvents), read again on every change the watch
  // reports, so operators' actions and billing's holds appear with their reasons.
  const [changes, setChanges] = useState(0);
  const history = useLoad(() => instances.listInstanceEvents({ instanceId: id }), [id, changes]);
  const [watchError, setWatchError] = useState<unknown>();
  const [creds, setCreds] = useState<Credentials | undefined>();
  const [samples, setSamples] = useState<Sample[]>([]);
  const [usageError, setUsageError] = useState<unknown>();
  const act = useAction();
  const reveal = useAction();
  const inst = live ?? loaded.data;

  // The live status: the stream sends the current state first, then every change. Reconnects
  // (after a pause) when the connection drops; stops when the instance is gone.
  useEffect(() => {
    const abort = new AbortController();
    let retry: number | undefined;
    const watch = async () => {
      let gone = false;
      try {
        for await (const ev of instances.watchInstance({ instanceId: id }, { signal: abort.signal })) {
          gone = ev.instance?.status === InstanceStatus.DELETED;
          setWatchError(undefined);
          if (ev.instance) setLive(ev.instance);
          setChanges((n) => n + 1);
        }
        // The server ends the stream once the instance is deleted; any other end is a dropped
        // connection: watch again.
        if (!gone && !abort.signal.aborted) retry = window.setTimeout(watch, 3000);
      } catch (e) {
        if (abort.signal.aborted) return;
        setWatchError(e);
        if (e instanceof ConnectError && (e.code === Code.NotFound || e.code === Code.PermissionDenied || e.code === Code.Unauthenticated)) return;
        retry = window.setTimeout(watch, 3000);
      }
    };
    watch();
    return () => {
      abort.abort();
      window.clearTimeout(retry);
    };
  }, [id]);

  // Usage over the page's lifetime, every 5 seconds.
  useEffect(() => {
    let stop = false;
    let t: number | undefined;
    const poll = async () => {
      try {
        const u = await instances.getInstanceUsage({ instanceId: id });
        if (stop) return;
        setUsageError(undefined);
        setSamples((s) => [...s.slice(-359), { t: Date.now(), u }]);
      } catch (e) {
        if (!stop) setUsageError(e);
      }
      if (!stop) t = window.setTimeout(poll, 5000);
    };
    poll();
    return () => {
      stop = true;
      window.clearTimeout(t);
    };
  }, [id]);

  const action = (name: string, f: (r: { instanceId: string }) => Promise<Instance>) =>
    act.run(async () => {
      const r = await f({ instanceId: id });
      setLive(r);
      if (name === 'delete') setCreds(undefined);
    });

  if (!inst) {
    return (
      <Page title="Instance">
        {loaded.loading && <Loading what="the instance" />}
        <ErrorText error={loaded.error} />
      </Page>
    );
  }
  const running = inst.desiredState === DesiredState.RUNNING;
  const stopped = inst.desiredState === DesiredState.STOPPED;
  const deleted = inst.desiredState === DesiredState.DELETED;
  const last = samples[samples.length - 1]?.u;
  return (
    <Page title={`${inst.appId} instance`}>
      <dl class="facts">
        <dt>URL</dt>
        <dd>
          {inst.url ? (
            <a href={inst.url} rel="noopener noreferrer">
              {inst.url}
            </a>
          ) : (
            '—'
          )}
        </dd>
        <dt>Plan</dt>
        <dd>{inst.planId}</dd>
        <dt>Status</dt>
        <dd>
          <StatusBadge status={inst.status} /> {inst.statusReason}
        </dd>
        <dt>Created</dt>
        <dd>{when(inst.createdAt)}</dd>
        <dt>Ready since</dt>
        <dd>{when(inst.readyAt)}</dd>
        <dt>Subscription</dt>
        <dd>
          <a href={href('subscriptions')}>{inst.subscriptionId}</a>
        </dd>
        {inst.suspendedByBilling && (
          <>
            <dt>Billing</dt>
            <dd>Suspended because its subscription is unpaid or ended; pay to start it again.</dd>
          </>
        )}
        {inst.dataDeletedAfter && (
          <>
            <dt>Data removed after</dt>
            <dd>{when(inst.dataDeletedAfter)}</dd>
          </>
        )}
      </dl>

      <Progress instance={inst} />
      <ErrorText error={watchError} />

      <section aria-labelledby="actions-title">
        <h2 id="actions-title">Actions</h2>
        <div class="actions">
          {stopped ? (
            <ConfirmButton
              label="Start"
              question="Start this instance?"
              confirmLabel="Yes, start it"
              disabled={act.busy}
              onConfirm={() => action('start', (r) => instances.startInstance(r))}
            />
          ) : (
            <ConfirmButton
              label="Stop"
              question="Stop this instance?"
              detail="The app is scaled to zero; its data is kept and you can start it again."
              confirmLabel="Yes, stop it"
              disabled={act.busy || deleted}
              onConfirm={() => action('stop', (r) => instances.stopInstance(r))}
            />
          )}
          <ConfirmButton
            label="Restart"
            question="Restart this instance?"
            detail="The app's workloads are restarted one by one."
            confirmLabel="Yes, restart it"
            disabled={act.busy || !running}
            onConfirm={() => action('restart', (r) => instances.restartInstance(r))}
          />
          <ConfirmButton
            label="Delete"
            question="Delete this instance?"
            detail="The app stops now; its data is removed for good after the retention period."
            confirmLabel="Yes, delete it"
            danger
            disabled={act.busy || deleted}
            onConfirm={() => action('delete', (r) => instances.deleteInstance(r))}
          />
        </div>
        <ErrorText error={act.error} />
      </section>

      <section aria-labelledby="creds-title">
        <h2 id="creds-title">Credentials</h2>
        {!creds && (
          <button
            type="button"
            disabled={reveal.busy}
            onClick={() =>
              reveal.run(async () => {
                const full = await instances.getInstance({ instanceId: id });
                if (!full.credentials) throw new Error('No credentials yet: they exist once the instance is provisioned.');
                setCreds(full.credentials);
              })
            }
          >
            Reveal credentials
          </button>
        )}
        <ErrorText error={reveal.error} />
        {creds && (
          <>
            <dl class="facts">
              <dt>Login URL</dt>
              <dd>{creds.loginUrl}</dd>
              <dt>Username</dt>
              <dd>
                <code>{creds.username}</code> <Copy text={creds.username} label="Copy username" />
              </dd>
              <dt>Password</dt>
              <dd>
                <code data-testid="password">{creds.password}</code> <Copy text={creds.password} label="Copy password" />
              </dd>
            </dl>
            <button type="button" onClick={() => setCreds(undefined)}>
              Hide credentials
            </button>
          </>
        )}
      </section>

      <section aria-labelledby="usage-title">
        <h2 id="usage-title">Usage</h2>
        <ErrorText error={usageError} />
        {last && (
          <p>
            In use now: CPU {last.cpuMillis !== undefined ? millicores(last.cpuMillis) : 'not measured'} (limit {millicores(last.cpuLimitMillis)}); memory{' '}
            {last.memoryBytes !== undefined ? bytes(last.memoryBytes) : 'not measured'} (limit {bytes(last.memoryLimitBytes)}); storage{' '}
            {last.storageCapacityBytes > 0n
              ? `${last.storageUsedBytes !== undefined ? `${bytes(last.storageUsedBytes)} used` : 'use not reported'} of ${bytes(last.storageCapacityBytes)}`
              : 'no volume bound yet'}
            .
          </p>
        )}
        {last && (
          <div class="charts">
            <LineChart
              label="CPU"
              max={Number(last.cpuLimitMillis)}
              format={(v) => millicores(v)}
              note={metricsNote(last)}
              series={[{ name: 'CPU in use', cls: 'c1', points: samples.filter((s) => s.u.cpuMillis !== undefined).map((s) => ({ t: s.t, v: Number(s.u.cpuMillis) })) }]}
            />
            <LineChart
              label="Memory"
              max={Number(last.memoryLimitBytes)}
              format={(v) => bytes(v)}
              note={metricsNote(last)}
              series={[{ name: 'Memory in use', cls: 'c2', points: samples.filter((s) => s.u.memoryBytes !== undefined).map((s) => ({ t: s.t, v: Number(s.u.memoryBytes) })) }]}
            />
            <LineChart
              label="Storage"
              max={Number(last.storageCapacityBytes)}
              format={(v) => bytes(v)}
              note="the cluster does not report bytes used on the volumes"
              series={[{ name: 'Storage used', cls: 'c3', points: samples.filter((s) => s.u.storageUsedBytes !== undefined).map((s) => ({ t: s.t, v: Number(s.u.storageUsedBytes) })) }]}
            />
          </div>
        )}
      </section>

      <section aria-labelledby="history-title">
        <h2 id="history-title">Status history</h2>
        <ErrorText error={history.error} />
        {history.data ? (
          <HistoryList created={inst.createdAt && { at: inst.createdAt }} entries={history.data.events} />
        ) : (
          history.loading && <Loading what="the history" />
        )}
      </section>
      {deleted && (
        <p>
          <button type="button" onClick={() => go('instances')}>
            Back to your instances
          </button>
        </p>
      )}
    </Page>
  );
}


/** Who acted, in words, from InstanceHistoryEntry.actor. */
export function actorName(actor: string): string {
  switch (actor) {
    case '':
      return 'the cluster';
    case 'operator':
      return 'an operator';
    default:
      return actor;
  }
}

/** An instance's history, oldest first: when it was ordered, then each entry the server keeps,
 * with who acted when it was not the cluster. */
export function HistoryList({ created, entries }: { created?: { at: Instance['createdAt'] }; entries: InstanceHistoryEntry[] }) {
  return (
    <ol class="history">
      {created && (
        <li>
          <time dateTime={isoTime(created.at)}>{when(created.at)}</time> <StatusBadge status={InstanceStatus.PENDING} /> Ordered
        </li>
      )}
      {entries.map((e, i) => (
        <li key={i}>
          <time dateTime={isoTime(e.at)}>{when(e.at)}</time> <StatusBadge status={e.status} /> {e.reason}
          {e.actor && <span class="actor"> (by {actorName(e.actor)})</span>}
        </li>
      ))}
    </ol>
  );
}
