// A small stand-in for workerd that runs the edge Worker in its real Python runtime: Pyodide in Node
// (the npm `pyodide` package at the version Cloudflare's Python Workers use) with the real
// `workers-runtime-sdk` wheel. It loads the bundle exactly as wrangler uploads it (flat modules in one
// folder, main module `entry`), instantiates the Worker's classes the way workerd does, and hands them
// real Fetch API objects (Node's Request, Response, Headers, fetch).
//
// Only what cannot run here is stood in for (docs/edge.md lists each): the two runtime-internal
// modules the SDK imports (standins.mjs), and the bindings workerd provides (Durable Object namespace
// and storage with alarms, KV, Rate Limiting, static assets), in memory.
//
// Modes:
//   node worker_host.mjs serve CONFIG.json   HTTP server on 127.0.0.1; prints {"event":"ready","url":...}
//   node worker_host.mjs bench CONFIG.json   N call setups against recorded responses; prints JSON timings
// CONFIG: {pyodide, bundle, wheel, assets, env, limits, recorded, iterations, imports}
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { entrypointHelper, compatFlags } from "./standins.mjs";

const [mode, configPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
const { loadPyodide } = await import(pathToFileURL(path.join(config.pyodide, "pyodide.mjs")).href);

const BUNDLE_DIR = "/session/metadata"; // where workerd puts the Worker's modules
// Recorded upstream: installed before Pyodide starts, since pyodide.http binds js.fetch when imported.
if (config.recorded) installRecorded(JSON.parse(fs.readFileSync(config.recorded, "utf8")));
const t0 = performance.now();
const py = await loadPyodide({ stdout: (s) => process.stderr.write(s + "\n") });
const loadMs = performance.now() - t0;

// --- the real SDK wheel, unpacked into site-packages -------------------------------------------------
py.FS.writeFile("/tmp/sdk.whl", fs.readFileSync(config.wheel));
py.runPython(`
import site, sys, zipfile
target = site.getsitepackages()[0]
with zipfile.ZipFile("/tmp/sdk.whl") as wheel:
    wheel.extractall(target)
sys.dont_write_bytecode = True
`);
py.registerJsModule("_pyodide_entrypoint_helper", entrypointHelper);
py.registerJsModule("_cloudflare_compat_flags", compatFlags);

// --- the bundle, flat, as wrangler uploads it ---------------------------------------------------------
py.FS.mkdirTree(BUNDLE_DIR);
const modules = fs.readdirSync(config.bundle).filter((name) => name.endsWith(".py"));
for (const name of modules) {
  py.FS.writeFile(`${BUNDLE_DIR}/${name}`, fs.readFileSync(path.join(config.bundle, name)));
}
py.runPython(`import sys; sys.path.insert(0, "${BUNDLE_DIR}")`);

// The dispatcher workerd's introspection module provides: convert args in, results out.
const harness = py.runPython(`
from inspect import isawaitable
from workers import python_from_rpc, python_to_rpc, DurableObject, WorkerEntrypoint

async def call_method(inst, name, *args):
    result = getattr(inst, name)(*[python_from_rpc(arg) for arg in args])
    if isawaitable(result):
        result = await result
    return python_to_rpc(result)

def entrypoint_classes(module):
    found = {"durable_objects": [], "entrypoints": []}
    for key in dir(module):
        value = getattr(module, key)
        if isinstance(value, type) and issubclass(value, DurableObject) and value is not DurableObject:
            found["durable_objects"].append(key)
        if isinstance(value, type) and issubclass(value, WorkerEntrypoint) and value is not WorkerEntrypoint:
            found["entrypoints"].append(key)
    return found

def reimport_seconds():
    """Import the bundle's modules again from source (a cold start of our code in a warm runtime)."""
    import importlib, time
    for name in [n for n in sys.modules if n == "entry" or n == "edge" or n.startswith("edge.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    started = time.perf_counter()
    importlib.import_module("entry")
    return time.perf_counter() - started

import cProfile, pstats, io
_profiler = cProfile.Profile()

def profile(on):
    """Bench option: profile the Worker's Python across the setups, report the top functions."""
    if on:
        _profiler.enable()
        return ""
    _profiler.disable()
    out = io.StringIO()
    pstats.Stats(_profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()

{"call_method": call_method, "entrypoint_classes": entrypoint_classes, "reimport_seconds": reimport_seconds,
 "profile": profile}
`);
const callMethod = harness.get("call_method");

const i0 = performance.now();
const main = py.pyimport("entry"); // workerd: pyimport(MAIN_MODULE_NAME without ".py")
const firstImportMs = performance.now() - i0;
const classes = harness.get("entrypoint_classes")(main).toJs({ dict_converter: Object.fromEntries });

// --- bindings ---------------------------------------------------------------------------------------
const pending = new Set();
class ExecutionContext {
  waitUntil(promise) {
    const tracked = Promise.resolve(promise).catch((error) => process.stderr.write(`waitUntil: ${error}\n`));
    pending.add(tracked);
    tracked.finally(() => pending.delete(tracked));
  }
  passThroughOnException() {}
}

async function drain(limitMs = 30000) {
  const deadline = Date.now() + limitMs;
  while (pending.size > 0 && Date.now() < deadline) {
    await Promise.race([Promise.all([...pending]), new Promise((r) => setTimeout(r, 50))]);
  }
  return pending.size;
}

class KvNamespace {
  constructor(values) { this.values = new Map(Object.entries(values || {})); }
  async get(key) { return this.values.has(key) ? this.values.get(key) : null; }
  async put(key, value) { this.values.set(key, value); }
}

class Ratelimit {
  constructor(limit, periodS) { this.limit_ = limit; this.periodMs = periodS * 1000; this.windows = new Map(); }
  async limit(options) {
    const now = Date.now();
    const window = Math.floor(now / this.periodMs);
    const entry = this.windows.get(options.key);
    const count = entry && entry.window === window ? entry.count + 1 : 1;
    this.windows.set(options.key, { window, count });
    return { success: count <= this.limit_ };
  }
}

class DurableObjectStorage {
  constructor(owner) { this.values = new Map(); this.owner = owner; this.alarmAt = null; this.timer = null; }
  async get(key) { return this.values.get(key); }
  async put(key, value) { this.values.set(key, value); }
  async delete(key) { return this.values.delete(key); }
  async getAlarm() { return this.alarmAt; }
  async setAlarm(at) {
    await this.deleteAlarm();
    this.alarmAt = Number(at);
    const delay = Math.min(Math.max(0, this.alarmAt - Date.now()), 2 ** 31 - 1);
    this.timer = setTimeout(() => {
      this.alarmAt = null;
      this.timer = null;
      new ExecutionContext().waitUntil(this.owner.alarm());
    }, delay);
  }
  async deleteAlarm() { if (this.timer) clearTimeout(this.timer); this.timer = null; this.alarmAt = null; }
}

class DurableObjectState {
  constructor(id, owner) { this.id = id; this.storage = new DurableObjectStorage(owner); }
  waitUntil(promise) { new ExecutionContext().waitUntil(promise); }
}

class DurableObjectId {
  constructor(name) { this.name = name; }
  toString() { return this.name; }
}

class DurableObjectNamespace {
  constructor(className) { this.className = className; this.instances = new Map(); }
  idFromName(name) { return new DurableObjectId(name); }
  get(id) {
    const name = String(id);
    let entry = this.instances.get(name);
    if (!entry) {
      entry = { alarm: () => callMethod(entry.instance, "alarm") };
      entry.instance = main[this.className](new DurableObjectState(id, entry), env);
      this.instances.set(name, entry);
    }
    // The RPC stub: each public method of the Python class, called with JS values.
    return { dispatch: (text) => callMethod(entry.instance, "dispatch", text) };
  }
}

const env = { ...config.env };
env.CALLS = new DurableObjectNamespace(config.durable_object_class || "CallRecordObject");
env.RELAY_REGISTRY = new KvNamespace(config.kv || {});
env.IP_RATE_LIMIT = new Ratelimit(config.limits?.ip ?? 1000, 60);
env.TOKEN_RATE_LIMIT = new Ratelimit(config.limits?.token ?? 1000, 60);

async function workerFetch(request) {
  const worker = main.Default(new ExecutionContext(), env);
  try {
    return await callMethod(worker, "fetch", request);
  } finally {
    worker.destroy();
  }
}

// --- recorded upstream (bench, and tests without an emulator) -----------------------------------------
function recordedKey(method, url, body) {
  const p = new URL(url).pathname
    .replace(/\/sessions\/(?!new$)[^/]+/, "/sessions/{session}")
    .replace(/\/calls\/[^/]+$/, "/calls/{call}");
  const withSdp = typeof body === "string" && body.includes('"sessionDescription"') ? "+sdp" : "";
  return `${method} ${p}${withSdp}`;
}

function installRecorded(recorded) {
  const table = new Map();
  for (const item of recorded.exchanges) {
    const key = `${item.method} ${item.key}`;
    if (!table.has(key)) table.set(key, item);
  }
  globalThis.fetch = async (input, init = {}) => {
    const method = (init.method || "GET").toUpperCase();
    const key = recordedKey(method, String(input), init.body);
    const item = table.get(key);
    if (!item) process.stderr.write(`recorded upstream: no response for ${key}\n`);
    if (!item) return new Response(JSON.stringify({ error: `no recorded response for ${key}` }), { status: 599 });
    return new Response(item.body === null ? null : JSON.stringify(item.body), {
      status: item.status,
      headers: { "content-type": "application/json" },
    });
  };
}

// --- modes ------------------------------------------------------------------------------------------
function staticAsset(urlPath) {
  if (!config.assets) return null;
  const relative = urlPath === "/" ? "index.html" : urlPath.replace(/^\/+/, "");
  if (!relative || relative.split("/").includes("..")) return null;
  const file = path.join(config.assets, relative);
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) return null;
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
  return { body: fs.readFileSync(file), type: types[path.extname(file)] || "application/octet-stream" };
}

async function serve() {
  const server = http.createServer(async (req, res) => {
    try {
      const chunks = [];
      let size = 0;
      for await (const chunk of req) {
        size += chunk.length;
        if (size > 1 << 20) { res.writeHead(413).end(); return; }
        chunks.push(chunk);
      }
      if (req.url === "/__host/drain") {
        const left = await drain();
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ pending: left }));
        return;
      }
      const asset = req.method === "GET" ? staticAsset(new URL(req.url, "http://h").pathname) : null;
      if (asset) { res.writeHead(200, { "content-type": asset.type }).end(asset.body); return; }
      const headers = new Headers();
      let cf = undefined;
      for (const [name, value] of Object.entries(req.headers)) {
        if (name === "x-test-cf") cf = JSON.parse(value); // request.cf, as Cloudflare would set it
        else headers.set(name, Array.isArray(value) ? value.join(", ") : value);
      }
      const body = ["GET", "HEAD"].includes(req.method) ? undefined : Buffer.concat(chunks);
      const request = new Request(`http://${req.headers.host}${req.url}`, { method: req.method, headers, body });
      if (cf !== undefined) Object.defineProperty(request, "cf", { value: cf });
      const response = await workerFetch(request);
      const out = Buffer.from(await response.arrayBuffer());
      res.writeHead(response.status, Object.fromEntries(response.headers.entries())).end(out);
    } catch (error) {
      process.stderr.write(`host error: ${error.stack || error}\n`);
      res.writeHead(500, { "content-type": "text/plain" }).end("worker host error");
    }
  });
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address();
    process.stdout.write(JSON.stringify({
      event: "ready", url: `http://127.0.0.1:${port}`, pyodide: py.version, python: py.runPython("import sys; sys.version.split()[0]"),
      modules: modules.sort(), classes, load_ms: loadMs, first_import_ms: firstImportMs,
    }) + "\n");
  });
  const stop = () => { server.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function bench() {
  const recorded = JSON.parse(fs.readFileSync(config.recorded, "utf8"));
  const cpuMs = [];
  const wallMs = [];
  const statuses = {};
  if (config.profile) harness.get("profile")(true);
  for (let i = 0; i < config.iterations; i++) {
    const request = new Request("http://edge.test/v1/calls", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${config.token}` },
      body: JSON.stringify({ offer: { type: "offer", sdp: recorded.offer } }),
    });
    const cpu = process.cpuUsage();
    const wall = performance.now();
    const response = await workerFetch(request);
    await response.arrayBuffer();
    await drain();
    const used = process.cpuUsage(cpu);
    wallMs.push(performance.now() - wall);
    cpuMs.push((used.user + used.system) / 1000);
    statuses[response.status] = (statuses[response.status] || 0) + 1;
  }
  if (config.profile) process.stderr.write(harness.get("profile")(false));
  // Floor: the same runtime and harness answering GET /healthz (routing only, no upstream, no DO).
  const floorMs = [];
  for (let i = 0; i < Math.min(config.iterations, 200); i++) {
    const cpu = process.cpuUsage();
    const response = await workerFetch(new Request("http://edge.test/healthz"));
    await response.arrayBuffer();
    const used = process.cpuUsage(cpu);
    floorMs.push((used.user + used.system) / 1000);
  }
  const reimport = harness.get("reimport_seconds");
  const importMs = [];
  for (let i = 0; i < (config.imports || 20); i++) importMs.push(reimport() * 1000);
  process.stdout.write(JSON.stringify({
    pyodide: py.version, load_ms: loadMs, first_import_ms: firstImportMs, setup_cpu_ms: cpuMs,
    setup_wall_ms: wallMs, statuses, healthz_cpu_ms: floorMs, reimport_ms: importMs, calls: env.CALLS.instances.size,
  }) + "\n");
}

if (mode === "serve") await serve();
else if (mode === "bench") { await bench(); process.exit(0); }
else { process.stderr.write("usage: worker_host.mjs serve|bench CONFIG.json\n"); process.exit(2); }
