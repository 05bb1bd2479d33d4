// The console as served by `kapal server`: the page, its headers and its CSP, and a sign-up.
import { expect, test } from '@playwright/test';
import { expectAccessible, expectNoConsoleErrors, heading, signUpAndVerify, unique, watchConsole } from './helpers';

test('the console loads from the gateway under a strict CSP, with no console errors', async ({ page, baseURL }) => {
  const problems = watchConsole(page);
  const origin = new URL(baseURL!).origin;
  const sameOrigin: string[] = [];
  const elsewhere: string[] = [];
  page.on('request', (r) => {
    (new URL(r.url()).origin === origin ? sameOrigin : elsewhere).push(r.url());
  });

  const res = await page.goto('/');
  expect(res?.status()).toBe(200);
  const headers = res?.headers() ?? {};
  const csp = headers['content-security-policy'] ?? '';
  for (const directive of [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "object-src 'none'",
  ]) {
    expect(csp).toContain(directive);
  }
  expect(csp).not.toContain('unsafe');
  expect(headers['x-content-type-options']).toBe('nosniff');
  expect(headers['referrer-policy']).toBe('no-referrer');
  expect(headers['cache-control']).toBe('no-cache');

  // The catalog, read over grpc-web from the page's own origin.
  await expect(heading(page, 'Catalog')).toBeVisible();
  await expect(page.getByRole('article', { name: 'n8n' })).toBeVisible();
  await expect(page.getByRole('article', { name: 'n8n' })).toContainText('Rp');
  await expectAccessible(page, 'the catalog');

  // Nothing from another origin, ever (no CDN, no fonts, no analytics).
  expect(elsewhere).toEqual([]);
  expect(sameOrigin.some((u) => u.includes('/kapal.v1.CatalogService/ListApps'))).toBe(true);
  expectNoConsoleErrors(problems);

  // The CSP is enforced, not only sent: an injected inline script is refused. (eval cannot be
  // checked from here: code Playwright evaluates through DevTools is exempt from the page's CSP.)
  const injected = await page.evaluate(() => {
    const s = document.createElement('script');
    s.textContent = 'window.__kapalInline = true;';
    document.head.append(s);
    return (window as unknown as { __kapalInline?: boolean }).__kapalInline ?? false;
  });
  expect(injected).toBe(false);
  expect(problems.some((p) => p.includes('Content Security Policy'))).toBe(true);
});

test('a new customer signs up in the console', async ({ page }) => {
  const problems = watchConsole(page);
  await page.goto('/#/signup');
  await expect(heading(page, 'Sign up')).toBeVisible();
  await expectAccessible(page, 'sign-up');

  // The server's own message, next to the form, for a password it refuses.
  await page.getByLabel('Email').fill(unique('weak'));
  await page.getByLabel('Password').fill('short');
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByRole('alert')).toContainText(/password/i);

  // A good one: the console asks for the code Kapal mailed, then for the password.
  await signUpAndVerify(page, unique('smoke'), 'correct horse 42', 'Smoke Test');
  await expect(page.getByRole('banner')).toContainText('Smoke Test');
  await expectAccessible(page, 'an empty instance list');
  expectNoConsoleErrors(problems, [/status of 400|invalid_argument|InvalidArgument/i]);
});
