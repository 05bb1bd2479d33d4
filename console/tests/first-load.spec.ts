// The console's first load as a new visitor has it (empty cache, a fresh browser context), from
// the browser's own Navigation and Resource Timing: when the document was interactive, and when
// the catalog, read from the API, was on the screen (the page is usable then). Five loads; the
// median is printed as a `KAPAL_BENCH` line (BENCHMARKS.md reports it), with the bytes that
// crossed the wire (gzip) and their decoded size.
import { expect, test } from '@playwright/test';
import { heading } from './helpers';

type Load = {
  domInteractiveMs: number;
  domContentLoadedMs: number;
  loadMs: number;
  catalogShownMs: number;
  assetBytesOverTheWire: number;
  assetBytesDecoded: number;
  apiCalls: number;
};

const LOADS = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

test('first load: time until the catalog is usable, and the bytes it takes', async ({ browser }) => {
  const loads: Load[] = [];
  for (let i = 0; i < LOADS; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto('/');
    // Shown and usable: the catalog's heading and its first app with its order links.
    await page.waitForFunction(() => document.querySelector('main article a') !== null, null, { polling: 'raf' });
    const load: Load = await page.evaluate(() => {
      const shown = performance.now();
      const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
      const resources = performance.getEntriesByType('resource') as PerformanceResourceTiming[];
      const assets = resources.filter((r) => r.initiatorType !== 'fetch' && r.initiatorType !== 'xmlhttprequest');
      return {
        domInteractiveMs: nav.domInteractive,
        domContentLoadedMs: nav.domContentLoadedEventEnd,
        loadMs: nav.loadEventEnd,
        catalogShownMs: shown,
        assetBytesOverTheWire: nav.transferSize + assets.reduce((n, r) => n + r.transferSize, 0),
        assetBytesDecoded: nav.decodedBodySize + assets.reduce((n, r) => n + r.decodedBodySize, 0),
        apiCalls: resources.length - assets.length,
      };
    });
    await expect(heading(page, 'Catalog')).toBeVisible();
    loads.push(load);
    await context.close();
  }
  const summary = Object.fromEntries(
    (Object.keys(loads[0]) as (keyof Load)[]).map((k) => [k, Math.round(median(loads.map((l) => l[k])))]),
  );
  console.log(`KAPAL_BENCH console-first-load median of ${LOADS} ${JSON.stringify(summary)}`);
  // Compressed on the wire, and quick on this machine: a regression a person would notice fails.
  expect(summary.assetBytesOverTheWire).toBeLessThan(summary.assetBytesDecoded);
  expect(summary.catalogShownMs).toBeLessThan(5000);
});
