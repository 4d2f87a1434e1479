// End-to-end tests of the browser app: playwright-core drives headless Chromium (WebGPU on
// SwiftShader) against `cargo xtask serve --no-build`. Run by `cargo xtask test` (step
// "browser e2e"), which sets:
//   SPEC_LLAVA_BIN  the native CLI (expected captions come from it)
//   XTASK_BIN       the xtask binary (its static server)
//   E2E_ARTIFACTS   where screenshots go
// Each check prints one line; the first failure exits non-zero with the reason.

import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';

const BIN = process.env.SPEC_LLAVA_BIN ?? 'target/debug/spec-llava';
const XTASK = process.env.XTASK_BIN ?? 'target/debug/xtask';
const ARTIFACTS = process.env.E2E_ARTIFACTS ?? 'target/e2e';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TARGET = 'web/models/demo/target';
const LONG_TASK_MS = 200;
mkdirSync(ARTIFACTS, { recursive: true });

const t0 = Date.now();
function log(msg) {
  console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}
function check(cond, msg) {
  if (!cond) throw new Error(`FAILED: ${msg}`);
  log(`ok: ${msg}`);
}

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startServer(port) {
  const proc = spawn(XTASK, ['serve', '--no-build', '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
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

function cliCaption(image) {
  const out = execFileSync(BIN, ['caption', '--model', TARGET, '--image', image, '--backend', 'cpu', '--json', '--no-spec'], { encoding: 'utf8' });
  return JSON.parse(out).text.trim();
}

// Generated scenes (the CLI writes PNGs) and what the native CLI says about them.
const sceneDir = mkdtempSync(join(tmpdir(), 'spec-llava-e2e-'));
execFileSync(BIN, ['scenes', '--count', '3', '--seed', '777000', '--out', sceneDir]);
const scenes = [0, 1, 2].map((i) => {
  const lines = readFileSync(join(sceneDir, 'captions.jsonl'), 'utf8').trim().split('\n');
  const file = JSON.parse(lines[i]).file ?? JSON.parse(lines[i]).image;
  const path = join(sceneDir, file);
  return { path, expected: cliCaption(path) };
});
log(`native captions: ${scenes.map((s) => JSON.stringify(s.expected)).join(' | ')}`);
const corrupt = join(sceneDir, 'broken.png');
writeFileSync(corrupt, Buffer.concat([readFileSync(scenes[0].path).subarray(0, 60), Buffer.from('not the rest of a png')]));

const port = await freePort();
let server = await startServer(port);
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext();
// Record main-thread long tasks (PerformanceObserver 'longtask') from the first script on.
await context.addInitScript(() => {
  window.__longTasks = [];
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longTasks.push({ start: e.startTime, duration: e.duration });
    }).observe({ type: 'longtask', buffered: true });
  } catch (e) { /* not supported: the check below fails loudly */ window.__longTasks = null; }
});
const page = await context.newPage();
const consoleLines = [];
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));

const status = () => page.getByTestId('status').textContent();
async function waitStatus(want, timeout = 180_000) {
  await page.waitForFunction((w) => {
    const s = document.querySelector('[data-testid=status]');
    return s && w.includes(s.textContent);
  }, Array.isArray(want) ? want : [want], { timeout });
  return status();
}
// Drop a file and wait for the run it starts (the status element carries the run id) to end.
async function drop(path) {
  const before = await page.getByTestId('status').getAttribute('data-run');
  await page.getByTestId('drop-input').setInputFiles(path);
  await page.waitForFunction((b) => {
    const s = document.querySelector('[data-testid=status]');
    return s.getAttribute('data-run') !== b && ['done', 'error'].includes(s.textContent);
  }, before, { timeout: 180_000 });
  return status();
}
async function caption(scene) {
  const s = await drop(scene.path);
  if (s === 'error') throw new Error(`FAILED: caption error: ${await page.getByTestId('error').textContent()}`);
  return (await page.getByTestId('caption').textContent()).trim();
}

try {
  // 1. The page loads and the engine starts with the demo models, on WebGPU.
  await page.goto(`http://127.0.0.1:${port}/`);
  await waitStatus(['ready', 'error']);
  check((await status()) === 'ready', 'the page loads and the engine becomes ready');
  const engine = await page.locator('.backend').textContent();
  check(engine.includes('WebGPU'), `the engine runs on WebGPU in headless Chromium (${engine})`);

  // 1b. Every engine kernel compiles in the browser's WebGPU (Chromium's WGSL compiler is stricter
  // than naga in places, e.g. float literals that only round to f32::MAX), as a pipeline with its
  // default overrides: the app only compiles the kernels a model needs, so this covers the rest.
  const kernels = JSON.parse(execFileSync(BIN, ['kernels', '--json'], { encoding: 'utf8' }));
  const shaderErrors = await page.evaluate(async (list) => {
    const adapter = await navigator.gpu.requestAdapter();
    const device = await adapter.requestDevice({ requiredLimits: { maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage } });
    const errors = [];
    for (const k of list) {
      device.pushErrorScope('validation');
      const module = device.createShaderModule({ code: k.source, label: k.name });
      const info = await module.getCompilationInfo();
      for (const m of info.messages) {
        if (m.type === 'error') errors.push(`${k.name}.wgsl:${m.lineNum}:${m.linePos}: ${m.message}`);
      }
      try {
        await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      } catch (e) {
        errors.push(`${k.name}: pipeline: ${e.message}`);
      }
      const v = await device.popErrorScope();
      if (v) errors.push(`${k.name}: ${v.message}`);
    }
    device.destroy();
    return errors;
  }, kernels);
  check(kernels.length >= 20 && shaderErrors.length === 0,
    `all ${kernels.length} WGSL kernels compile in Chromium${shaderErrors.length ? ': ' + shaderErrors.join(' | ') : ''}`);

  // 2. A dropped scene gets exactly the native CLI's caption; a screenshot mid-generation.
  const longTasksBefore = await page.evaluate(() => window.__longTasks?.length ?? -1);
  await page.getByTestId('drop-input').setInputFiles(scenes[0].path);
  await page.waitForSelector('[data-testid=tree] g.node', { timeout: 180_000 });
  await page.screenshot({ path: join(ARTIFACTS, 'mid-generation.png'), fullPage: true });
  log(`screenshot: ${join(ARTIFACTS, 'mid-generation.png')}`);
  const s0 = await waitStatus(['done', 'error']);
  check(s0 === 'done', 'the first caption finishes');
  const got0 = (await page.getByTestId('caption').textContent()).trim();
  check(got0 === scenes[0].expected, `page caption equals the CLI's: ${JSON.stringify(got0)}`);

  // 3. Responsiveness: no main-thread task over 200 ms while generating.
  const longTasks = await page.evaluate((from) => window.__longTasks === null ? null : window.__longTasks.slice(from), longTasksBefore);
  check(longTasks !== null, 'the long-task observer is available');
  const worst = Math.max(0, ...longTasks.map((t) => t.duration));
  check(worst <= LONG_TASK_MS, `no main-thread task over ${LONG_TASK_MS} ms during generation (worst ${worst.toFixed(0)} ms, ${longTasks.length} long tasks)`);

  // 4. Node states across rounds, walking the scrubber; the scrubber changes the drawn round.
  const seen = new Set();
  const rounds = Number(await page.getByTestId('round-scrubber').getAttribute('max'));
  check(rounds >= 2, `several speculation rounds (${rounds})`);
  const drawn = [];
  for (let r = 1; r <= rounds; r++) {
    await page.getByTestId('round-scrubber').fill(String(r));
    drawn.push(await page.getByTestId('tree').getAttribute('data-round'));
    for (const st of await page.locator('[data-testid=tree] g.node').evaluateAll((ns) => ns.map((n) => n.getAttribute('data-status')))) seen.add(st);
  }
  check(new Set(drawn).size === rounds, `the scrubber draws each of the ${rounds} rounds (${drawn.join(',')})`);
  // More scenes if some state has not shown up yet.
  for (const scene of scenes.slice(1)) {
    if (seen.size === 5) break;
    check((await caption(scene)) === scene.expected, `page caption equals the CLI's on ${scene.path}`);
    const n = Number(await page.getByTestId('round-scrubber').getAttribute('max'));
    for (let r = 1; r <= n; r++) {
      await page.getByTestId('round-scrubber').fill(String(r));
      for (const st of await page.locator('[data-testid=tree] g.node').evaluateAll((ns) => ns.map((x) => x.getAttribute('data-status')))) seen.add(st);
    }
  }
  const states = ['expanded', 'pruned', 'accepted', 'rejected', 'bonus'];
  check(states.every((s) => seen.has(s)), `tree nodes in every state across rounds (${[...seen].sort().join(', ')})`);

  // 5. Compare: plain decoding of the same image gives the identical output.
  await page.getByTestId('compare').click();
  await page.waitForSelector('[data-testid=compare-result]', { timeout: 180_000 });
  const cmp = await page.getByTestId('compare-result').textContent();
  check(cmp.includes('identical outputs'), 'compare shows identical outputs');
  check((await page.getByTestId('plain-caption').textContent()).trim() === (await page.getByTestId('caption').textContent()).trim(), 'the plain caption equals the speculative one');

  // 6. A new drop during generation cancels the running caption; the new image's caption wins.
  await page.getByTestId('drop-input').setInputFiles(scenes[1].path);
  await page.waitForFunction(() => document.querySelector('[data-testid=status]').textContent === 'generating');
  check((await caption(scenes[2])) === scenes[2].expected, 'a drop during generation cancels it and captions the new image');

  // 7. A corrupt file shows an error naming it; the next good drop still works.
  check((await drop(corrupt)) === 'error', 'a corrupt image sets the error status');
  const err = await page.getByTestId('error').textContent();
  check(err.includes('broken.png'), `the error names the file: ${JSON.stringify(err)}`);
  check((await caption(scenes[0])) === scenes[0].expected, 'a good image after the error still captions');

  // 8. Offline: stop the server, reload, caption again.
  server.kill();
  await new Promise((r) => server.on('exit', r));
  await page.reload();
  await waitStatus(['ready', 'error']);
  check((await status()) === 'ready', 'with the server stopped, the page reloads from the service worker cache');
  check((await caption(scenes[0])) === scenes[0].expected, 'and captions offline');

  // 9. The CPU engine in the browser (what runs without WebGPU) gives the same caption.
  await page.getByTestId('backend').selectOption('cpu');
  await page.waitForFunction(() => document.querySelector('.backend').textContent.includes('CPU'), null, { timeout: 120_000 });
  await waitStatus(['ready', 'done', 'error']);
  check((await caption(scenes[1])) === scenes[1].expected, 'the CPU engine in the browser gives the native caption');
  server = null;
} catch (e) {
  console.error(e.message);
  console.error('--- browser console ---\n' + consoleLines.slice(-40).join('\n'));
  try { await page.screenshot({ path: join(ARTIFACTS, 'failure.png'), fullPage: true }); } catch { /* ignore */ }
  process.exitCode = 1;
} finally {
  await browser.close();
  if (server) server.kill();
}
log(process.exitCode ? 'e2e FAILED' : 'e2e passed');
