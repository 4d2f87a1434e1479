// The engine worker: loads the same wasm module as the page and runs `start_worker` (src/app/worker.rs).
// Messages that arrive while the module is still loading are kept and replayed in order.
import init, { start_worker } from './pkg/spec_llava.js';

const early = [];
self.onmessage = (e) => early.push(e);
await init();
start_worker();
for (const e of early) self.onmessage(e);
