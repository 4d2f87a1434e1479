// Models by id from a hub, at scale, in headless Chromium (WebGPU on SwiftShader), against
// `cargo xtask serve --no-build --hub-dir DIR --drop-after BYTES` (DIR in the Hugging Face Hub's URL
// layout; the first GET of each file is cut after BYTES, as a dropped connection would):
//   1. a corrupt shard, by model id: an error naming the file; the demo models stay;
//   2. a synthetic LLaVA-shaped q4 checkpoint (`spec-llava synth`, random weights, real tensor
//      names and shapes) larger than the old 1.5 GiB cap loads by model id through `?hub=`: the cut
//      download resumes with a range request and the weights stream to the GPU a tensor at a time
//      (the engine worker's wasm memory stays under 1 GiB);
//   3. a caption equals the native CLI's on the same checkpoint and engine kind (GPU): by default
//      on `test-org/small`, an f16 LLaVA-1.5 draft shape quantized to q4 while loading (the CLI's
//      `--quant q4`), because a prefill over the big model takes many minutes on SwiftShader;
//      with HUB_CAPTION=big on the big one;
//   4. cancel: loading stops, the loaded model stays;
//   5. a full storage quota (set through the DevTools protocol): the model still loads, read from
//      the network with range requests, and a notice says it is not kept.
// Prints one JSON line {"bytes", "load_s", "wasm_memory_mib", "tokens", "tokens_per_s",
// "same_as_cli", "captioned", "cli_peak_rss_mib", "cli_s"} (the last two: the native CLI's caption
// of the same checkpoint on the GPU engine). Run by `cargo xtask test` (CI size) and `cargo xtask scale-check`
// (bigger: HUB_LIKE, HUB_TEXT_LAYERS, HUB_VISION_LAYERS, HUB_TOKENS, HUB_CAPTION).

import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { ARTIFACTS, BIN, TARGET, errorText as harnessErrorText, freePort, launchProfile, reporter, startAppServer } from './harness.mjs';

const { log, check } = reporter('hub');
const LIKE = process.env.HUB_LIKE ?? 'llava-1.5-7b';
const TEXT_LAYERS = process.env.HUB_TEXT_LAYERS ?? '12';
const VISION_LAYERS = process.env.HUB_VISION_LAYERS ?? '1';
const TOKENS = Number(process.env.HUB_TOKENS ?? '2');
const IMAGE_SIZE = process.env.HUB_IMAGE_SIZE ?? '28';
const CUT = 100_000_000;
const IMAGE = 'tests/fixtures/images/at24.png';
const CAPTION = process.env.HUB_CAPTION ?? 'small';
// A short instruction keeps the prefill (the slow part on a CPU-emulated GPU) short.
const INSTRUCTION = 'Describe.';

// The hub folder: org `test-org`, models `big` (synthetic) and `corrupt` (the demo target with a
// damaged safetensors header). The synthetic checkpoint is kept between runs with the same shape.
const hubDir = join(ARTIFACTS, 'hub');
const big = join(hubDir, 'test-org', 'big');
const stamp = `${LIKE} q4 text ${TEXT_LAYERS} vision ${VISION_LAYERS} image ${IMAGE_SIZE}`;
const stampFile = join(hubDir, 'big.stamp');
if (!existsSync(stampFile) || readFileSync(stampFile, 'utf8') !== stamp) {
  rmSync(big, { recursive: true, force: true });
  mkdirSync(join(hubDir, 'test-org'), { recursive: true });
  log(`writing ${stamp} to ${big}`);
  execFileSync(BIN, ['synth', '--like', LIKE, '--out', big, '--dtype', 'q4', '--text-layers', TEXT_LAYERS,
    '--vision-layers', VISION_LAYERS, '--image-size', IMAGE_SIZE, '--seed', '7'], { stdio: 'inherit' });
  writeFileSync(stampFile, stamp);
}
const small = join(hubDir, 'test-org', 'small');
if (!existsSync(join(small, 'config.json'))) {
  execFileSync(BIN, ['synth', '--like', 'llava-1.5-68m', '--out', small, '--dtype', 'f16', '--vision-layers', '1',
    '--image-size', IMAGE_SIZE, '--seed', '8'], { stdio: 'inherit' });
}
const corrupt = join(hubDir, 'test-org', 'corrupt');
rmSync(corrupt, { recursive: true, force: true });
cpSync(TARGET, corrupt, { recursive: true });
const weights = readFileSync(join(corrupt, 'model.safetensors'));
weights.fill(0x7b, 8, 64); // '{{{{...': the header is no longer JSON
writeFileSync(join(corrupt, 'model.safetensors'), weights);
const bytes = readdirSync(big).reduce((n, f) => n + statSync(join(big, f)).size, 0);
log(`synthetic checkpoint: ${(bytes / 2 ** 30).toFixed(2)} GiB`);

// What the native CLI says about the image on the captioned checkpoint, GPU engine, plain
// decoding (the small one quantized to q4 while loading, as the page will).
const captioned = CAPTION === 'big' ? big : small;
const quant = CAPTION === 'big' ? [] : ['--quant', 'q4'];
const cliStart = Date.now();
const cli = JSON.parse(execFileSync(BIN, ['caption', '--model', captioned, '--image', IMAGE, '--backend', 'gpu', '--json',
  '--no-spec', '--max-new-tokens', String(TOKENS), '--instruction', INSTRUCTION, ...quant], { encoding: 'utf8' }));
const cliS = (Date.now() - cliStart) / 1000;
log(`CLI: ${JSON.stringify(cli.text)} (${cli.tokens.length} tokens, ${cliS.toFixed(1)} s, peak RSS ${cli.peak_rss_mib} MiB)`);

const port = await freePort();
const server = await startAppServer(port, ['--hub-dir', hubDir, '--drop-after', String(CUT)]);
const served = [];
server.stdout.on('data', (d) => served.push(...d.toString().split('\n').filter(Boolean)));

const profile = mkdtempSync(join(tmpdir(), 'spec-llava-hub-'));
const browser = await launchProfile(profile);
const page = await browser.newPage();
const consoleLines = [];
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
const status = () => page.getByTestId('status').textContent();
const errorText = () => harnessErrorText(page);
const models = async () => (await page.getByTestId('models').textContent()) ?? '';
const waitFor = (fn, arg, timeout = 1_800_000) => page.waitForFunction(fn, arg, { timeout, polling: 500 });

try {
  await page.goto(`http://127.0.0.1:${port}/?hub=http://127.0.0.1:${port}/hub`);
  await waitFor(() => ['ready', 'error'].includes(document.querySelector('[data-testid=status]')?.textContent));
  check((await status()) === 'ready', 'the page loads with the demo models');
  // Chrome's CPU WebGPU is recognised (wgpu alone reports no adapter name in the browser), so the
  // kernels for CPU drivers run the prefill one row at a time against packed weights.
  const device = (await page.getByTestId('engine-device').textContent()) ?? '';
  check(/swiftshader/i.test(device) && device.includes('kernels for CPU drivers'), `the engine names its device: ${JSON.stringify(device)}`);
  const demoModels = await models();

  // 1. A corrupt shard by model id.
  await page.getByTestId('target-url').fill('test-org/corrupt');
  await page.getByTestId('target-load').click();
  await waitFor(() => document.querySelector('[data-testid=error]')?.textContent.includes('safetensors'));
  const err = await errorText();
  check(err.includes('/hub/test-org/corrupt/resolve/main/model.safetensors'), `a corrupt shard by id gives an error naming it: ${JSON.stringify(err)}`);
  check((await models()) === demoModels, 'and the demo models stay loaded');

  // 2. The synthetic checkpoint by model id; its first GET is cut at 100 MB.
  await page.getByTestId('max-tokens').fill(String(TOKENS));
  await page.getByTestId('max-tokens').dispatchEvent('change');
  await page.getByTestId('prompt').fill(INSTRUCTION);
  await page.getByTestId('prompt').dispatchEvent('change');
  const t0 = Date.now();
  await page.getByTestId('target-url').fill('test-org/big');
  await page.getByTestId('target-load').click();
  const ticker = setInterval(async () => {
    try { log(`  ${(await page.locator('.progress').first().textContent().catch(() => '')) ?? ''}`.slice(0, 160)); } catch { /* page busy */ }
  }, 15_000);
  await waitFor(() => document.querySelector('[data-testid=models]')?.textContent.includes('test-org/big')
    || (document.querySelector('[data-testid=error]')?.textContent ?? '').includes('test-org/big'));
  clearInterval(ticker);
  const loadS = (Date.now() - t0) / 1000;
  check((await models()).includes('/hub/test-org/big/resolve/main'), `the ${(bytes / 2 ** 30).toFixed(2)} GiB checkpoint loads by id in ${loadS.toFixed(1)} s (${JSON.stringify(await errorText())})`);
  // A resumed download asks for the rest of a file (`bytes=N-`); the header reads before it (the
  // fit check) ask for a few bytes from 0.
  const resumed = served.filter((l) => l.includes('/test-org/big/') && /\[bytes=[1-9]\d*-\] -> 206/.test(l));
  check(resumed.length > 0, `the cut download resumed with a range request (${resumed[0] ?? served.filter((l) => l.includes('big')).join('; ')})`);
  const memText = await page.getByTestId('engine-memory').textContent();
  const memMib = Number(/wasm memory (\d+) MiB/.exec(memText)?.[1] ?? NaN);
  check(memMib < 1024, `the engine worker's wasm memory stays under 1 GiB: ${memText}`);

  if (CAPTION !== 'big') {
    // 3. The small f16 checkpoint, quantized to q4 while loading.
    await page.getByTestId('quantize').selectOption('q4');
    await page.getByTestId('target-url').fill('test-org/small');
    await page.getByTestId('target-load').click();
    await waitFor(() => document.querySelector('[data-testid=models]')?.textContent.includes('test-org/small')
      || (document.querySelector('[data-testid=error]')?.textContent ?? '').includes('test-org/small'));
    const m = await models();
    check(m.includes('/hub/test-org/small/resolve/main') && m.includes('q4 weights'), `the f16 checkpoint loads by id as q4: ${JSON.stringify(m)}`);
  }
  const run = Number(await page.getByTestId('status').getAttribute('data-run'));
  const c0 = Date.now();
  await page.getByTestId('drop-input').setInputFiles(IMAGE);
  await waitFor((r) => {
    const s = document.querySelector('[data-testid=status]');
    return Number(s.getAttribute('data-run')) === r && ['done', 'error'].includes(s.textContent);
  }, run + 1);
  const captionS = (Date.now() - c0) / 1000;
  check((await status()) === 'done', `the caption finishes in ${captionS.toFixed(1)} s (${JSON.stringify(await errorText())})`);
  const text = (await page.getByTestId('caption').textContent()).trim();
  const same = text === cli.text.trim();
  check(same, `the page's caption equals the CLI's: ${JSON.stringify(text)} vs ${JSON.stringify(cli.text)}`);
  const speed = await page.getByTestId('speed').textContent();
  const tokensPerS = Number(/([\d.]+)\s*tok(?:ens)?\/s/.exec(speed)?.[1] ?? NaN);

  if (CAPTION !== 'big') {
    // 3b. What was quantized is kept: loading the small model as q4 again (as the draft) reads
    // the kept q4 copy, not the network, and the kept f16 originals are gone.
    const weightGets = () => served.filter((l) => l.startsWith('GET /hub/test-org/small/resolve/main/') && l.includes('.safetensors')).length;
    const gets = weightGets();
    await page.getByTestId('draft-url').fill('test-org/small');
    await page.getByTestId('draft-load').click();
    await waitFor(() => (document.querySelector('[data-testid=models]')?.textContent.match(/test-org\/small\/resolve\/main/g) ?? []).length >= 2
      || (document.querySelector('[data-testid=error]')?.textContent ?? '').includes('small'));
    check((await models()).match(/test-org\/small\/resolve\/main/g)?.length === 2, `the kept q4 copy loads as the draft: ${JSON.stringify(await models())} ${JSON.stringify(await errorText())}`);
    check(weightGets() === gets, `without a request for its weights (${weightGets() - gets} made)`);
    const kept = await page.evaluate(async () => {
      const top = await (await navigator.storage.getDirectory()).getDirectoryHandle('spec-llava-models');
      for await (const [name, dir] of top.entries()) {
        if (name.includes('small_resolve_main')) {
          const files = [];
          for await (const [f] of dir.entries()) files.push(f);
          return files.sort();
        }
      }
      return [];
    });
    check(kept.includes('q4.packed.json') && kept.some((f) => f.startsWith('q4.') && f.endsWith('.safetensors'))
      && !kept.some((f) => /^model.*\.safetensors$/.test(f)), `the store keeps the q4 copy, not the f16 originals: ${kept.join(', ')}`);
  }

  // 4. Cancel: a fresh load of the big model under another revision is stopped at once.
  await page.getByTestId('target-url').fill('test-org/big@other');
  await page.getByTestId('target-load').click();
  await page.getByTestId('load-cancel').click();
  await waitFor(() => /cancelled|safetensors/.test(document.querySelector('[data-testid=error]')?.textContent ?? '')
    || document.querySelector('[data-testid=models]')?.textContent.includes('big/resolve/other'));
  const cancelled = await errorText();
  check(/cancelled/.test(cancelled), `cancel stops the load: ${JSON.stringify(cancelled)}`);
  check((await models()).includes(`/hub/test-org/${CAPTION}/resolve/main`), 'and the loaded model stays');

  // 5. A full quota: the small model under a new revision does not fit the 20 MB left.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: `http://127.0.0.1:${port}`, quotaSize: 20_000_000 });
  await page.getByTestId('target-url').fill('test-org/small@quota');
  await page.getByTestId('target-load').click();
  await waitFor(() => document.querySelector('[data-testid=models]')?.textContent.includes('small/resolve/quota')
    || (document.querySelector('[data-testid=error]')?.textContent ?? '').includes('quota'));
  const notice = (await page.locator('[data-testid=notice]').textContent().catch(() => '')) ?? '';
  check((await models()).includes('/hub/test-org/small/resolve/quota') && /not kept/.test(notice),
    `with the quota full the model still loads, not kept: ${JSON.stringify(notice)} ${JSON.stringify(await errorText())}`);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: `http://127.0.0.1:${port}` });

  // 6. A device with little memory (`?gpu_memory_mib=`, as WebGPU does not say how much there is):
  // a model that does not fit is refused before its weights are downloaded, with what would fit,
  // and the loaded models stay.
  await page.getByRole('button', { name: 'back to the demo models' }).click();
  await waitFor(() => /demo\/target[\s\S]*demo\/draft/.test(document.querySelector('[data-testid=models]')?.textContent ?? ''));
  await page.goto(`http://127.0.0.1:${port}/?hub=http://127.0.0.1:${port}/hub&gpu_memory_mib=200`);
  await waitFor(() => ['ready', 'error'].includes(document.querySelector('[data-testid=status]')?.textContent));
  check((await status()) === 'ready', `the page loads its models with a 200 MiB budget: ${JSON.stringify(await errorText())}`);
  const budgetModels = await models();
  const refused = async (id, quantize, why) => {
    await page.getByTestId('quantize').selectOption(quantize);
    await page.getByTestId('target-url').fill(id);
    await page.getByTestId('target-load').click();
    await waitFor((i) => (document.querySelector('[data-testid=error]')?.textContent ?? '').includes(i)
      || document.querySelector('[data-testid=models]')?.textContent.includes(i), `/hub/${id}/`);
    const e = await errorText();
    check(e.includes(`/hub/${id}/resolve/main`) && e.includes('does not fit') && e.includes(why), `${id} (${quantize}) is refused: ${JSON.stringify(e)}`);
    check((await models()) === budgetModels, 'and the loaded models stay');
  };
  await refused('test-org/big', 'q4', 'try a smaller model');
  await refused('test-org/small', 'none', 'as q4 it would need');
  await page.getByTestId('quantize').selectOption('q4');
  await page.getByTestId('target-url').fill('test-org/small');
  await page.getByTestId('target-load').click();
  // (A new load clears the refusal's message, so an error now is this load's.)
  check(await errorText() === '', 'a new load clears the last error');
  await waitFor(() => document.querySelector('[data-testid=models]')?.textContent.includes('test-org/small')
    || (document.querySelector('[data-testid=error]')?.textContent ?? '') !== '');
  check((await models()).includes('/hub/test-org/small/resolve/main'), `as q4 it fits: ${JSON.stringify(await errorText())}`);

  console.log(JSON.stringify({ bytes, load_s: loadS, wasm_memory_mib: memMib, tokens: cli.tokens.length,
    tokens_per_s: tokensPerS, same_as_cli: same, captioned: `test-org/${CAPTION}`,
    cli_peak_rss_mib: cli.peak_rss_mib ?? null, cli_s: cliS }));
} catch (e) {
  console.error(e.message);
  console.error('--- browser console ---\n' + consoleLines.slice(-40).join('\n'));
  console.error('--- served ---\n' + served.slice(-20).join('\n'));
  try { await page.screenshot({ path: join(ARTIFACTS, 'hub-failure.png'), fullPage: true }); } catch { /* ignore */ }
  process.exitCode = 1;
} finally {
  await browser.close();
  server.kill();
  rmSync(profile, { recursive: true, force: true });
}
log(process.exitCode ? 'hub FAILED' : 'hub passed');
