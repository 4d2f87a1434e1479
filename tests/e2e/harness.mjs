// What both browser suites (app.spec.mjs, stress.spec.mjs) need: the environment `cargo xtask
// test` sets, one-line checks, the app's own server, the native CLI's captions and headless
// Chromium with WebGPU.

import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';

export const BIN = process.env.SPEC_LLAVA_BIN ?? 'target/debug/spec-llava';
export const XTASK = process.env.XTASK_BIN ?? 'target/debug/xtask';
export const ARTIFACTS = process.env.E2E_ARTIFACTS ?? 'target/e2e';
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const TARGET = 'web/models/demo/target';
mkdirSync(ARTIFACTS, { recursive: true });

// `log` and `check` print one line each, prefixed with the suite's tag and the seconds since start.
export function reporter(tag) {
  const t0 = Date.now();
  const log = (msg) => console.log(`[${tag} ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
  const check = (cond, msg) => {
    if (!cond) throw new Error(`FAILED: ${msg}`);
    log(`ok: ${msg}`);
  };
  return { log, check };
}

export async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// `cargo xtask serve --no-build` on `port` (plus `extra` flags), once it accepts connections.
export async function startAppServer(port, extra = []) {
  const proc = spawn(XTASK, ['serve', '--no-build', '--port', String(port), ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  for (let i = 0; i < 100; i++) {
    const up = await new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => { c.end(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (up) return proc;
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill();
  throw new Error('the server did not start');
}

// The page's error line, '' while there is none (the element is only there with an error).
export async function errorText(page) {
  const e = page.locator('[data-testid=error]');
  return (await e.count()) ? ((await e.first().textContent()) ?? '').trim() : '';
}

// What the native CLI says about an image (CPU engine, plain decoding): the page must say the same.
export function cliCaption(image) {
  const out = execFileSync(BIN, ['caption', '--model', TARGET, '--image', image, '--backend', 'cpu', '--json', '--no-spec'], { encoding: 'utf8' });
  return JSON.parse(out).text.trim();
}

// Headless Chromium with WebGPU (SwiftShader here), without the background traffic a closed
// network refuses.
const BROWSER_ARGS = ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: BROWSER_ARGS });
}

// The same with a profile on disk (a user's browser, not an incognito one: storage is on disk with
// a disk-sized quota, as for big models).
export function launchProfile(dir) {
  return chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: BROWSER_ARGS });
}
