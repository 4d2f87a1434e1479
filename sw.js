// Service worker: the app works offline after one visit.
// - App files (this origin, outside the model folders): network first, cached copy when offline,
//   so a rebuilt app is never served stale while online.
// - Model files are cached by the engine worker itself (Cache API bucket spec-llava-models-v1,
//   src/app/fetch.rs); here they are served from any cache when present.
const APP_CACHE = 'spec-llava-app-v1';
const APP_FILES = [
  './',
  './index.html',
  './web/style.css',
  './web/worker.js',
  './web/pkg/spec_llava.js',
  './web/pkg/spec_llava_bg.wasm',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(APP_CACHE).then((c) => c.addAll(APP_FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  const isModel = url.pathname.includes('/models/') || url.origin !== self.location.origin;
  if (isModel) {
    event.respondWith(caches.match(req).then((hit) => hit || fetch(req)));
    return;
  }
  event.respondWith(
    fetch(req)
      .then((res) => {
        if (res.ok) {
          const copy = res.clone();
          caches.open(APP_CACHE).then((c) => c.put(req, copy));
        }
        return res;
      })
      .catch(() => caches.match(req, { ignoreSearch: true }).then((hit) => hit || Response.error())),
  );
});
