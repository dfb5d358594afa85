/**
 * The console's response headers and its static assets. Every asset comes from this process (no CDN: the
 * console works on a closed network), which is what lets the Content-Security-Policy allow 'self' only.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { RequestHandler } from 'express';

/**
 * No inline script or style, no eval, nothing from another origin, no framing, forms only to us. An
 * injected `<script>` or `style=` attribute would not run even if escaping failed somewhere.
 */
export const CONSOLE_CSP = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
  "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'",
].join('; ');

/** Sets the CSP and its companions on every console response (pages, assets, redirects, errors). */
export function consoleHeaders(): RequestHandler {
  return (_req, res, next) => {
    res.set({
      'Content-Security-Policy': CONSOLE_CSP,
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      // Pages show live state and carry a CSRF token: never from a cache. Assets override this below.
      'Cache-Control': 'no-store',
    });
    next();
  };
}

const ASSETS: Record<string, string> = {
  'console.css': 'text/css; charset=utf-8',
  'console.js': 'text/javascript; charset=utf-8',
  'favicon.svg': 'image/svg+xml',
};

interface Asset { body: Buffer; type: string; etag: string }

/**
 * The few files in ./assets, read once at start-up (they ship with the code: `npm run build` copies them
 * next to the compiled module). `version` changes with their content and goes into the pages' asset URLs,
 * so a browser never keeps a stale copy; `serve` answers with an ETag and `no-cache` (revalidated each
 * time), so no build step has to fingerprint file names.
 */
export function loadAssets(): { version: string; serve: RequestHandler } {
  const assets = new Map<string, Asset>();
  const all = createHash('sha256');
  for (const [name, type] of Object.entries(ASSETS)) {
    const body = readFileSync(new URL(`./assets/${name}`, import.meta.url));
    all.update(body);
    assets.set(name, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` });
  }
  const serve: RequestHandler = (req, res, next) => {
    const asset = assets.get(String(req.params.name ?? ''));
    if (!asset) { next(); return; }
    res.set({ 'Content-Type': asset.type, 'Cache-Control': 'no-cache', ETag: asset.etag });
    if (req.get('if-none-match') === asset.etag) { res.status(304).end(); return; }
    res.send(asset.body);
  };
  return { version: all.digest('base64url').slice(0, 10), serve };
}
