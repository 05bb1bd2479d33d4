import { useState } from 'preact/hooks';
import { accounts, allPages } from '../api';
import { ConfirmButton, Copy, ErrorText, Loading, Page, useAction, useLoad } from '../components';
import { when } from '../format';

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
  const [days, setDays] = useState('');
  const [secret, setSecret] = useState('');
  const create = useAction();
  const revoke = useAction();
  return (
    <Page title="API tokens">
      <p>Tokens let scripts and partner integrations call Kapal's API as you. Send one as <code>authorization: Bearer &lt;token&gt;</code>.</p>
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          create.run(async () => {
            const r = await accounts.createApiToken({ name, ttlDays: days ? Number(days) : 0 });
            setSecret(r.token);
            setName('');
            list.reload();
          });
        }}
      >
        <h2>New token</h2>
        <label for="token-name">Token name</label>
        <input id="token-name" type="text" required maxLength={64} value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <label for="token-days">Valid for (days)</label>
        <input
          id="token-days"
          type="number"
          min={1}
          max={365}
          placeholder="365"
          aria-describedby="token-days-hint"
          value={days}
          onInput={(e) => setDays(e.currentTarget.value)}
        />
        <p id="token-days-hint" class="hint">
          At most 365. Empty for 365 days.
        </p>
        <ErrorText error={create.error} />
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
                <td>{when(t.createdAt)}</td>
                <td>{when(t.expiresAt)}</td>
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
