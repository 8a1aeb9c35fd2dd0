// The page's service worker: after the first visit the page, onnxruntime-web and the model come from a cache of
// this build's files, so a second visit works offline (a clinic's connection is often poor). serve_web.py writes
// the build's files, {url: SHA-256}, and its id (the SHA-256 of that list: another model is another build) below.
// One cache per build, named by its id: this worker caches every file of its build, each checked against its
// SHA-256 (a file of another build is never cached with it), answers only from that cache, and deletes every other
// cache once it takes over. A new build's worker takes over at once; the page reloads then (app.js), so that old
// and new files never mix. Its precache asks the HTTP cache first: the server's ETag makes a file the page just
// downloaded a 304, not a second download.
const FILES = {}; // serve_web.py writes {url: SHA-256} of the build here
const BUILD = "unbuilt"; // serve_web.py writes the build id here
const CACHE = `skin-lesion-page-${BUILD}`;

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

// Fetch one file of the build (through the HTTP cache, revalidated) and check its bytes against its SHA-256.
async function checkedResponse(name) {
  const response = await fetch(name, { cache: "no-cache" });
  if (!response.ok) throw new Error(`HTTP ${response.status} for ${name}`);
  const body = await response.arrayBuffer();
  if (hex(await crypto.subtle.digest("SHA-256", body)) !== FILES[name]) {
    throw new Error(`${name} is not the file of build ${BUILD} (the server was rebuilt): not cached`);
  }
  const headers = { "Content-Type": response.headers.get("Content-Type") || "application/octet-stream" };
  return new Response(body, { status: 200, headers });
}

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const names = Object.keys(FILES);
    const responses = await Promise.all(names.map(checkedResponse)); // all or nothing: a failed install is retried
    const cache = await caches.open(CACHE);
    await Promise.all(names.map((name, i) => cache.put(name, responses[i])));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

// The file of this build a request asks for (index.html is "./"), or null (another origin, not GET or HEAD).
function fileOf(request) {
  const url = new URL(request.url);
  const scope = new URL(self.registration.scope);
  if (url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname)) return null;
  if (request.method !== "GET" && request.method !== "HEAD") return null;
  const path = url.pathname.slice(scope.pathname.length);
  const name = path === "" || path === "index.html" ? "./" : path;
  return Object.hasOwn(FILES, name) ? name : null;
}

self.addEventListener("fetch", (event) => {
  const name = fileOf(event.request);
  if (name === null) return; // not a file of this build: the network answers, as without a worker
  event.respondWith((async () => {
    const cached = await (await caches.open(CACHE)).match(name);
    return cached || fetch(event.request); // only while this build's cache is incomplete (never after install)
  })());
});
