import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import type { FunctionComponent } from 'preact';
import type { Account } from '@kapal/client';
import { accounts, isUnauthenticated, sessionToken, setSessionToken } from './api';
import { ErrorText, Page } from './components';
import { LogIn, ResetPassword, SignUp, VerifyEmail } from './pages/auth';
import { Catalog, Checkout } from './pages/catalog';
import { InstancePage, Instances } from './pages/instances';
import { Invoices, Subscriptions } from './pages/billing';
import { Tokens } from './pages/tokens';
import { AccountPage } from './pages/account';
import { go, href, useRoute } from './router';
import { isAdmin, SessionContext } from './session';
import './style.css';

function NotFound() {
  return (
    <Page title="Page not found">
      <p>
        There is no such page. <a href={href('catalog')}>Go to the catalog</a>.
      </p>
    </Page>
  );
}

// The operator pages are a separate chunk, fetched the first time an operator opens one.
type AdminProps = { path: string[] };
let AdminPages: FunctionComponent<AdminProps> | undefined;
function LazyAdmin(props: AdminProps) {
  const [, loaded] = useState(0);
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    if (AdminPages) return;
    import('./pages/admin').then(
      (m) => {
        AdminPages = m.default;
        loaded(1);
      },
      setError,
    );
  }, []);
  if (AdminPages) return <AdminPages {...props} />;
  return error ? <p class="error" role="alert">The operator pages could not be loaded: {String(error)}</p> : <p role="status">Loading…</p>;
}

function NeedLogin() {
  useEffect(() => {
    sessionStorage.setItem('kapal.after-login', window.location.hash);
    go('login');
  }, []);
  return null;
}

function Routes({ path, account }: { path: string[]; account?: Account }) {
  const [first, a, b] = path;
  switch (first ?? 'catalog') {
    case 'login':
      return <LogIn />;
    case 'signup':
      return <SignUp />;
    case 'verify':
      return <VerifyEmail />;
    case 'reset':
      return <ResetPassword />;
    case 'catalog':
      return <Catalog />;
    case 'checkout':
      return <Checkout appId={a ?? ''} planId={b ?? ''} />;
  }
  if (!account) return <NeedLogin />;
  switch (first) {
    case 'instances':
      return a ? <InstancePage id={a} /> : <Instances />;
    case 'subscriptions':
      return <Subscriptions />;
    case 'invoices':
      return <Invoices />;
    case 'tokens':
      return <Tokens />;
    case 'account':
      return <AccountPage />;
    case 'admin':
      return isAdmin(account) ? <LazyAdmin path={path.slice(1)} /> : <NotFound />;
  }
  return <NotFound />;
}

function NavLink({ to, children, path }: { to: string; children: string; path: string[] }) {
  const here = '#/' + path.join('/');
  const current = here === to || (to !== '#/' && here.startsWith(to + '/'));
  return (
    <li>
      <a href={to} aria-current={current ? 'page' : undefined}>
        {children}
      </a>
    </li>
  );
}

function App() {
  const path = useRoute();
  const [account, setAccount] = useState<Account | undefined>();
  const [checked, setChecked] = useState(!sessionToken());
  // WhoAmI refused for another reason than an ended session (e.g. the account is suspended):
  // the server's message stays on every page, since log-in cannot help.
  const [refused, setRefused] = useState<unknown>();

  useEffect(() => {
    if (!sessionToken()) return;
    accounts.whoAmI({}).then(
      (a) => {
        setAccount(a);
        setChecked(true);
      },
      (e) => {
        if (isUnauthenticated(e)) setSessionToken('');
        else setRefused(e);
        setChecked(true);
      },
    );
  }, []);

  const session = {
    account,
    signedIn: (token: string, acc?: Account) => {
      setSessionToken(token);
      setAccount(token ? acc : undefined);
    },
  };

  const logOut = async () => {
    try {
      await accounts.logOut({});
    } catch {
      // The session is forgotten here either way.
    }
    session.signedIn('');
    go('login');
  };

  return (
    <SessionContext.Provider value={session}>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main')?.focus(); }}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href={href('catalog')}>
          Kapal
        </a>
        <nav aria-label="Main">
          <ul>
            <NavLink to="#/catalog" path={path}>Catalog</NavLink>
            {account && (
              <>
                <NavLink to="#/instances" path={path}>Instances</NavLink>
                <NavLink to="#/subscriptions" path={path}>Subscriptions</NavLink>
                <NavLink to="#/invoices" path={path}>Invoices</NavLink>
                <NavLink to="#/tokens" path={path}>API tokens</NavLink>
                <NavLink to="#/account" path={path}>Account</NavLink>
              </>
            )}
          </ul>
        </nav>
        <div class="who">
          {account ? (
            <>
              <span>
                {account.displayName || account.email}
                {isAdmin(account) && ' (operator)'}
              </span>
              <button type="button" onClick={logOut}>
                Log out
              </button>
            </>
          ) : (
            <>
              <a href={href('login')}>Log in</a>
              <a class="button primary" href={href('signup')}>
                Sign up
              </a>
            </>
          )}
        </div>
      </header>
      {isAdmin(account) && (
        <nav aria-label="Operator" class="ops">
          <ul>
            <NavLink to="#/admin/instances" path={path}>All instances</NavLink>
            <NavLink to="#/admin/capacity" path={path}>Capacity</NavLink>
            <NavLink to="#/admin/alerts" path={path}>Alerts</NavLink>
            <NavLink to="#/admin/audit" path={path}>Audit log</NavLink>
            <NavLink to="#/admin/revenue" path={path}>Revenue</NavLink>
            <NavLink to="#/admin/subscriptions" path={path}>All subscriptions</NavLink>
            <NavLink to="#/admin/accounts" path={path}>Accounts</NavLink>
          </ul>
        </nav>
      )}
      <main id="main" tabIndex={-1}>
        {!account && <ErrorText error={refused} />}
        {checked ? <Routes path={path} account={account} /> : <p role="status">Loading…</p>}
      </main>
      <footer class="foot">
        <p>Kapal · prices in Rupiah (IDR)</p>
      </footer>
    </SessionContext.Provider>
  );
}

render(<App />, document.getElementById('app')!);
