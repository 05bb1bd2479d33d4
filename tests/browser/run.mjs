// Opens journey.html in Debian's Chromium (headless, driven by playwright-core) and reports what
// the page found.
//
//   node tests/browser/run.mjs <page-url> <gateway-url>
//
// The page is loaded as <page-url>?gateway=<gateway-url> and runs Kapal's customer journey over
// grpc-web; this waits (at most 180 s) for its title to become PASS or "FAIL: <reason>", prints
// its JSON summary, the browser's console and the gateway's answers as the browser saw them,
// then a last line `KAPAL_BROWSER_RESULT <json>` for the Rust test to read. Exit status: 0 on
// PASS, 1 on FAIL or timeout, 2 when the browser cannot be started.
//
// Env: KAPAL_BROWSER_SCREENSHOT=<file.png> saves a screenshot of the page at the end;
// KAPAL_CHROMIUM overrides the browser binary (default /usr/bin/chromium, Debian's package
// `chromium`, which scripts/test installs; playwright's own browser download is not used).

import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 180_000;
// As root, in a sandbox with a closed network: no sandbox, no GPU, and none of Chromium's
// background connections (refused here, many at a time, and each start looks up Google's hosts).
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const [pageArg, gatewayArg] = process.argv.slice(2);
if (!pageArg || !gatewayArg) {
  console.error('usage: node run.mjs <page-url> <gateway-url>');
  process.exit(2);
}
const executablePath = process.env.KAPAL_CHROMIUM || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`${executablePath} not found: install Debian's chromium (scripts/test does: apt-get install chromium)`);
  process.exit(2);
}
const gateway = new URL(gatewayArg);
const pageUrl = new URL(pageArg);
pageUrl.searchParams.set('gateway', gateway.href.replace(/\/+$/, ''));

const consoleLines = [];
const network = [];
let browser;
try {
  // launch() gives the browser a new, empty profile directory of its own (removed on close).
  browser = await chromium.launch({ executablePath, args: ARGS, headless: true, timeout: 60_000 });
} catch (e) {
  console.error(`could not start ${executablePath}: ${e.message}`);
  process.exit(2);
}

let exitCode = 1;
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 1100 } });
  const page = await context.newPage();
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  page.on('requestfailed', (r) => {
    if (r.url().startsWith(gateway.origin)) {
      network.push({ method: r.method(), path: new URL(r.url()).pathname, failed: r.failure()?.errorText ?? 'failed' });
    }
  });
  page.on('response', async (r) => {
    if (!r.url().startsWith(gateway.origin)) return;
    const entry = { method: r.request().method(), path: new URL(r.url()).pathname, status: r.status() };
    network.push(entry);
    try {
      const h = await r.allHeaders();
      entry.accessControlAllowOrigin = h['access-control-allow-origin'] ?? null;
      entry.grpcStatus = h['grpc-status'] ?? null;
    } catch {
      // the page may be gone; the status is enough then
    }
  });

  console.log(`chromium ${browser.version()} (${executablePath}) opens ${pageUrl.href}`);
  await page.goto(pageUrl.href, { waitUntil: 'load', timeout: 30_000 });
  let timedOut = false;
  try {
    await page.waitForFunction(() => document.title === 'PASS' || document.title.startsWith('FAIL'), null, {
      timeout: TIMEOUT_MS,
      polling: 250,
    });
  } catch (e) {
    timedOut = true;
    consoleLines.push(`[driver] no PASS/FAIL title within ${TIMEOUT_MS / 1000} s: ${e.message.split('\n')[0]}`);
  }
  const title = await page.title();
  const text = await page.locator('#result').textContent();
  let result;
  try {
    result = JSON.parse(text || 'null');
  } catch {
    result = { unparsed: text };
  }
  if (process.env.KAPAL_BROWSER_SCREENSHOT) {
    await page.screenshot({ path: process.env.KAPAL_BROWSER_SCREENSHOT, fullPage: true });
    console.log(`screenshot: ${process.env.KAPAL_BROWSER_SCREENSHOT}`);
  }

  console.log(`title: ${title}`);
  console.log('--- page result');
  console.log(JSON.stringify(result, null, 2));
  console.log('--- browser console');
  for (const line of consoleLines) console.log(line);
  console.log('--- gateway answers as the browser saw them');
  for (const n of network) console.log(JSON.stringify(n));

  const pass = !timedOut && title === 'PASS' && result?.pass === true;
  exitCode = pass ? 0 : 1;
  console.log(`KAPAL_BROWSER_RESULT ${JSON.stringify({ title, pass, chromium: browser.version(), result, network })}`);
} catch (e) {
  console.error(`driver error: ${e.stack ?? e}`);
  for (const line of consoleLines) console.error(line);
  exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
process.exit(exitCode);
