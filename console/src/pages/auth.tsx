import { useState } from 'preact/hooks';
import { accounts } from '../api';
import { ErrorText, Page, useAction } from '../components';
import { go, href } from '../router';
import { useSession } from '../session';

function afterLogin() {
  const back = sessionStorage.getItem('kapal.after-login');
  sessionStorage.removeItem('kapal.after-login');
  if (back && back.startsWith('#/') && !back.startsWith('#/login') && !back.startsWith('#/signup')) {
    window.location.hash = back.slice(1);
  } else {
    go('instances');
  }
}

export function LogIn() {
  const session = useSession();
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const act = useAction();
  return (
    <Page title="Log in">
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          act.run(async () => {
            const r = await accounts.logIn({ email, password });
            session.signedIn(r.token, r.account);
            afterLogin();
          });
        }}
      >
        <label for="login-email">Email</label>
        <input id="login-email" type="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        <label for="login-password">Password</label>
        <input
          id="login-password"
          type="password"
          autocomplete="current-password"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
        <ErrorText error={act.error} />
        <button type="submit" class="primary" disabled={act.busy}>
          Log in
        </button>
      </form>
      <p>
        New to Kapal? <a href={href('signup')}>Create an account</a>
      </p>
    </Page>
  );
}

export function SignUp() {
  const session = useSession();
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [name, setName] = useState('');
  const act = useAction();
  return (
    <Page title="Sign up">
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          act.run(async () => {
            const r = await accounts.signUp({ email, password, displayName: name });
            session.signedIn(r.token, r.account);
            afterLogin();
          });
        }}
      >
        <label for="signup-email">Email</label>
        <input id="signup-email" type="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        <label for="signup-password">Password</label>
        <input
          id="signup-password"
          type="password"
          autocomplete="new-password"
          aria-describedby="signup-password-hint"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
        <p id="signup-password-hint" class="hint">
          At least 10 characters, with letters and at least one digit or symbol.
        </p>
        <label for="signup-name">Name (optional)</label>
        <input id="signup-name" type="text" autocomplete="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <ErrorText error={act.error} />
        <button type="submit" class="primary" disabled={act.busy}>
          Create account
        </button>
      </form>
      <p>
        Already have an account? <a href={href('login')}>Log in</a>
      </p>
    </Page>
  );
}
