// The customer's own account: who they are, their live sessions (the current one marked; others
// can be ended) and a change of password, which ends every other session (the server does).
import { useState } from 'preact/hooks';
import { Code, ConnectError } from '@connectrpc/connect';
import { accounts } from '../api';
import { ConfirmButton, ErrorText, FieldError, Loading, Page, useAction, useLoad } from '../components';
import { isoTime, when } from '../format';
import { useSession } from '../session';

/** Which field a ChangePassword error belongs to: PERMISSION_DENIED is the current password
 * (the server's documented answer for a wrong one), INVALID_ARGUMENT the new one (too weak). */
function passwordErrorField(e: unknown): 'current' | 'new' | 'form' {
  if (e instanceof ConnectError) {
    if (e.code === Code.PermissionDenied) return 'current';
    if (e.code === Code.InvalidArgument) return /^current_password\b/.test(e.rawMessage) ? 'current' : 'new';
  }
  return 'form';
}

export function AccountPage() {
  const { account } = useSession();
  const sessions = useLoad(() => accounts.listSessions({ pageSize: 100 }), []);
  const revoke = useAction();
  const change = useAction();
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [changed, setChanged] = useState('');
  const field = change.error ? passwordErrorField(change.error) : undefined;

  return (
    <Page title="Your account">
      {account && (
        <dl class="facts">
          <dt>Email</dt>
          <dd>
            {account.email} {account.emailVerified ? '(verified)' : '(not verified)'}
          </dd>
          <dt>Name</dt>
          <dd>{account.displayName || '—'}</dd>
          <dt>Customer id</dt>
          <dd>
            <code>{account.customerId}</code>
          </dd>
          <dt>Member since</dt>
          <dd>{when(account.createdAt)}</dd>
        </dl>
      )}

      <section aria-labelledby="sessions-title">
        <h2 id="sessions-title">Sessions</h2>
        <p>
          Where you are logged in. End a session you do not recognise; to end this one, log out. API tokens are on the{' '}
          <a href="#/tokens">API tokens</a> page.
        </p>
        {sessions.loading && !sessions.data && <Loading what="your sessions" />}
        <ErrorText error={sessions.error} />
        <ErrorText error={revoke.error} />
        {sessions.data && sessions.data.sessions.length > 0 && (
          <table tabIndex={0}>
            <caption class="sr-only">Your live sessions, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Opened</th>
                <th scope="col">Browser or client</th>
                <th scope="col">Last used</th>
                <th scope="col">Ends</th>
                <th scope="col">
                  <span class="sr-only">End</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {sessions.data.sessions.map((s) => (
                <tr key={s.id} class={s.current ? 'current' : undefined}>
                  <th scope="row">
                    <time dateTime={isoTime(s.createdAt)}>{when(s.createdAt)}</time>
                    {s.current && (
                      <>
                        {' '}
                        <span class="badge s-ready">This session</span>
                      </>
                    )}
                  </th>
                  <td class="agent">{s.userAgent || 'not told'}</td>
                  <td>{s.lastUsedAt ? when(s.lastUsedAt) : 'not since it was opened'}</td>
                  <td>{when(s.expiresAt)}</td>
                  <td>
                    {!s.current && (
                      <ConfirmButton
                        label="End session"
                        question="End this session?"
                        detail={`Opened ${when(s.createdAt)}${s.userAgent ? ` by ${s.userAgent}` : ''}. Whoever uses it is logged out.`}
                        confirmLabel="Yes, end it"
                        danger
                        disabled={revoke.busy}
                        onConfirm={() =>
                          revoke.run(async () => {
                            await accounts.revokeSession({ id: s.id });
                            sessions.reload();
                          })
                        }
                      />
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section aria-labelledby="password-title">
        <h2 id="password-title">Change password</h2>
        <form
          class="form"
          onSubmit={(e) => {
            e.preventDefault();
            setChanged('');
            change.run(async () => {
              const r = await accounts.changePassword({ currentPassword: current, newPassword: next });
              setCurrent('');
              setNext('');
              const n = r.sessionsEnded;
              setChanged(
                `Your password is changed. ${n === 0 ? 'No other session was open.' : `${n} other session${n === 1 ? ' was' : 's were'} ended.`} API tokens keep working.`,
              );
              sessions.reload();
            });
          }}
        >
          <label for="pw-current">Current password</label>
          <input
            id="pw-current"
            type="password"
            autoComplete="current-password"
            required
            value={current}
            aria-invalid={field === 'current' ? true : undefined}
            aria-describedby={field === 'current' ? 'pw-current-error' : undefined}
            onInput={(e) => setCurrent(e.currentTarget.value)}
          />
          {field === 'current' && <FieldError id="pw-current-error" error={change.error} />}
          <label for="pw-new">New password</label>
          <input
            id="pw-new"
            type="password"
            autoComplete="new-password"
            required
            value={next}
            aria-invalid={field === 'new' ? true : undefined}
            aria-describedby={field === 'new' ? 'pw-new-hint pw-new-error' : 'pw-new-hint'}
            onInput={(e) => setNext(e.currentTarget.value)}
          />
          <p id="pw-new-hint" class="hint">
            At least 10 characters, with letters and a digit or symbol. Every other session of your account ends.
          </p>
          {field === 'new' && <FieldError id="pw-new-error" error={change.error} />}
          {field === 'form' && <ErrorText error={change.error} />}
          <button type="submit" class="primary" disabled={change.busy}>
            Change password
          </button>
        </form>
        {changed && (
          <p class="notice" role="status">
            {changed}
          </p>
        )}
      </section>
    </Page>
  );
}
