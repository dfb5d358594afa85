/**
 * Debian's Chromium driven by playwright-core (never a browser Playwright downloads). One browser per
 * test, each with a new empty profile directory; every console message of type error and every uncaught
 * page error is collected so a test can fail on them (CSP violations are reported there too).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/**
 * As root on a closed network: no sandbox (root), and nothing that phones home (background networking,
 * component updates, sync, QUIC), which this machine's network refuses and logs as errors.
 */
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

/** Where screenshots go: E2E_SCREENSHOT_DIR, or <tmp>/pcp-e2e-screenshots. */
export function screenshotDir(): string {
  return process.env.E2E_SCREENSHOT_DIR ?? path.join(os.tmpdir(), 'pcp-e2e-screenshots');
}

export interface TestBrowser {
  context: BrowserContext;
  page: Page;
  /** Console errors and page errors seen so far, as readable lines. */
  errors: string[];
  /** Saves a full-page PNG named `<name>.png` in screenshotDir(); returns its path. */
  screenshot(name: string): Promise<string>;
  close(): Promise<void>;
  /** True once the browser process has gone and its profile directory is removed. */
  isClosed(): boolean;
}

/** Launches Chromium headless with a fresh profile directory (removed again by close()). */
export async function launchBrowser(): Promise<TestBrowser> {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(`${CHROMIUM_PATH} is missing: install Debian's chromium (apt-get install -y --no-install-recommends chromium)`);
  }
  const profile = mkdtempSync(path.join(os.tmpdir(), 'pcp-e2e-profile-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1360, height: 860 },
      acceptDownloads: true,
      timezoneId: 'UTC',
      locale: 'en-US',
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  const errors: string[] = [];
  const watch = (page: Page) => {
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(`console error on ${page.url()}: ${msg.text()}`);
    });
    page.on('pageerror', (err) => errors.push(`page error on ${page.url()}: ${err.message}`));
  };
  context.on('page', watch);
  for (const p of context.pages()) watch(p);
  const page = context.pages()[0] ?? await context.newPage();
  let closed = false;
  return {
    context, page, errors,
    async screenshot(name) {
      const dir = screenshotDir();
      mkdirSync(dir, { recursive: true });
      const file = path.join(dir, `${name}.png`);
      // From the top: the sticky header would otherwise be drawn wherever the page was scrolled to.
      await page.evaluate('window.scrollTo(0, 0)');
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    async close() {
      if (closed) return;
      try {
        await context.close();
      } finally {
        rmSync(profile, { recursive: true, force: true });
        closed = true;
      }
    },
    isClosed() {
      const browser = context.browser();
      return closed && (!browser || !browser.isConnected()) && !existsSync(profile);
    },
  };
}
