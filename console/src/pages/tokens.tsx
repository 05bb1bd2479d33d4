import { useState } from 'preact/hooks';
import { Code, ConnectError } from '@connectrpc/connect';
import { ApiTokenScope } from '@kapal/client';
import { accounts, allPages, errorMessage } from '../api';
import { ConfirmButton, Copy, ErrorText, FieldError, Loading, Page, useAction, useLoad } from '../components';
import { isoTime, when } from '../format';

/** The longest lifetime CreateApiToken allows (account.proto: "at most 365 days"). The API does
 * not report it, so it is written here as documented; the server refuses more either way. */
export const MAX_TOKEN_DAYS = 365;
const LIFETIMES = [1, 7, 30, 90, 180, MAX_TOKEN_DAYS];

export function scopeName(s: ApiTokenScope): string {
  return s === ApiTokenScope.READ_ONLY ? 'Read only' : 'Full access';
}

/** Which field an INVALID_ARGUMENT from CreateApiToken is about, by the field the server names
 * in its message (`name ...`, `ttl_days ...`); anything else stays next to the button. */
function tokenErrorField(e: unknown): 'name' | 'days' | 'form' {
  if (e instanceof ConnectError && e.code === Code.InvalidArgument) {
    const m = errorMessage(e);
    if (/\bttl_days\b|\bdays?\b|expire/i.test(m)) return 'days';
    if (/\bname\b/i.test(m)) return 'name';
  }
  return 'form';
}

export function Tokens() {
  const list = useLoad(
    async () => ({
      apiTokens: await allPages(async (pageToken) => {
        const r = await accounts.listApiTokens({ pageToken });
        return { rows: r.apiTokens, next: r.nextPageToken };
      }),
    }),
    [],
  );
  const [name, setName] = useState('');
  const [days, setDays] = useState('90');
  const [scope, setScope] = useState(String(ApiTokenScope.FULL));
  const [secret, setSecret] = useState('');
  const create = useAction();
  const revoke = useAction();
  const field = create.error ? tokenErrorField(create.error) : undefined;
  return (
    <Page title="API tokens">
      <p>Tokens let scripts and partner integrations call Kapal's API as you. Send one as <code>authorization: Bearer &lt;token&gt;</code>.</p>
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          create.run(async () => {
            const r = await accounts.createApiToken({ name, ttlDays: Number(days), scope: Number(scope) as ApiTokenScope });
            setSecret(r.token);
            setName('');
            list.reload();
          });
        }}
      >
        <h2>New token</h2>
        <label for="token-name">Token name</label>
        <input
          id="token-name"
          type="text"
          required
          maxLength={64}
          value={name}
          aria-invalid={field === 'name' ? true : undefined}
          aria-describedby={field === 'name' ? 'token-name-error' : undefined}
          onInput={(e) => setName(e.currentTarget.value)}
        />
        {field === 'name' && <FieldError id="token-name-error" error={create.error} />}
        <label for="token-scope">Scope</label>
        <select id="token-scope" value={scope} aria-describedby="token-scope-hint" onChange={(e) => setScope(e.currentTarget.value)}>
          <option value={String(ApiTokenScope.FULL)}>Full access</option>
          <option value={String(ApiTokenScope.READ_ONLY)}>Read only</option>
        </select>
        <p id="token-scope-hint" class="hint">
          Read only: the token can look (instances, subscriptions, invoices, the catalog) but change nothing, and make no tokens.
        </p>
        <label for="token-days">Expires after</label>
        <select
          id="token-days"
          value={days}
          aria-invalid={field === 'days' ? true : undefined}
          aria-describedby={field === 'days' ? 'token-days-hint token-days-error' : 'token-days-hint'}
          onChange={(e) => setDays(e.currentTarget.value)}
        >
          {LIFETIMES.map((d) => (
            <option key={d} value={String(d)}>
              {d === 1 ? '1 day' : `${d} days`}
              {d === MAX_TOKEN_DAYS ? ' (the longest allowed)' : ''}
            </option>
          ))}
        </select>
        <p id="token-days-hint" class="hint">
          At most {MAX_TOKEN_DAYS} days; make a new token when it runs out.
        </p>
        {field === 'days' && <FieldError id="token-days-error" error={create.error} />}
        {field === 'form' && <ErrorText error={create.error} />}
        <button type="submit" class="primary" disabled={create.busy}>
          Create token
        </button>
      </form>
      {secret && (
        <div class="notice" role="status">
          <p>Your new token; it is shown only now:</p>
          <p>
            <code>{secret}</code> <Copy text={secret} label="Copy token" />
          </p>
          <button type="button" onClick={() => setSecret('')}>
            Done
          </button>
        </div>
      )}
      <h2>Your tokens</h2>
      {list.loading && !list.data && <Loading what="your tokens" />}
      <ErrorText error={list.error} />
      <ErrorText error={revoke.error} />
      {list.data?.apiTokens.length === 0 && <p>No tokens yet.</p>}
      {list.data && list.data.apiTokens.length > 0 && (
        <table tabIndex={0}>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Starts with</th>
              <th scope="col">Scope</th>
              <th scope="col">Created</th>
              <th scope="col">Expires</th>
              <th scope="col">Revoked</th>
              <th scope="col">
                <span class="sr-only">Revoke</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.data.apiTokens.map((t) => (
              <tr key={t.id}>
                <th scope="row">{t.name}</th>
                <td>
                  <code>{t.prefix}…</code>
                </td>
                <td>{scopeName(t.scope)}</td>
                <td>{when(t.createdAt)}</td>
                <td>
                  <time dateTime={isoTime(t.expiresAt)}>{when(t.expiresAt)}</time>
                </td>
                <td>{t.revokedAt ? when(t.revokedAt) : 'no'}</td>
                <td>
                  {!t.revokedAt && (
                    <ConfirmButton
                      label={`Revoke ${t.name}`}
                      question={`Revoke the token "${t.name}"?`}
                      detail="Calls with it fail from then on."
                      confirmLabel="Yes, revoke it"
                      danger
                      onConfirm={() =>
                        revoke.run(async () => {
                          await accounts.revokeApiToken({ id: t.id });
                          list.reload();
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
    </Page>
  );
}
