// Playwright's settings for the console's browser tests. They run against a real `kapal server`
// whose URL is in KAPAL_URL: tests/tests/console.rs starts the services (and the local cluster
// makes instances READY), then runs `npx playwright test` here. Debian's chromium is the browser
// (KAPAL_CHROMIUM overrides it); Playwright's own browser downloads are never used.
import { defineConfig } from '@playwright/test';

const baseURL = process.env.KAPAL_URL;
if (!baseURL) {
  throw new Error('KAPAL_URL is not set: run these tests with `cargo test -p kapal-tests --test console`');
}

export default defineConfig({
  testDir: '.',
  testMatch: '*.spec.ts',
  // One browser at a time: the journey is a story whose steps build on each other, and the
  // machine is small.
  workers: 1,
  fullyParallel: false,
  forbidOnly: true,
  retries: 0,
  timeout: 300_000,
  expect: { timeout: 20_000 },
  reporter: [['list']],
  outputDir: process.env.KAPAL_PLAYWRIGHT_OUTPUT || 'test-results',
  use: {
    baseURL,
    browserName: 'chromium',
    viewport: { width: 1280, height: 800 },
    screenshot: 'only-on-failure',
    actionTimeout: 30_000,
    navigationTimeout: 30_000,
    launchOptions: {
      executablePath: process.env.KAPAL_CHROMIUM || '/usr/bin/chromium',
      // As root in a sandbox with a closed network: no sandbox, no GPU, and none of Chromium's
      // background connections.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
});
