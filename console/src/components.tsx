import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useId, useRef, useState } from 'preact/hooks';
import { errorMessage, isUnauthenticated } from './api';
import { go } from './router';
import { useSession } from './session';

/** The server's message, next to what caused it; announced to screen readers. */
export function ErrorText({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {errorMessage(error)}
    </p>
  );
}

/** The server's message for one field, right under it: give the field
 * `aria-describedby={id}` and `aria-invalid` while there is one. */
export function FieldError({ id, error }: { id: string; error: unknown }) {
  if (!error) return null;
  return (
    <p id={id} class="error" role="alert">
      {errorMessage(error)}
    </p>
  );
}

export type Loaded<T> = { data?: T; error?: unknown; loading: boolean; reload: () => void };

/** Loads once per change of deps; a 401 sends the user to the log-in page. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const session = useSession();
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({ loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, loading: false }),
      (error) => {
        if (!live) return;
        if (isUnauthenticated(error)) {
          // The session ended (expired, logged out elsewhere, password reset): log in again.
          sessionStorage.setItem('kapal.after-login', window.location.hash);
          session.signedIn('');
          go('login');
        }
        setState({ error, loading: false });
      },
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, reload };
}

/** Runs an action and keeps its error next to the button that started it. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const run = useCallback(async (f: () => Promise<unknown>) => {
    setBusy(true);
    setError(undefined);
    try {
      await f();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, setError };
}

// The first page of a visit keeps the browser's focus; later pages move it to their heading, so a
// screen reader announces the new page after a link or a redirect.
let firstPage = true;

export function Page({ title, children }: { title: string; children: ComponentChildren }) {
  const h = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    document.title = `${title} · Kapal`;
  }, [title]);
  useEffect(() => {
    if (firstPage) {
      firstPage = false;
      return;
    }
    if (!document.activeElement || document.activeElement === document.body || !h.current?.closest('main')?.contains(document.activeElement)) {
      h.current?.focus({ preventScroll: false });
    }
  }, []);
  return (
    <section class="page">
      <h1 id="page-title" ref={h} tabIndex={-1}>
        {title}
      </h1>
      {children}
    </section>
  );
}

export function Loading({ what }: { what: string }) {
  return <p class="muted" role="status">Loading {what}…</p>;
}

/**
 * A button that asks before it acts: a modal <dialog> with the question and two buttons,
 * "<confirmLabel>" and "Cancel".
 */
export function ConfirmButton(props: {
  label: string;
  question: string;
  detail?: string;
  confirmLabel: string;
  danger?: boolean;
  disabled?: boolean;
  onConfirm: () => void;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  const id = useId();
  return (
    <>
      <button type="button" class={props.danger ? 'danger' : ''} disabled={props.disabled} onClick={() => dialog.current?.showModal()}>
        {props.label}
      </button>
      <dialog ref={dialog} aria-labelledby={id}>
        <h2 id={id}>{props.question}</h2>
        {props.detail && <p>{props.detail}</p>}
        <div class="actions">
          <button
            type="button"
            class={props.danger ? 'danger' : 'primary'}
            onClick={() => {
              dialog.current?.close();
              props.onConfirm();
            }}
          >
            {props.confirmLabel}
          </button>
          <button type="button" onClick={() => dialog.current?.close()}>
            Cancel
          </button>
        </div>
      </dialog>
    </>
  );
}

/** Paging by next_page_token with a way back: keeps the tokens of the pages seen. */
export function usePager() {
  const [tokens, setTokens] = useState<string[]>(['']);
  const token = tokens[tokens.length - 1];
  return {
    token,
    page: tokens.length,
    next: (t: string) => setTokens((ts) => [...ts, t]),
    prev: () => setTokens((ts) => (ts.length > 1 ? ts.slice(0, -1) : ts)),
    reset: () => setTokens(['']),
  };
}

export function Pager({ pager, nextToken }: { pager: ReturnType<typeof usePager>; nextToken?: string }) {
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled={pager.page <= 1} onClick={pager.prev}>
        Previous page
      </button>
      <span>Page {pager.page}</span>
      <button type="button" disabled={!nextToken} onClick={() => nextToken && pager.next(nextToken)}>
        Next page
      </button>
    </nav>
  );
}

export function Copy({ text, label }: { text: string; label: string }) {
  const [done, setDone] = useState('');
  return (
    <>
      <button
        type="button"
        onClick={async () => {
          try {
            await navigator.clipboard.writeText(text);
            setDone('Copied');
          } catch (e) {
            setDone(`Copy failed: ${e instanceof Error ? e.message : String(e)}`);
          }
          window.setTimeout(() => setDone(''), 3000);
        }}
      >
        {label}
      </button>
      <span role="status" class="muted">
        {done}
      </span>
    </>
  );
}
