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
