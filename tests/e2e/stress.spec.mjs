// The page under stress, in headless Chromium (WebGPU on SwiftShader), against `cargo xtask serve
// --no-build` plus a small model server of its own (another origin, like a model hub):
//   1. 20 drops in two seconds: the last image's caption wins, and no error shows;
//   2. a corrupt model file (its safetensors header damaged): an error naming the file, and the
//      demo models already loaded keep captioning;
//   3. the model server stops mid-download: a clear message naming the file, the loaded models stay;
//   4. the GPU device is lost during a round: the engine re-initialises and the next caption works.
// Run by `cargo xtask test` (step "browser e2e", after tests/e2e/app.spec.mjs) with the same
// environment (SPEC_LLAVA_BIN, XTASK_BIN, E2E_ARTIFACTS).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARTIFACTS, BIN, TARGET, cliCaption, errorText as harnessErrorText, freePort, launchBrowser, reporter, startAppServer } from './harness.mjs';

const { log, check } = reporter('stress');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The model server: the demo target's files under three prefixes.
//   /good/F     as they are;
//   /corrupt/F  model.safetensors with its JSON header overwritten (a corrupt shard);
//   /cut/F      model.safetensors announced whole, half sent, then the connection dropped (the
//               server stopping mid-download).
function startModelServer(port) {
  const files = Object.fromEntries(readdirSync(TARGET).map((f) => [f, readFileSync(join(TARGET, f))]));
  const server = createServer((req, res) => {
    const [, mode, name] = req.url.split('/');
    const body = files[name];
    const headers = {
      'Access-Control-Allow-Origin': '*',
      'Cross-Origin-Resource-Policy': 'cross-origin',
      'Cache-Control': 'no-store',
    };
    if (!body || !['good', 'corrupt', 'cut'].includes(mode)) {
      res.writeHead(404, headers);
      res.end();
      return;
    }
    if (name === 'model.safetensors' && mode === 'corrupt') {
      const bad = Buffer.from(body);
      bad.fill(0x7b, 8, 64); // '{{{{...': the header is no longer JSON
      res.writeHead(200, { ...headers, 'Content-Length': bad.length });
      res.end(bad);
      return;
    }
    if (name === 'model.safetensors' && mode === 'cut') {
      res.writeHead(200, { ...headers, 'Content-Length': body.length });
      res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => req.socket.destroy(), 50));
      return;
    }
    res.writeHead(200, { ...headers, 'Content-Length': body.length });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}


const sceneDir = mkdtempSync(join(tmpdir(), 'spec-llava-stress-'));
execFileSync(BIN, ['scenes', '--count', '3', '--seed', '778000', '--out', sceneDir]);
const scenes = readFileSync(join(sceneDir, 'captions.jsonl'), 'utf8').trim().split('\n').map((line) => {
  const j = JSON.parse(line);
  const path = join(sceneDir, j.file ?? j.image);
  return { path, expected: cliCaption(path) };
});

const [appPort, modelPort] = [await freePort(), await freePort()];
const app = await startAppServer(appPort);
const models = await startModelServer(modelPort);
const hub = `http://127.0.0.1:${modelPort}`;
const browser = await launchBrowser();
const page = await (await browser.newContext()).newPage();
const consoleLines = [];
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));

const status = () => page.getByTestId('status').textContent();
const errorText = () => harnessErrorText(page);
const runId = async () => Number(await page.getByTestId('status').getAttribute('data-run'));
async function waitFor(fn, arg, timeout = 180_000) {
  await page.waitForFunction(fn, arg, { timeout });
}
// Wait until run `run` (the status element's data-run) has ended; returns the status.
async function ended(run) {
  await waitFor((r) => {
    const s = document.querySelector('[data-testid=status]');
    return Number(s.getAttribute('data-run')) === r && ['done', 'error'].includes(s.textContent);
  }, run);
  return status();
}
async function caption(scene) {
  const before = await runId();
  await page.getByTestId('drop-input').setInputFiles(scene.path);
  const s = await ended(before + 1);
  if (s === 'error') throw new Error(`FAILED: caption error: ${await errorText()}`);
  return (await page.getByTestId('caption').textContent()).trim();
}
// Load a target by base URL through the Models settings; wait for the error it must give.
async function loadTargetExpectingError(url) {
  await page.getByTestId('target-url').fill(url);
  await page.getByTestId('target-load').click();
  await waitFor(() => document.querySelector('[data-testid=status]').textContent === 'error');
  return errorText();
}

try {
  await page.goto(`http://127.0.0.1:${appPort}/`);
  await waitFor(() => ['ready', 'error'].includes(document.querySelector('[data-testid=status]')?.textContent));
  check((await status()) === 'ready', 'the page loads with the demo models');
  check((await caption(scenes[0])) === scenes[0].expected, 'a first caption equals the CLI\'s');

  // 1. 20 drops in two seconds: every earlier run is cancelled, the last image's caption wins.
  const first = await runId();
  for (let i = 0; i < 20; i++) {
    await page.getByTestId('drop-input').setInputFiles(scenes[i % 3].path);
    await sleep(100);
  }
  const last = scenes[19 % 3];
  const burst = await ended(first + 20);
  check(burst === 'done', `after 20 drops in 2 s the last run finishes (status ${burst}, error ${JSON.stringify(await errorText())})`);
  check(await errorText() === '', 'and no error shows');
  const got = (await page.getByTestId('caption').textContent()).trim();
  check(got === last.expected, `the last image's caption wins: ${JSON.stringify(got)}`);

  // 2. A corrupt model file: a named error; the loaded models keep working.
  const corrupt = await loadTargetExpectingError(`${hub}/corrupt`);
  check(corrupt.includes('model.safetensors'), `a corrupt shard gives an error naming it: ${JSON.stringify(corrupt)}`);
  check((await caption(scenes[1])) === scenes[1].expected, 'the demo models still caption after the corrupt model');

  // 3. The server stops mid-download: a clear message; the loaded models stay.
  const cut = await loadTargetExpectingError(`${hub}/cut`);
  check(cut.includes('model.safetensors') && /interrupt|download|network|read/i.test(cut),
    `a download cut halfway gives a clear message: ${JSON.stringify(cut)}`);
  check((await caption(scenes[2])) === scenes[2].expected, 'the demo models still caption after the cut download');

  // 4. The GPU device is lost during a round: the engine re-initialises; the next caption works.
  const before = await runId();
  await page.getByTestId('drop-input').setInputFiles(scenes[0].path);
  await waitFor(() => document.querySelector('[data-testid=tree] g.node') !== null
    || document.querySelector('[data-testid=status]').textContent === 'done');
  await page.evaluate(async () => (await import('/web/pkg/spec_llava.js')).lose_gpu_device());
  let lost = await ended(before + 1);
  if (lost !== 'error') {
    // The caption finished before the device went: the loss then hits the next run.
    log(`note: the caption finished before the device was destroyed (status ${lost})`);
    const again = await runId();
    await page.getByTestId('drop-input').setInputFiles(scenes[2].path);
    lost = await ended(again + 1);
  }
  const lostError = await errorText();
  check(lost === 'error' && /lost/i.test(lostError) && lostError.includes('re-initialised'),
    `a lost device is reported and the engine re-initialises: ${JSON.stringify(lostError)}`);
  check((await caption(scenes[1])) === scenes[1].expected, 'after the device loss the next caption equals the CLI\'s');
  const engine = await page.locator('.backend').textContent();
  check(engine.includes('WebGPU'), `and it runs on WebGPU again (${engine})`);
} catch (e) {
  console.error(e.message);
  console.error('--- browser console ---\n' + consoleLines.slice(-40).join('\n'));
  try { await page.screenshot({ path: join(ARTIFACTS, 'stress-failure.png'), fullPage: true }); } catch { /* ignore */ }
  process.exitCode = 1;
} finally {
  await browser.close();
  app.kill();
  models.close();
}
log(process.exitCode ? 'stress FAILED' : 'stress passed');
