// A customer's own account in the browser, against a real `kapal server`: the sessions they have
// open (this one marked), ending another one (whose browser is then logged out), changing the
// password (wrong current password and a weak new one answered next to their fields; the other
// sessions end), and API tokens with a scope and an expiry.
import { expect, test, type Browser, type Page } from '@playwright/test';
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
const NEW_PASSWORD = 'battery staple 43';
const email = unique('carol');

/** Logs in; the console goes back to the page that asked for it, or to the instance list. */
async function logIn(page: Page, password: string, landing = 'Your instances') {
  await visit(page, 'login', 'Log in');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(heading(page, landing)).toBeVisible();
}

async function secondBrowser(browser: Browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  return { context, page, problems: watchConsole(page) };
}

/** The sessions table's body rows. */
function sessionRows(page: Page) {
  return page.getByRole('region', { name: 'Sessions' }).getByRole('row').filter({ has: page.getByRole('rowheader') });
}

test('a customer sees their sessions, ends another one and changes the password', async ({ page, browser }, info) => {
  const problems = watchConsole(page);
  await signUpAndVerify(page, email, PASSWORD, 'Carol');
  // A second browser logged in as the same customer: a second session.
  const other = await secondBrowser(browser);
  try {
    await logIn(other.page, PASSWORD);

    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Account' }).click();
    await expect(heading(page, 'Your account')).toBeVisible();
    await expect(sessionRows(page)).toHaveCount(2);
    // This browser's session is marked and cannot be ended here (log out ends it).
    // (By the badge: the rows' closed dialogs say "End this session?".)
    const marked = page.getByText('This session', { exact: true });
    const mine = sessionRows(page).filter({ has: marked });
    await expect(mine).toHaveCount(1);
    await expect(mine.getByRole('button', { name: 'End session' })).toHaveCount(0);
    await expectAccessible(page, 'the account page');
    await screenshots(page, 'account', info);

    // Ending the other session: asked first, then that browser is logged out.
    const theirs = sessionRows(page).filter({ hasNot: marked });
    await theirs.getByRole('button', { name: 'End session' }).click();
    const dialog = page.getByRole('dialog');
    await expect(dialog).toContainText('End this session?');
    await expectAccessible(page, 'the end-session dialog');
    await dialog.getByRole('button', { name: 'Yes, end it' }).click();
    await expect(sessionRows(page)).toHaveCount(1);
    await other.page.goto('/#/subscriptions');
    await expect(heading(other.page, 'Log in')).toBeVisible();

    // Logged in there again (back on the page that asked), for the password change to end.
    await logIn(other.page, PASSWORD, 'Subscriptions');
    await page.reload();
    await expect(heading(page, 'Your account')).toBeVisible();
    await expect(sessionRows(page)).toHaveCount(2);

    // The server's refusals, next to the field they are about.
    const current = page.getByLabel('Current password');
    const next = page.getByLabel('New password');
    await current.fill('not my password 1');
    await next.fill(NEW_PASSWORD);
    await page.getByRole('button', { name: 'Change password' }).click();
    await expect(current).toHaveAttribute('aria-invalid', 'true');
    await expect(current).toHaveAccessibleDescription(/current password is wrong/);
    await expect(page.getByRole('alert')).toContainText('the current password is wrong');
    await expect(next).not.toHaveAttribute('aria-invalid', 'true');

    await current.fill(PASSWORD);
    await next.fill('short');
    await page.getByRole('button', { name: 'Change password' }).click();
    await expect(next).toHaveAttribute('aria-invalid', 'true');
    await expect(next).toHaveAccessibleDescription(/password/i);
    await expect(current).not.toHaveAttribute('aria-invalid', 'true');
    await expectAccessible(page, 'a refused password change');

    await next.fill(NEW_PASSWORD);
    await page.getByRole('button', { name: 'Change password' }).click();
    await expect(page.getByRole('region', { name: 'Change password' }).getByRole('status')).toContainText(
      'Your password is changed. 1 other session was ended.',
    );
    await expect(sessionRows(page)).toHaveCount(1);
    await expect(page.getByRole('alert')).toHaveCount(0);

    // The other browser is out; the new password lets it in again.
    await other.page.goto('/#/invoices');
    await expect(heading(other.page, 'Log in')).toBeVisible();
    await logIn(other.page, NEW_PASSWORD, 'Invoices');
    // Failed calls of the ended sessions and the refused changes are logged by the browser.
    expectNoConsoleErrors(other.problems, [/Failed to load resource/]);
  } finally {
    await other.context.close();
  }
  expectNoConsoleErrors(problems, [/Failed to load resource/]);
});

test('a customer makes a read-only API token that expires in 30 days, and revokes it', async ({ page }, info) => {
  const problems = watchConsole(page);
  await logIn(page, NEW_PASSWORD);
  await visit(page, 'tokens', 'API tokens');
  const name = page.getByLabel('Token name');

  // Blank is refused by the server, with its message under the name.
  await name.fill('   ');
  await page.getByRole('button', { name: 'Create token' }).click();
  await expect(name).toHaveAttribute('aria-invalid', 'true');
  await expect(name).toHaveAccessibleDescription(/name must be 1-64 characters/);

  await name.fill('ci reader');
  await page.getByLabel('Scope').selectOption({ label: 'Read only' });
  await expect(page.getByLabel('Expires after').locator('option')).toContainText(['1 day', '7 days', '30 days', '90 days', '180 days', '365 days (the longest allowed)']);
  await page.getByLabel('Expires after').selectOption({ label: '30 days' });
  await page.getByRole('button', { name: 'Create token' }).click();
  await expect(page.getByRole('button', { name: 'Copy token' })).toBeVisible();
  await expect(name).not.toHaveAttribute('aria-invalid', 'true');

  const row = page.getByRole('row').filter({ hasText: 'ci reader' });
  await expect(row).toContainText('Read only');
  const expires = await row.locator('time').getAttribute('datetime');
  const days = (Date.parse(expires ?? '') - Date.now()) / 86_400_000;
  expect(days, `expires ${expires}`).toBeGreaterThan(29);
  expect(days, `expires ${expires}`).toBeLessThan(31);
  await expectAccessible(page, 'API tokens with a new token');
  await screenshots(page, 'tokens', info);
  await page.getByRole('button', { name: 'Done' }).click();

  await row.getByRole('button', { name: 'Revoke ci reader' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Yes, revoke it' }).click();
  await expect(row.getByRole('button', { name: 'Revoke ci reader' })).toHaveCount(0);
  await expect(row).not.toContainText(/\bno\b/);
  expectNoConsoleErrors(problems, [/Failed to load resource/]);
});
