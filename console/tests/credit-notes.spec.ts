// Credit notes (issue 17) in the browser, against a real `kapal server` (the dummy payment
// provider): a customer pays for n8n Starter; an operator opens the customer's account, sees the
// paid invoice, is refused an amount over it (the server's message under the amount field, which
// is then invalid), issues a credit note with a reason and a confirmation and sees it refunded at
// the first attempt; the audit log has it; the customer's invoices show what was credited and the
// note with its reason and state. axe-core on each page; new screenshots `admin-credit-note` and
// `invoices-credited`.
import { expect, test, type Browser } from '@playwright/test';
import {
  DESKTOP,
  expectAccessible,
  expectNoConsoleErrors,
  heading,
  screenshots,
  signUpAndVerify,
  unique,
  visit,
  watchConsole,
} from './helpers';

const PASSWORD = 'correct horse 42';
const REASON = `support ticket T-${Date.now().toString(36)}: two days of outage, half the month back`;

async function operatorPage(browser: Browser) {
  const email = process.env.KAPAL_ADMIN_EMAIL;
  expect(email, 'KAPAL_ADMIN_EMAIL (set by tests/tests/console.rs)').toBeTruthy();
  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await context.newPage();
  const problems = watchConsole(page);
  await visit(page, 'login', 'Log in');
  await page.getByLabel('Email').fill(email!);
  await page.getByLabel('Password').fill(process.env.KAPAL_ADMIN_PASSWORD!);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('navigation', { name: 'Operator' })).toBeVisible();
  return { email: email!, context, page, problems };
}

test('an operator credits a paid invoice with a reason, and the customer sees the credit note', async ({ browser }, info) => {
  const email = unique('dewi');
  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await context.newPage();
  const problems = watchConsole(page);
  const op = await operatorPage(browser);
  try {
    // The customer pays for a plan: a PAID invoice.
    await signUpAndVerify(page, email, PASSWORD, 'Dewi');
    await visit(page, 'checkout/n8n/starter', 'Checkout');
    await page.getByRole('button', { name: /^Pay Rp.* and order$/ }).click();
    await expect(heading(page, 'n8n instance')).toBeVisible();
    await visit(page, 'invoices', 'Invoices');
    const invoiceRow = page.getByRole('table', { name: 'Your invoices' }).getByRole('row').nth(1);
    await expect(invoiceRow).toContainText('Paid');
    const number = ((await invoiceRow.getByRole('rowheader').textContent()) ?? '').trim();
    expect(number).toMatch(/^KPL-\d{6}$/);
    await expect(page.getByRole('region', { name: 'Credit notes' })).toContainText('No credit notes.');

    // The operator finds the account.
    const o = op.page;
    await o.getByRole('navigation', { name: 'Operator' }).getByRole('link', { name: 'Accounts' }).click();
    await expect(heading(o, 'Customer accounts')).toBeVisible();
    await o.getByRole('link', { name: email }).click();
    await expect(heading(o, 'Customer account')).toBeVisible();
    await expect(o.getByRole('table', { name: "The account's invoices" })).toContainText(number);
    const form = o.getByRole('region', { name: 'Issue a credit note' });
    await expect(form.getByLabel('Invoice', { exact: true })).toContainText(number);
    const amount = form.getByLabel('Amount in rupiah');

    // More than the invoice: refused, the server's message under the amount.
    await amount.fill('100000');
    await form.getByLabel('Reason for the credit note').fill(REASON);
    await form.getByRole('button', { name: 'Issue credit note' }).click();
    const dialog = o.getByRole('dialog');
    await expect(dialog).toContainText(REASON);
    await expect(dialog).toContainText(number);
    await dialog.getByRole('button', { name: 'Yes, issue it' }).click();
    await expect(amount).toHaveAttribute('aria-invalid', 'true');
    await expect(amount).toHaveAccessibleDescription(/more than is left to credit .*Rp 79000 is left/);
    await expectAccessible(o, 'a credit note refused');

    // Half of it: refunded by the provider at the first attempt.
    await amount.fill('39500');
    await form.getByRole('button', { name: 'Issue credit note' }).click();
    await dialog.getByRole('button', { name: 'Yes, issue it' }).click();
    await expect(form.getByRole('status')).toContainText(/Credit note of Rp\s39\.500.*Refunded/);
    await expect(amount).not.toHaveAttribute('aria-invalid', 'true');
    const note = o.getByRole('region', { name: 'Credit notes' }).getByRole('row').filter({ hasText: REASON });
    await expect(note).toHaveCount(1);
    await expect(note).toContainText(number);
    await expect(note).toContainText(/Rp\s39\.500/);
    await expect(note).toContainText('Refunded');
    await expect(note).toContainText('1 attempt');
    await expect(o.getByRole('table', { name: "The account's invoices" }).getByRole('row').filter({ hasText: number })).toContainText(/Rp\s39\.500/);
    await expectAccessible(o, 'an account with a credit note');
    await screenshots(o, 'admin-credit-note', info);

    // In the audit log, with the reason.
    await o.getByRole('main').getByRole('link', { name: 'Audit log' }).click();
    await expect(heading(o, 'Audit log')).toBeVisible();
    const audited = o.getByRole('row').filter({ hasText: REASON });
    await expect(audited).toHaveCount(1);
    await expect(audited).toContainText('credit_invoice');
    await expect(audited).toContainText(op.email);
    await expect(audited.getByRole('link', { name: /^invoice .* of account [0-9a-f-]{36}$/ })).toBeVisible();

    // The customer sees what was credited, and the note (the page read again: from elsewhere).
    await visit(page, 'catalog', 'Catalog');
    await visit(page, 'invoices', 'Invoices');
    await expect(page.getByRole('table', { name: 'Your invoices' }).getByRole('row').filter({ hasText: number })).toContainText(/Rp\s39\.500/);
    const seen = page.getByRole('region', { name: 'Credit notes' }).getByRole('row').filter({ hasText: REASON });
    await expect(seen).toContainText(number);
    await expect(seen).toContainText(/Rp\s39\.500/);
    await expect(seen).toContainText('Refunded');
    await expectAccessible(page, 'invoices with a credit note');
    await screenshots(page, 'invoices-credited', info);

    expectNoConsoleErrors(problems);
    expectNoConsoleErrors(op.problems, [/Failed to load resource/]);
  } finally {
    await op.context.close();
    await context.close();
  }
});
