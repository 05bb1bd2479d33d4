import { useState } from 'preact/hooks';
import { accounts, sessionToken as sessionTokenNow } from '../api';
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

const EMAIL_KEY = 'kapal.email';
const NOTICE_KEY = 'kapal.notice';

function rememberEmail(email: string) {
  sessionStorage.setItem(EMAIL_KEY, email);
}

function rememberedEmail(): string {
  return sessionStorage.getItem(EMAIL_KEY) ?? '';
}

/** A one-time message for the next page (e.g. "password changed, log in"). */
function takeNotice(): string {
  const n = sessionStorage.getItem(NOTICE_KEY) ?? '';
  sessionStorage.removeItem(NOTICE_KEY);
  return n;
}

function Notice({ text }: { text: string }) {
  return text ? (
    <p class="notice" role="status">
      {text}
    </p>
  ) : null;
}

export function LogIn() {
  const session = useSession();
  const [notice] = useState(takeNotice);
  const [email, setEmail] = useState(rememberedEmail);
  const [password, setPassword] = useState('');
  const act = useAction();
  return (
    <Page title="Log in">
      <Notice text={notice} />
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
      <p>
        <a href={href('reset')}>Forgot your password?</a>
      </p>
      <p>
        <a href={href('verify')}>Enter an email verification code</a>
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
            if (r.verificationSent || !r.token) {
              // The server mailed a code instead of opening a session.
              rememberEmail(email);
              go('verify');
              return;
            }
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

export function VerifyEmail() {
  const session = useSession();
  const [email, setEmail] = useState(() => session.account?.email || rememberedEmail());
  const [code, setCode] = useState('');
  const [sent, setSent] = useState('');
  const act = useAction();
  const resend = useAction();
  return (
    <Page title="Verify your email">
      <p>We emailed a verification code to {email || 'your address'}. Enter it here to check out apps.</p>
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          act.run(async () => {
            await accounts.verifyEmail({ email, code });
            if (session.account) {
              session.signedIn(sessionTokenNow(), await accounts.whoAmI({}));
              go('catalog');
            } else {
              rememberEmail(email);
              sessionStorage.setItem(NOTICE_KEY, 'Your email address is verified. Log in to continue.');
              go('login');
            }
          });
        }}
      >
        <label for="verify-email">Email</label>
        <input id="verify-email" type="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        <label for="verify-code">Verification code</label>
        <input id="verify-code" type="text" inputMode="numeric" autocomplete="one-time-code" required value={code} onInput={(e) => setCode(e.currentTarget.value)} />
        <ErrorText error={act.error} />
        <button type="submit" class="primary" disabled={act.busy}>
          Verify email
        </button>
      </form>
      {session.account && (
        <>
          <p>No mail? A new code replaces the old one.</p>
          <button
            type="button"
            disabled={resend.busy}
            onClick={() =>
              resend.run(async () => {
                await accounts.resendVerification({});
                setSent(`A new code is on its way to ${session.account?.email}.`);
              })
            }
          >
            Send a new code
          </button>
          <ErrorText error={resend.error} />
          <Notice text={sent} />
        </>
      )}
      {!session.account && (
        <p>
          No mail, or the code expired? <a href={href('login')}>Log in</a> and ask for a new code here.
        </p>
      )}
    </Page>
  );
}

export function ResetPassword() {
  const [email, setEmail] = useState(rememberedEmail);
  const [requested, setRequested] = useState(false);
  const [code, setCode] = useState('');
  const [password, setPassword] = useState('');
  const ask = useAction();
  const set = useAction();
  return (
    <Page title="Reset your password">
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          ask.run(async () => {
            await accounts.requestPasswordReset({ email });
            setRequested(true);
          });
        }}
      >
        <label for="reset-email">Email</label>
        <input id="reset-email" type="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        <ErrorText error={ask.error} />
        <button type="submit" disabled={ask.busy}>
          Send reset code
        </button>
      </form>
      {requested && (
        <p class="notice" role="status">
          If {email} has an account, a reset code is on its way. It is good for 30 minutes.
        </p>
      )}
      <form
        class="form"
        onSubmit={(e) => {
          e.preventDefault();
          set.run(async () => {
            await accounts.resetPassword({ email, code, newPassword: password });
            rememberEmail(email);
            sessionStorage.setItem(NOTICE_KEY, 'Your password is changed, and every session of the account ended. Log in with the new password.');
            go('login');
          });
        }}
      >
        <h2>Set a new password</h2>
        <label for="reset-code">Reset code</label>
        <input id="reset-code" type="text" inputMode="numeric" autocomplete="one-time-code" required value={code} onInput={(e) => setCode(e.currentTarget.value)} />
        <label for="reset-password">New password</label>
        <input
          id="reset-password"
          type="password"
          autocomplete="new-password"
          aria-describedby="reset-password-hint"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
        <p id="reset-password-hint" class="hint">
          At least 10 characters, with letters and at least one digit or symbol.
        </p>
        <ErrorText error={set.error} />
        <button type="submit" class="primary" disabled={set.busy}>
          Set new password
        </button>
      </form>
    </Page>
  );
}
