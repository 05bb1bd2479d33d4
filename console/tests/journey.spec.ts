// The whole story of issue 16 in the browser, against a real `kapal server` and the local
// cluster: a customer signs up, takes an n8n trial, watches it become READY, reveals and copies
// its credentials, stops and starts it, changes plan and cancels; a second customer sees none of
// it; an operator (made by tests/tests/console.rs the way `kapal admin grant` does) sees both
// customers' instances, reads the first one's credentials with a reason that the audit log then
// shows, and looks at capacity and the revenue charts. axe-core runs on every page; the main
// pages are photographed at a desktop's and a phone's size.
import { expect, test, type Browser, type BrowserContext, type Page } from '@playwright/test';
import {
  expectAccessible,
  expectNoConsoleErrors,
  heading,
  screenshots,
  signUpAndVerify,
  unique,
  visit,
  watchConsole,
} from './helpers';

test.describe.configure({ mode: 'serial' });

const PASSWORD = 'correct horse 42';
const READY_TIMEOUT = 240_000;
const AUDIT_REASON = process.env.KAPAL_AUDIT_REASON || `support ticket ${Date.now()}: the customer cannot log in`;
const TICKET = `T-${Date.now().toString(36)}`;
const STOP_REASON = `support ticket ${TICKET}: stopped to restore a backup`;
const START_REASON = `support ticket ${TICKET}: backup restored, started again`;
const DIAG_REASON = `support ticket ${TICKET}: the customer reports slow pages`;
const SUSPEND_REASON = `abuse report ${TICKET}: outgoing spam from this account`;
const UNSUSPEND_REASON = `abuse report ${TICKET}: resolved with the customer`;

/** An operator's browser (the account tests/tests/console.rs made), logged in. */
async function operatorPage(browser: Browser) {
  const email = process.env.KAPAL_ADMIN_EMAIL;
  expect(email, 'KAPAL_ADMIN_EMAIL (set by tests/tests/console.rs)').toBeTruthy();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = watchConsole(page);
  await visit(page, 'login', 'Log in');
  await page.getByLabel('Email').fill(email!);
  await page.getByLabel('Password').fill(process.env.KAPAL_ADMIN_PASSWORD!);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('navigation', { name: 'Operator' })).toBeVisible();
  return { email: email!, context, page, problems };
}

/** The audit log's row with this reason. */
function auditRow(page: Page, reason: string) {
  return page.getByRole('row').filter({ hasText: reason });
}

/** One customer's browser: its own context (storage, clipboard), its page, its console. */
type Customer = { email: string; name: string; context: BrowserContext; page: Page; problems: string[] };

async function newCustomer(browser: Browser, baseURL: string, name: string): Promise<Customer> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(baseURL).origin });
  const page = await context.newPage();
  return { email: unique(name.toLowerCase()), name, context, page, problems: watchConsole(page) };
}

async function signUp(c: Customer) {
  await signUpAndVerify(c.page, c.email, PASSWORD, c.name);
}

/** The instance page's live status line (in the Provisioning section). */
function liveStatus(page: Page) {
  return page.getByRole('region', { name: 'Provisioning' }).getByRole('status');
}

/** Confirms an action through its dialog. */
async function confirm(page: Page, button: string, yes: string) {
  await page.getByRole('button', { name: button, exact: true }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toBeVisible();
  await dialog.getByRole('button', { name: yes }).click();
  await expect(dialog).toBeHidden();
}

let alice: Customer;
let bob: Customer;
let instanceId = '';
let instanceLink = '';
let password = '';
let bobInstanceLink = '';
let bobInstanceId = '';

test.afterAll(async () => {
  await alice?.context.close();
  await bob?.context.close();
});

test('a new customer signs up and checks out an n8n trial', async ({ browser, baseURL }, info) => {
  alice = await newCustomer(browser, baseURL!, 'Alice');
  const page = alice.page;

  await visit(page, 'catalog', 'Catalog');
  const n8n = page.getByRole('article', { name: 'n8n' });
  // Prices in Rupiah, as Intl writes them for id-ID.
  await expect(n8n).toContainText(/Rp\s?79\.000/);
  await expectAccessible(page, 'the catalog');
  await screenshots(page, 'catalog', info);

  await visit(page, 'login', 'Log in');
  await expectAccessible(page, 'log-in');
  await screenshots(page, 'log-in', info);

  await signUp(alice);
  await expect(page.getByText('You have no instances yet')).toBeVisible();

  await visit(page, 'catalog', 'Catalog');
  await n8n.getByRole('link', { name: 'Try n8n free' }).click();
  await expect(heading(page, 'Checkout')).toBeVisible();
  await expectAccessible(page, 'checkout');
  await screenshots(page, 'checkout', info);
  await page.getByRole('button', { name: 'Start free trial' }).click();

  // The instance page: live progress from WatchInstance until READY.
  await expect(heading(page, 'n8n instance')).toBeVisible({ timeout: 60_000 });
  instanceId = decodeURIComponent(new URL(page.url()).hash.split('/').pop() ?? '');
  expect(instanceId).toMatch(/^[0-9a-f-]{36}$/);
  instanceLink = `n8n ${instanceId.slice(0, 8)}`;
  const progress = page.getByRole('region', { name: 'Provisioning' });
  await expect(progress.getByRole('listitem')).toHaveText([/Ordered/, /Provisioning/, /Ready/]);
  await expect(liveStatus(page)).toContainText('Ready', { timeout: READY_TIMEOUT });
  await expect(progress.getByRole('listitem').nth(2)).toContainText('(done)');
  // The status history the page saw: progress, then READY as the last word.
  const history = page.getByRole('region', { name: 'Status history' }).getByRole('listitem');
  await expect(history.last()).toContainText('Ready');
  const seen = await history.allTextContents();
  expect(seen.length, `statuses seen: ${JSON.stringify(seen)}`).toBeGreaterThanOrEqual(2);
  expect(seen.slice(0, -1).some((s) => /Pending|Provisioning/.test(s)), JSON.stringify(seen)).toBe(true);
  await expectAccessible(page, 'an instance');
  await screenshots(page, 'instance', info);
  expectNoConsoleErrors(alice.problems);
});

test('the customer reveals and copies the credentials', async () => {
  const page = alice.page;
  const creds = page.getByRole('region', { name: 'Credentials' });
  await creds.getByRole('button', { name: 'Reveal credentials' }).click();
  password = (await creds.getByTestId('password').textContent()) ?? '';
  expect(password.length).toBeGreaterThanOrEqual(16);
  await creds.getByRole('button', { name: 'Copy password' }).click();
  await expect(creds.getByText('Copied')).toBeVisible();
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(password);
  await expectAccessible(page, 'revealed credentials');
  await creds.getByRole('button', { name: 'Hide credentials' }).click();
  await expect(creds.getByTestId('password')).toHaveCount(0);
});

test('the customer stops the instance and starts it again', async () => {
  const page = alice.page;
  const actions = page.getByRole('region', { name: 'Actions' });
  // Cancel changes nothing.
  await actions.getByRole('button', { name: 'Stop', exact: true }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  await expect(liveStatus(page)).toContainText('Ready');

  await confirm(page, 'Stop', 'Yes, stop it');
  await expect(liveStatus(page)).toContainText(/Stopping|Suspended|Stopped/, { timeout: READY_TIMEOUT });
  await expect(actions.getByRole('button', { name: 'Start', exact: true })).toBeVisible();
  await expect(liveStatus(page)).toContainText('Suspended', { timeout: READY_TIMEOUT });

  await confirm(page, 'Start', 'Yes, start it');
  await expect(liveStatus(page)).toContainText('Ready', { timeout: READY_TIMEOUT });
  await expect(actions.getByRole('button', { name: 'Stop', exact: true })).toBeVisible();
  const history = await page.getByRole('region', { name: 'Status history' }).getByRole('listitem').allTextContents();
  expect(history.some((h) => h.includes('Suspended')), JSON.stringify(history)).toBe(true);
  expectNoConsoleErrors(alice.problems);
});

test('the customer changes plan and cancels the subscription', async ({}, info) => {
  const page = alice.page;
  await visit(page, 'subscriptions', 'Subscriptions');
  const sub = page.getByRole('article', { name: 'n8n, Free trial' });
  await expect(sub).toContainText('Trialing');
  await sub.getByLabel('Plan after the trial').selectOption('starter');
  await sub.getByRole('button', { name: 'Change plan' }).click();
  await expect(sub).toContainText('Starter from the next renewal');
  await expectAccessible(page, 'subscriptions');
  await screenshots(page, 'subscriptions', info);

  await sub.getByRole('button', { name: 'Cancel subscription' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toBeVisible();
  await expectAccessible(page, 'the cancel dialog');
  await dialog.getByRole('button', { name: 'Yes, cancel it' }).click();
  await expect(sub).toContainText('cancelled: ends at the end of the period');
  await expect(sub.getByRole('button', { name: 'Cancel subscription' })).toHaveCount(0);
  await sub.getByText('History of this subscription').click();
  await expect(sub.getByRole('table')).toBeVisible();

  await visit(page, 'invoices', 'Invoices');
  await expect(page.getByRole('table')).toContainText('Rp');
  await expectAccessible(page, 'invoices');
  await screenshots(page, 'invoices', info);

  await visit(page, 'tokens', 'API tokens');
  await expectAccessible(page, 'API tokens');

  await visit(page, 'instances', 'Your instances');
  await expect(page.getByRole('link', { name: instanceLink })).toBeVisible();
  await expectAccessible(page, 'instances');
  await screenshots(page, 'instances', info);
  expectNoConsoleErrors(alice.problems);
});

test('another customer sees none of it', async ({ browser, baseURL }) => {
  bob = await newCustomer(browser, baseURL!, 'Bob');
  const page = bob.page;
  await signUp(bob);
  await expect(page.getByText('You have no instances yet')).toBeVisible();
  await expect(page.getByRole('link', { name: instanceLink })).toHaveCount(0);
  await visit(page, 'subscriptions', 'Subscriptions');
  await expect(page.getByText('No subscriptions yet')).toBeVisible();
  await visit(page, 'invoices', 'Invoices');
  await expect(page.getByText('No invoices yet')).toBeVisible();

  // Alice's instance by its address: the server's refusal, and nothing of hers on the page.
  await page.goto(`/#/instances/${instanceId}`);
  await expect(page.getByRole('alert').first()).toBeVisible();
  await expect(page.getByTestId('password')).toHaveCount(0);
  await expect(page.getByRole('main')).not.toContainText(alice.email);
  // No operator pages for a customer.
  await expect(page.getByRole('navigation', { name: 'Operator' })).toHaveCount(0);
  await page.goto('/#/admin/instances');
  await expect(heading(page, 'Page not found')).toBeVisible();
  await expectAccessible(page, 'page not found');

  // Bob takes a trial of his own, for the operator to see beside Alice's.
  await visit(page, 'catalog', 'Catalog');
  await page.getByRole('article', { name: 'Ghost' }).getByRole('link', { name: 'Try Ghost free' }).click();
  await page.getByRole('button', { name: 'Start free trial' }).click();
  await expect(heading(page, 'ghost instance')).toBeVisible({ timeout: 60_000 });
  const bobId = decodeURIComponent(new URL(page.url()).hash.split('/').pop() ?? '');
  bobInstanceLink = `ghost ${bobId.slice(0, 8)}`;
  bobInstanceId = bobId;
  // The refusals above are logged by the browser as failed calls; nothing else may be.
  expectNoConsoleErrors(bob.problems, [/Failed to load resource/]);
});

test('an operator sees both customers, reads credentials with a reason, and the audit log shows it', async ({
  browser,
  baseURL,
}, info) => {
  const email = process.env.KAPAL_ADMIN_EMAIL;
  const adminPassword = process.env.KAPAL_ADMIN_PASSWORD;
  expect(email, 'KAPAL_ADMIN_EMAIL (set by tests/tests/console.rs)').toBeTruthy();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = watchConsole(page);
  try {
    await visit(page, 'login', 'Log in');
    await page.getByLabel('Email').fill(email!);
    await page.getByLabel('Password').fill(adminPassword!);
    await page.getByRole('button', { name: 'Log in' }).click();
    const ops = page.getByRole('navigation', { name: 'Operator' });
    await expect(ops).toBeVisible();

    await ops.getByRole('link', { name: 'All instances' }).click();
    await expect(heading(page, 'All instances')).toBeVisible();
    await expect(page.getByRole('link', { name: instanceLink })).toBeVisible();
    await expect(page.getByRole('link', { name: bobInstanceLink })).toBeVisible();
    await expect(page.getByRole('table')).toContainText(alice.email);
    await expect(page.getByRole('table')).toContainText(bob.email);
    await expectAccessible(page, 'all instances');
    await screenshots(page, 'admin-instances', info);

    await page.getByRole('link', { name: instanceLink }).click();
    await expect(heading(page, `n8n instance of ${alice.email}`)).toBeVisible();
    await page.getByLabel('Reason for reading the credentials').fill(AUDIT_REASON);
    await page.getByRole('button', { name: 'Read credentials' }).click();
    await expect(page.getByTestId('password')).toHaveText(password);
    await expectAccessible(page, 'an instance, as an operator');
    await screenshots(page, 'admin-instance', info);

    await page.getByRole('main').getByRole('link', { name: 'Audit log' }).click();
    await expect(heading(page, 'Audit log')).toBeVisible();
    const read = page.getByRole('row').filter({ hasText: AUDIT_REASON });
    await expect(read).toHaveCount(1);
    await expect(read).toContainText(email!);
    await expect(read).toContainText(instanceId);
    await expectAccessible(page, 'the audit log');
    await screenshots(page, 'admin-audit', info);

    await ops.getByRole('link', { name: 'Capacity' }).click();
    await expect(heading(page, 'Capacity')).toBeVisible();
    await expect(page.getByRole('img', { name: /^CPU: allocatable .*ceiling \d+ %/ })).toBeVisible();
    await expect(page.getByRole('img', { name: /^Memory: allocatable .*ceiling/ })).toBeVisible();
    await expect(page.getByRole('img', { name: /^Pods:/ })).toBeVisible();
    await expectAccessible(page, 'capacity');
    await screenshots(page, 'admin-capacity', info);

    await ops.getByRole('link', { name: 'Revenue' }).click();
    await expect(heading(page, 'Revenue')).toBeVisible();
    for (const chart of ['MRR per app', 'Subscriptions per app by status', 'Invoiced and collected per month']) {
      await expect(page.getByRole('img', { name: new RegExp(`^${chart}`) })).toBeVisible();
    }
    await expect(page.getByRole('img', { name: /^Subscriptions per app by status/ })).toContainText(/n8n|ghost/);
    await expectAccessible(page, 'revenue');
    await screenshots(page, 'admin-revenue', info);

    await ops.getByRole('link', { name: 'Alerts' }).click();
    await expect(heading(page, 'Alerts')).toBeVisible();
    await expectAccessible(page, 'alerts');

    await ops.getByRole('link', { name: 'All subscriptions' }).click();
    await expect(heading(page, 'All subscriptions')).toBeVisible();
    // Alice's subscription (by its instance): the plan change and the cancellation she made.
    const hers = page.getByRole('row').filter({ hasText: instanceId.slice(0, 8) });
    await expect(hers).toContainText('n8n');
    await expect(hers).toContainText('cancelled, then starter');
    await expectAccessible(page, 'all subscriptions');
    expectNoConsoleErrors(problems);
  } finally {
    await context.close();
  }
});

test('an operator stops and starts an instance with a reason, reads its diagnostics, and the customer sees it', async ({ browser }, info) => {
  const op = await operatorPage(browser);
  const page = op.page;
  try {
    await page.goto(`/#/admin/instances/${instanceId}`);
    await expect(heading(page, `n8n instance of ${alice.email}`)).toBeVisible();
    await expect(page.getByTestId('status')).toContainText('Ready');
    const actions = page.getByRole('region', { name: 'Operator actions' });
    const reason = page.getByLabel('Reason for the action');

    // No reason: the server's refusal, under the reason field; nothing is done.
    await confirm(page, 'Stop', 'Yes, stop it');
    await expect(reason).toHaveAttribute('aria-invalid', 'true');
    await expect(reason).toHaveAccessibleDescription(/needs a reason of 3-500 characters/);
    await expect(page.getByTestId('status')).toContainText('Ready');

    await reason.fill(STOP_REASON);
    await actions.getByRole('button', { name: 'Stop', exact: true }).click();
    await expect(page.getByRole('dialog')).toContainText(STOP_REASON);
    await expectAccessible(page, 'the operator stop dialog');
    await page.getByRole('dialog').getByRole('button', { name: 'Yes, stop it' }).click();
    await expect(actions.getByRole('status')).toContainText('Stopped.');
    await expect(reason).not.toHaveAttribute('aria-invalid', 'true');
    await expect(page.getByTestId('status')).toContainText('Suspended', { timeout: READY_TIMEOUT });

    // The customer reads it in the instance's history, with the operator's reason.
    await alice.page.goto(`/#/instances/${instanceId}`);
    await expect(heading(alice.page, 'n8n instance')).toBeVisible();
    const aliceHistory = alice.page.getByRole('region', { name: 'Status history' });
    await expect(aliceHistory).toContainText(STOP_REASON);
    await expect(aliceHistory.getByRole('listitem').filter({ hasText: STOP_REASON })).toContainText('(by an operator)');
    await expectAccessible(alice.page, 'an instance an operator stopped');

    await reason.fill(START_REASON);
    await confirm(page, 'Start', 'Yes, start it');
    await expect(actions.getByRole('status')).toContainText('Started.');
    await expect(page.getByTestId('status')).toContainText('Ready', { timeout: READY_TIMEOUT });
    await expect(aliceHistory).toContainText(START_REASON);
    await expect(liveStatus(alice.page)).toContainText('Ready', { timeout: READY_TIMEOUT });

    // Diagnostics: structured tables, read with a reason.
    const diag = page.getByRole('region', { name: 'Diagnostics' });
    await page.getByLabel('Reason for reading the diagnostics').fill(DIAG_REASON);
    await diag.getByRole('button', { name: 'Read diagnostics' }).click();
    const history = diag.getByRole('table', { name: 'Status history and actions' });
    await expect(history.getByRole('row').filter({ hasText: STOP_REASON })).toContainText('an operator');
    await expect(history.getByRole('row').filter({ hasText: START_REASON })).toContainText('an operator');
    const pods = diag.getByRole('table', { name: 'Pods' });
    await expect(pods.getByRole('row').nth(1)).toContainText(/Running|Pending/);
    await expect(diag.getByRole('heading', { name: 'Kubernetes events' })).toBeVisible();
    await expect(diag.getByRole('heading', { name: 'Volumes' })).toBeVisible();
    await expect(diag.getByRole('heading', { name: 'Logs' })).toBeVisible();
    await expectAccessible(page, 'an instance with its diagnostics, as an operator');
    await screenshots(page, 'admin-diagnostics', info);

    // The audit log: who, what and why for each.
    await op.page.getByRole('navigation', { name: 'Operator' }).getByRole('link', { name: 'Audit log' }).click();
    await expect(heading(page, 'Audit log')).toBeVisible();
    for (const [action, why] of [
      ['stop_instance', STOP_REASON],
      ['start_instance', START_REASON],
      ['read_diagnostics', DIAG_REASON],
    ]) {
      const row = auditRow(page, why);
      await expect(row).toHaveCount(1);
      await expect(row).toContainText(action);
      await expect(row).toContainText(op.email);
      await expect(row).toContainText(instanceId);
    }
    // The refusals (no reason) are logged by the browser as failed calls.
    expectNoConsoleErrors(op.problems, [/Failed to load resource/]);
    expectNoConsoleErrors(alice.problems);
  } finally {
    await op.context.close();
  }
});

test('an operator suspends an account with a reason and lifts the suspension', async ({ browser }, info) => {
  const op = await operatorPage(browser);
  const page = op.page;
  try {
    await op.page.getByRole('navigation', { name: 'Operator' }).getByRole('link', { name: 'Accounts' }).click();
    await expect(heading(page, 'Customer accounts')).toBeVisible();
    await expect(page.getByRole('table')).toContainText(alice.email);
    await expectAccessible(page, 'customer accounts');

    await page.goto(`/#/admin/instances/${bobInstanceId}`);
    await expect(heading(page, `ghost instance of ${bob.email}`)).toBeVisible();
    await page.getByRole('link', { name: /^account [0-9a-f-]{36}$/ }).click();
    await expect(heading(page, 'Customer account')).toBeVisible();
    const facts = page.locator('dl.facts');
    await expect(facts).toContainText(bob.email);
    await expect(facts).toContainText('Not suspended');
    const bobAccount = decodeURIComponent(new URL(page.url()).hash.split('/').pop() ?? '');
    await expect(page.getByRole('link', { name: bobInstanceLink })).toBeVisible();

    const section = page.getByRole('region', { name: 'Suspension' });
    await page.getByLabel('Reason', { exact: true }).fill(SUSPEND_REASON);
    await section.getByRole('button', { name: 'Suspend account' }).click();
    await expect(page.getByRole('dialog')).toContainText(SUSPEND_REASON);
    await page.getByRole('dialog').getByRole('button', { name: 'Yes, suspend it' }).click();
    await expect(section.getByRole('status')).toContainText('The account is suspended. Stopped 1 instance');
    await expect(facts).toContainText(`Suspended since`);
    await expect(facts).toContainText(SUSPEND_REASON);
    await expect(section.getByRole('button', { name: 'Lift suspension' })).toBeVisible();
    await expectAccessible(page, 'a suspended account');
    await screenshots(page, 'admin-account', info);

    // Bob's calls are refused with the reason (at once, or within the gateway's identity cache
    // time).
    await expect(async () => {
      await bob.page.goto('/#/catalog');
      await bob.page.goto('/#/instances');
      await expect(bob.page.getByRole('alert').first()).toContainText(/suspended/i, { timeout: 2_000 });
    }).toPass({ timeout: 60_000 });

    await page.getByLabel('Reason', { exact: true }).fill(UNSUSPEND_REASON);
    await section.getByRole('button', { name: 'Lift suspension' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Yes, lift it' }).click();
    await expect(section.getByRole('status')).toContainText('The suspension is lifted.');
    await expect(facts).toContainText('Not suspended; the last suspension was lifted');

    await expect(async () => {
      await bob.page.goto('/#/catalog');
      await bob.page.goto('/#/instances');
      await expect(bob.page.getByRole('link', { name: bobInstanceLink })).toBeVisible({ timeout: 2_000 });
    }).toPass({ timeout: 60_000 });

    await page.getByRole('main').getByRole('link', { name: 'Audit log' }).click();
    await expect(heading(page, 'Audit log')).toBeVisible();
    for (const [action, why] of [
      ['suspend_account', SUSPEND_REASON],
      ['unsuspend_account', UNSUSPEND_REASON],
    ]) {
      const row = auditRow(page, why);
      await expect(row).toHaveCount(1);
      await expect(row).toContainText(action);
      await expect(row).toContainText(op.email);
      await expect(row.getByRole('link', { name: `account ${bobAccount}` })).toBeVisible();
    }
    await expectAccessible(page, 'the audit log with account actions');
    expectNoConsoleErrors(op.problems);
    expectNoConsoleErrors(bob.problems, [/Failed to load resource/]);
  } finally {
    await op.context.close();
  }
});
