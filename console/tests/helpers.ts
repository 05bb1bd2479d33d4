// What every console test needs: a watch on the browser's console (errors and CSP violations
// fail the test), axe-core on every page, and screenshots at a desktop's and a phone's size.
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { expect, type Page, type TestInfo } from '@playwright/test';

const require = createRequire(import.meta.url);
// axe-core's source, evaluated in the page: a <script> tag would be refused by the console's CSP
// (rightly), while page.evaluate runs through the DevTools protocol.
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** Unique enough for a test run. */
export function unique(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}@example.com`;
}

/** The one-time code (`1234-5678`) in the newest mail Kapal sent to `email`, read from Mailpit's
 * API (KAPAL_MAILPIT_API, set by tests/tests/console.rs): the real SMTP server the test's Kapal
 * sends to. Waits up to 20 s for the mail. */
export async function mailedCode(email: string, count = 1): Promise<string> {
  const api = process.env.KAPAL_MAILPIT_API;
  if (!api) throw new Error('KAPAL_MAILPIT_API is not set: run the specs through tests/tests/console.rs');
  const deadline = Date.now() + 20_000;
  for (;;) {
    const query = encodeURIComponent(`to:"${email}"`);
    const list = await (await fetch(`${api}/api/v1/search?query=${query}&limit=50`)).json();
    const messages: { ID: string }[] = list.messages ?? [];
    if (messages.length >= count) {
      // Newest first.
      const mail = await (await fetch(`${api}/api/v1/message/${messages[0].ID}`)).json();
      const code = String(mail.Text ?? '').match(/\b\d{4}-\d{4}\b/);
      if (!code) throw new Error(`no code in the mail "${mail.Subject}" to ${email}`);
      return code[0];
    }
    if (Date.now() > deadline) throw new Error(`${email} received ${messages.length} mail(s) in 20 s, expected ${count}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Signs up in the console, verifies the address with the code mailed to it (as a new customer
 * does: sign-up opens no session while the address is unverified), and logs in. Ends on the
 * customer's (empty) instance list. */
export async function signUpAndVerify(page: Page, email: string, password: string, name: string) {
  await visit(page, 'signup', 'Sign up');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByLabel('Name (optional)').fill(name);
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(heading(page, 'Verify your email')).toBeVisible();
  await expectAccessible(page, 'verify email');
  await expect(page.getByLabel('Email')).toHaveValue(email);
  await page.getByLabel('Verification code').fill(await mailedCode(email));
  await page.getByRole('button', { name: 'Verify email' }).click();
  await expect(heading(page, 'Log in')).toBeVisible();
  await expect(page.getByRole('status')).toContainText('Your email address is verified');
  await expect(page.getByLabel('Email')).toHaveValue(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(heading(page, 'Your instances')).toBeVisible();
}

/** Collects the browser console's errors and the page's uncaught exceptions. */
export function watchConsole(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
  return problems;
}

/** Some API errors are the point of a step (a second customer asking for someone else's
 * instance); the browser logs the failed request, so those lines are allowed by name. */
export function expectNoConsoleErrors(problems: string[], allowed: RegExp[] = []) {
  const left = problems.filter((p) => !allowed.some((a) => a.test(p)));
  expect(left, 'errors in the browser console (CSP violations show here too)').toEqual([]);
}

/** axe-core on the page as it is now: no serious or critical violation. */
export async function expectAccessible(page: Page, what: string) {
  await page.evaluate(AXE_SOURCE);
  const violations: { id: string; impact: string; help: string; nodes: string[] }[] = await page.evaluate(async () => {
    // @ts-expect-error axe is the global axe-core defines
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v: { id: string; impact: string; help: string; nodes: { target: string[] }[] }) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => n.target.join(' ')),
    }));
  });
  const serious = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  expect(serious, `axe-core on ${what}: serious or critical violations`).toEqual([]);
}

/** Screenshots of the page at 1280x800 and at a phone's 390x844, into KAPAL_SCREENSHOTS
 * (docs/screenshots when the Rust test is asked to update them) or the test's output. */
export async function screenshots(page: Page, name: string, info: TestInfo) {
  const dir = process.env.KAPAL_SCREENSHOTS || info.outputPath('screenshots');
  mkdirSync(dir, { recursive: true });
  const before = page.viewportSize();
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: path.join(dir, `${name}-desktop.png`), animations: 'disabled', caret: 'hide' });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: path.join(dir, `${name}-phone.png`), animations: 'disabled', caret: 'hide' });
  // axe on the phone layout too: what reflows may overlap or lose its contrast.
  await expectAccessible(page, `${name} at ${PHONE.width}x${PHONE.height}`);
  await page.setViewportSize(before ?? DESKTOP);
}

/** The page's <h1>. */
export function heading(page: Page, name: string | RegExp) {
  return page.getByRole('heading', { level: 1, name });
}

/** Goes to a hash route and waits for its heading; then axe, and screenshots when named. */
export async function visit(page: Page, route: string, h1: string | RegExp) {
  await page.goto(`/#/${route}`);
  await expect(heading(page, h1)).toBeVisible();
}
