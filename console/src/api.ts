// One grpc-web transport to the page's own origin (the gateway serves the console and the API on
// one port) and one client per service, all from the generated descriptors in @kapal/client.
import { Code, ConnectError, createClient, type Interceptor } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-web';
import {
  AccountService,
  CatalogService,
  InstanceService,
  OrderService,
  SubscriptionService,
} from '@kapal/client';

const TOKEN_KEY = 'kapal.session';

export function sessionToken(): string {
  try {
    return localStorage.getItem(TOKEN_KEY) ?? '';
  } catch {
    return '';
  }
}

export function setSessionToken(token: string) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the session lasts as long as the page.
  }
  memoryToken = token;
}

let memoryToken = sessionToken();

const bearer: Interceptor = (next) => (req) => {
  if (memoryToken) req.header.set('authorization', `Bearer ${memoryToken}`);
  return next(req);
};

export const transport = createGrpcWebTransport({
  baseUrl: new URL('.', window.location.href).href.replace(/\/$/, ''),
  interceptors: [bearer],
});

export const accounts = createClient(AccountService, transport);
export const catalog = createClient(CatalogService, transport);
export const orders = createClient(OrderService, transport);
export const instances = createClient(InstanceService, transport);
export const subscriptions = createClient(SubscriptionService, transport);

/** The message the server sent (without the code prefix connect adds), for a person. */
/** Every row of a paged listing, following next_page_token to the last page (at most
 * `maxPages` pages, so a server that never ends cannot hang the page). */
export async function allPages<T>(
  page: (pageToken: string) => Promise<{ rows: T[]; next: string }>,
  maxPages = 100,
): Promise<T[]> {
  const all: T[] = [];
  let token = '';
  for (let i = 0; i < maxPages; i++) {
    const { rows, next } = await page(token);
    all.push(...rows);
    if (!next || next === token) break;
    token = next;
  }
  return all;
}

export function errorMessage(err: unknown): string {
  if (err instanceof ConnectError) {
    return err.rawMessage || Code[err.code];
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

export function isUnauthenticated(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Unauthenticated;
}

export function isAborted(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Canceled;
}
