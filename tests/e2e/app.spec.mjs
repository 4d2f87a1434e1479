// End-to-end tests of the browser app: playwright-core drives headless Chromium (WebGPU on
// SwiftShader) against `cargo xtask serve --no-build`. Run by `cargo xtask test` (step
// "browser e2e"), which sets:
//   SPEC_LLAVA_BIN  the native CLI (expected captions come from it)
//   XTASK_BIN       the xtask binary (its static server)
//   E2E_ARTIFACTS   where screenshots go
// Each check prints one line; the first failure exits non-zero with the reason.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARTIFACTS, BIN, cliCaption, freePort, launchBrowser, reporter, startAppServer } from './harness.mjs';

const LONG_TASK_MS = 200;
const { log, check } = reporter('e2e');

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
let server = await startAppServer(port);
const browser = await launchBrowser();
// A 1280-px-wide page: the tree must fit its panel there (layout checks below).
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
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

// Layout facts of the round drawn now: the tree fits its panel (no horizontal overflow), every
// verified node is labelled at a readable size, labels do not overlap, collapsed pruned counts
// add up to the round's pruned total, every node has a text alternative.
async function treeFacts() {
  return page.evaluate(() => {
    const panel = document.querySelector('.tree-scroll');
    const svg = document.querySelector('[data-testid=tree]');
    const verified = [...svg.querySelectorAll('g.node:not(.badge)')].filter((g) => g.getAttribute('data-status') !== 'pruned');
    const px = (t) => parseFloat(getComputedStyle(t).fontSize) * (t.getScreenCTM()?.a ?? 1);
    const labels = verified.map((g) => g.querySelector('text'));
    const boxes = [...svg.querySelectorAll('g.node text')].map((t) => t.getBoundingClientRect());
    let overlaps = 0;
    for (let i = 0; i < boxes.length; i++) {
      for (let j = 0; j < i; j++) {
        const [a, b] = [boxes[i], boxes[j]];
        if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) overlaps++;
      }
    }
    const badges = [...svg.querySelectorAll('g.badge')];
    return {
      round: svg.getAttribute('data-round'),
      overflow: panel.scrollWidth - panel.clientWidth,
      right: svg.getBoundingClientRect().right - panel.getBoundingClientRect().right,
      verified: verified.length,
      verifiedAttr: Number(svg.getAttribute('data-verified')),
      unlabelled: labels.filter((t) => !t || t.textContent.trim() === '').length,
      smallest: Math.min(...labels.map(px)),
      overlaps,
      prunedTotal: Number(svg.getAttribute('data-pruned-total')),
      collapsed: badges.filter((b) => b.getAttribute('aria-expanded') !== 'true').reduce((n, b) => n + Number(b.getAttribute('data-pruned')), 0),
      prunedDrawn: svg.querySelectorAll('g.node.pruned:not(.badge)').length,
      badges: badges.length,
      noAlt: [...svg.querySelectorAll('g.node')].filter((g) => g.getAttribute('tabindex') !== '0' || !(g.getAttribute('aria-label') ?? '').includes(':') && !g.classList.contains('badge')).length,
      accepted: [...svg.querySelectorAll('g.node.accepted:not(.root), g.node.bonus')].map((g) => g.getAttribute('aria-label')),
    };
  });
}
function checkTreeFacts(f, where) {
  if (f.overflow > 0 || f.right > 0.5) throw new Error(`FAILED: ${where}: the tree overflows its panel (${f.overflow} px scroll, ${f.right.toFixed(1)} px past the edge)`);
  if (f.verified === 0 || f.verified !== f.verifiedAttr) throw new Error(`FAILED: ${where}: ${f.verified} verified nodes drawn of ${f.verifiedAttr}`);
  if (f.unlabelled > 0) throw new Error(`FAILED: ${where}: ${f.unlabelled} verified nodes without a label`);
  if (!(f.smallest >= 11)) throw new Error(`FAILED: ${where}: labels at ${f.smallest.toFixed(1)} px (< 11)`);
  if (f.overlaps > 0) throw new Error(`FAILED: ${where}: ${f.overlaps} overlapping labels`);
  if (f.collapsed + f.prunedDrawn !== f.prunedTotal) throw new Error(`FAILED: ${where}: pruned badges add up to ${f.collapsed} + ${f.prunedDrawn} drawn, not ${f.prunedTotal}`);
  if (f.noAlt > 0) throw new Error(`FAILED: ${where}: ${f.noAlt} nodes not focusable or without a text alternative`);
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
  const { errors: shaderErrors, skipped } = await page.evaluate(async (list) => {
    const adapter = await navigator.gpu.requestAdapter();
    const device = await adapter.requestDevice({ requiredLimits: { maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage } });
    const errors = [];
    const skipped = [];
    for (const k of list) {
      // Forms behind a WGSL language feature (packed 8-bit dot products) compile where it is.
      if (k.requires && !navigator.gpu.wgslLanguageFeatures.has(k.requires)) {
        skipped.push(`${k.name} (no ${k.requires})`);
        continue;
      }
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
    return { errors, skipped };
  }, kernels);
  if (skipped.length) log(`not compiled here: ${skipped.join(', ')}`);
  check(kernels.length >= 20 && shaderErrors.length === 0,
    `all ${kernels.length - skipped.length} of ${kernels.length} WGSL kernels compile in Chromium${shaderErrors.length ? ': ' + shaderErrors.join(' | ') : ''}`);

  // 2. A dropped scene gets exactly the native CLI's caption; a screenshot mid-generation.
  const longTasksBefore = await page.evaluate(() => window.__longTasks?.length ?? -1);
  // The screenshot is of a round as it rests (reduced motion: no phase animation half-way), once
  // a round has accepted words, while the caption is still being written.
  await page.emulateMedia({ reducedMotion: 'reduce' });
  await page.getByTestId('drop-input').setInputFiles(scenes[0].path);
  await page.waitForSelector('[data-testid=tree] g.node', { timeout: 180_000 });
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=tree] g.node.accepted:not(.root)').length >= 2
    || document.querySelector('[data-testid=status]').textContent !== 'generating', null, { timeout: 180_000 });
  const midStatus = await status();
  await page.screenshot({ path: join(ARTIFACTS, 'mid-generation.png'), fullPage: true });
  log(`screenshot: ${join(ARTIFACTS, 'mid-generation.png')} (status ${midStatus})`);
  await page.emulateMedia({ reducedMotion: 'no-preference' });
  const s0 = await waitStatus(['done', 'error']);
  check(s0 === 'done', 'the first caption finishes');
  const got0 = (await page.getByTestId('caption').textContent()).trim();
  check(got0 === scenes[0].expected, `page caption equals the CLI's: ${JSON.stringify(got0)}`);
  // The finished caption beside its tree (the README's screenshot is this one), taken with reduced
  // motion so that the last round's words are not caught mid-flight.
  await page.emulateMedia({ reducedMotion: 'reduce' });
  await page.screenshot({ path: join(ARTIFACTS, 'done.png'), fullPage: true });
  await page.emulateMedia({ reducedMotion: 'no-preference' });

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
  let facts = { verified: 0, pruned: 0, badges: 0, smallest: Infinity };
  for (let r = 1; r <= rounds; r++) {
    await page.getByTestId('round-scrubber').fill(String(r));
    drawn.push(await page.getByTestId('tree').getAttribute('data-round'));
    for (const st of await page.locator('[data-testid=tree] g.node').evaluateAll((ns) => ns.map((n) => n.getAttribute('data-status')))) seen.add(st);
    const f = await treeFacts();
    checkTreeFacts(f, `round ${r}`);
    facts = { verified: facts.verified + f.verified, pruned: facts.pruned + f.prunedTotal, badges: facts.badges + f.badges, smallest: Math.min(facts.smallest, f.smallest) };
  }
  check(new Set(drawn).size === rounds, `the scrubber draws each of the ${rounds} rounds (${drawn.join(',')})`);
  check(true, `at 1280 px, every round's tree fits its panel with no horizontal overflow; all ${facts.verified} verified nodes `
    + `are labelled (smallest ${facts.smallest.toFixed(1)} px >= 11), no labels overlap, every node is focusable with a text alternative; `
    + `${facts.badges} "+n" badges add up to each round's pruned total (${facts.pruned} in all)`);
  const path = (await treeFacts()).accepted;
  check(path.length >= 1 && path.every((l) => /^(accepted: '.+', draft confidence \d\.\d\d|bonus, the target's own token: '.+')$/.test(l)),
    `accepted nodes say what they are: ${JSON.stringify(path.slice(0, 3))}`);

  // 4b. The round strip: one mark per round with its accepted length; a click shows that round
  // and stops following; "follow latest" follows again.
  const marks = await page.locator('[data-testid=round-strip] .mark').evaluateAll((ms) => ms.map((m) => ({ round: m.getAttribute('data-round'), accepted: Number(m.getAttribute('data-accepted')) })));
  check(marks.length === rounds && marks.every((m, i) => m.round === drawn[i]), `the round strip has one mark per round (${marks.map((m) => m.accepted).join(' ')})`);
  await page.locator('[data-testid=round-strip] .mark').nth(0).click();
  const shown0 = await page.getByTestId('tree').getAttribute('data-round');
  const accepted0 = await page.locator('[data-testid=tree] g.node.accepted:not(.root)').count();
  check(shown0 === marks[0].round && accepted0 === marks[0].accepted && (await page.getByTestId('round-scrubber').inputValue()) === '1',
    `a click on the first mark draws its round (${accepted0} accepted) and moves the scrubber`);
  await page.getByTestId('follow-latest').click();
  check((await page.getByTestId('tree').getAttribute('data-round')) === drawn[drawn.length - 1], '"follow latest" draws the latest round again');

  // 4c. Pruned candidates: a badge expands on click (its candidates drawn, the total unchanged),
  // and "show all candidates" draws every one of them.
  const badge = page.locator('[data-testid=tree] g.badge').first();
  const inBadge = Number(await badge.getAttribute('data-pruned'));
  await badge.click();
  let f = await treeFacts();
  checkTreeFacts(f, 'a badge expanded');
  check(f.prunedDrawn === inBadge, `a "+${inBadge}" badge expands into its ${inBadge} candidates on click`);
  await page.getByTestId('show-pruned').check();
  f = await treeFacts();
  checkTreeFacts(f, 'show all');
  check(f.prunedDrawn === f.prunedTotal && f.badges === 0, `"show all candidates" draws all ${f.prunedTotal} pruned candidates`);
  await page.getByTestId('show-pruned').uncheck();
  // Keyboard: the first node takes focus, Tab walks the accepted path first.
  await page.locator('[data-testid=tree] g.node').first().focus();
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement?.getAttribute('aria-label') ?? '');
  check(/^(accepted|bonus)/.test(focused), `Tab from the root goes along the accepted path (${JSON.stringify(focused)})`);
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

  // 5b. Live phases: a round drawn while following generation animates (column by column, then
  // the verdict); with prefers-reduced-motion nothing animates.
  await page.getByTestId('drop-input').setInputFiles(scenes[1].path);
  await page.waitForSelector('[data-testid=tree][data-live=true] g.node', { timeout: 180_000 });
  const anim = await page.evaluate(() => {
    const g = document.querySelector('[data-testid=tree][data-live=true] g.node');
    return g ? getComputedStyle(g).animationName : 'gone';
  });
  await waitStatus(['done', 'error']);
  check(anim === 'gone' || anim.includes('tv-appear'), `a live round's nodes appear in phases (animation ${anim})`);
  await page.emulateMedia({ reducedMotion: 'reduce' });
  const still = await page.evaluate(() => [...document.querySelectorAll('[data-testid=tree] *, [data-testid=caption] *')]
    .filter((e) => getComputedStyle(e).animationName !== 'none').length);
  check(still === 0, 'with prefers-reduced-motion nothing in the tree or caption animates');
  await page.emulateMedia({ reducedMotion: 'no-preference' });

  // 6. A new drop during generation cancels the running caption; the new image's caption wins.
  await page.getByTestId('drop-input').setInputFiles(scenes[1].path);
  await page.waitForFunction(() => document.querySelector('[data-testid=status]').textContent === 'generating');
  check((await caption(scenes[2])) === scenes[2].expected, 'a drop during generation cancels it and captions the new image');

  // 7. A corrupt file shows an error naming it; the next good drop still works.
  check((await drop(corrupt)) === 'error', 'a corrupt image sets the error status');
  const err = await page.getByTestId('error').textContent();
  check(err.includes('broken.png'), `the error names the file: ${JSON.stringify(err)}`);
  check((await caption(scenes[0])) === scenes[0].expected, 'a good image after the error still captions');

  // 7b. A photograph on the demo models: a notice that they know only generated scenes, and
  // still a caption; a generated scene after it gets no notice.
  check((await drop('tests/fixtures/images/photo.jpg')) === 'done', 'a photograph still gets a caption');
  const notice = await page.getByTestId('input-notice').textContent();
  check(notice.includes('generated scenes'), `a photograph on the demo models gets a notice: ${JSON.stringify(notice)}`);
  check((await caption(scenes[1])) === scenes[1].expected, 'a generated scene after the photograph captions');
  check((await page.locator('[data-testid=input-notice]').count()) === 0, 'and gets no notice');

  // 7c. Where each model runs: the models list names each model's engine, the draft's line its
  // measured pass ("auto" put it where a pass is cheaper). Set from the keyboard to the CPU
  // engine, then to the target's engine: the list follows, and captions stay the CLI's.
  const engineOf = async (role) => {
    const el = page.getByTestId(`model-engine-${role}`);
    return { text: (await el.textContent()).trim(), engine: await el.getAttribute('data-engine') };
  };
  const waitDraftOn = (engine, why) => page.waitForFunction(([e, w]) => {
    const el = document.querySelector('[data-testid=model-engine-draft]');
    return el && el.getAttribute('data-engine') === e && el.textContent.includes(w);
  }, [engine, why], { timeout: 120_000 });
  const onTarget = await engineOf('target');
  check(onTarget.engine === 'webgpu' && onTarget.text.includes('WebGPU'), `the target's engine is shown: ${JSON.stringify(onTarget.text)}`);
  const auto = await engineOf('draft');
  check(['webgpu', 'cpu'].includes(auto.engine) && /ms a pass/.test(auto.text) && auto.text.includes('auto'),
    `the draft's engine is shown with its measured pass: ${JSON.stringify(auto.text)}`);
  await page.getByTestId('draft-engine').focus();
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowDown');
  check((await page.getByTestId('draft-engine').inputValue()) === 'cpu', 'the draft engine is chosen from the keyboard');
  await waitDraftOn('cpu', 'as set in Settings');
  const onCpu = await engineOf('draft');
  check(onCpu.text.startsWith('draft runs on: CPU engine (wasm), ') && onCpu.text.includes(' ms on WebGPU'),
    `forced onto the CPU engine: ${JSON.stringify(onCpu.text)}`);
  check((await caption(scenes[2])) === scenes[2].expected, 'with the draft on the CPU engine beside WebGPU, the caption is the CLI\'s');
  await page.getByTestId('draft-engine').selectOption('same');
  await waitDraftOn('webgpu', 'as set in Settings');
  check((await caption(scenes[0])) === scenes[0].expected, 'with the draft back on WebGPU, the caption is the CLI\'s');
  await page.getByTestId('draft-engine').selectOption('auto');
  await waitDraftOn(auto.engine, 'auto');
  log(`draft placement: ${(await engineOf('draft')).text}`);

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
