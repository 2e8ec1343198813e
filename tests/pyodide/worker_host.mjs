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
//   node worker_host.mjs bench CONFIG.json   N call setups against recorded responses; prints JSON timings:
//     process CPU per setup, and (on alternate setups, with the meter on) how much of it was the
//     stand-ins, the Durable Object's Python and the Worker's Python steps (scripts/bench/edge.py).
// CONFIG: {pyodide, bundle, wheel, assets, env, limits, recorded, iterations, warmup, imports, token,
//          profile (a file for cProfile's report of the measured setups)}
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { entrypointHelper, compatFlags } from "./standins.mjs";

const [mode, configPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
const { loadPyodide } = await import(pathToFileURL(path.join(config.pyodide, "pyodide.mjs")).href);

const BUNDLE_DIR = "/session/metadata"; // where workerd puts the Worker's modules

// The bench's meter: time spent inside the host's stand-ins (JS that stands in for workerd's bindings
// and for the upstream services), kept apart so it never counts as the Worker's CPU. ``bucket`` says
// whose call it serves: "worker" (recorded fetch, KV, rate limits, the Durable Object stub, waitUntil)
// or "durable_object" (the object's storage). Only the outermost stand-in call is timed (no double
// counting when one stand-in calls another). The Python half of the meter is in the harness below.
// The clock is the process's CPU time (getrusage, to the microsecond), not wall time: on a shared
// machine the OS preempts the process, and wall time would charge that to whatever was running. It
// counts all threads, so V8's background work lands in whichever bucket is open at the time.
// ``ours`` is our code that a stand-in calls synchronously (a Durable Object's Python constructor):
// it counts for its owner and is taken out of the stand-in's time.
const meter = { on: false, depth: 0, standin: { worker: 0, durable_object: 0 }, ours: { durable_object: 0 }, oursTotal: 0 };
function cpuMs() {
  const used = process.cpuUsage();
  return (used.user + used.system) / 1000;
}
function timed(bucket, fn) {
  return function (...args) {
    if (!meter.on || meter.depth > 0) return fn.apply(this, args);
    meter.depth++;
    const oursBefore = meter.oursTotal;
    const started = cpuMs();
    try {
      return fn.apply(this, args);
    } finally {
      meter.standin[bucket] += cpuMs() - started - (meter.oursTotal - oursBefore);
      meter.depth--;
    }
  };
}
function ours(bucket, fn) {
  if (!meter.on) return fn();
  const started = cpuMs();
  try {
    return fn();
  } finally {
    const used = cpuMs() - started;
    meter.ours[bucket] += used;
    meter.oursTotal += used;
  }
}
const upstreamRequests = {}; // recorded-upstream requests by key: what the Worker actually sent
function timeMethods(cls, bucket, names) {
  for (const name of names) cls.prototype[name] = timed(bucket, cls.prototype[name]);
}
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
py.registerJsModule("_bench_meter", { cpu_ms: cpuMs });

// --- the bundle, flat, as wrangler uploads it ---------------------------------------------------------
py.FS.mkdirTree(BUNDLE_DIR);
const modules = fs
  .readdirSync(config.bundle, { recursive: true })
  .filter((name) => name.endsWith(".py") && !name.split(path.sep).includes("node_modules"));
for (const name of modules) {
  py.FS.mkdirTree(path.posix.dirname(`${BUNDLE_DIR}/${name}`));
  py.FS.writeFile(`${BUNDLE_DIR}/${name}`, fs.readFileSync(path.join(config.bundle, name)));
}
py.runPython(`import sys; sys.path.insert(0, "${BUNDLE_DIR}")`);

// The dispatcher workerd's introspection module provides: convert args in, results out.
const harness = py.runPython(`
import asyncio, contextvars
from inspect import isawaitable
from workers import python_from_rpc, python_to_rpc, DurableObject, WorkerEntrypoint

# The bench's meter, Python half: CPU time of every event-loop step (asyncio.Handle._run: a task step
# or a callback), by whose task it is. A Durable Object's methods run as their own tasks and mark them
# "durable_object"; everything else is the Worker's.
from _bench_meter import cpu_ms as _cpu_ms
_bucket = contextvars.ContextVar("meter_bucket", default="worker")
_steps = {"worker": 0.0, "durable_object": 0.0}
_metering = [False]
_plain_run = asyncio.Handle._run

def _metered_run(self):
    if not _metering[0]:
        return _plain_run(self)
    started = _cpu_ms()
    try:
        return _plain_run(self)
    finally:
        _steps[self._context.get(_bucket, "worker")] += _cpu_ms() - started

asyncio.Handle._run = _metered_run

def meter(on):
    _metering[0] = bool(on)

def meter_take():
    # CPU milliseconds of steps per bucket since the last call
    taken = dict(_steps)
    for name in _steps:
        _steps[name] = 0.0
    return taken

async def call_method(inst, name, *args):
    if isinstance(inst, DurableObject):
        _bucket.set("durable_object")  # this task only: each call runs as its own task
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
    for name in [n for n in sys.modules if n == "entry" or n == "splitrelay" or n.startswith("splitrelay.")]:
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
    stats = pstats.Stats(_profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    return out.getvalue()

{"call_method": call_method, "entrypoint_classes": entrypoint_classes, "reimport_seconds": reimport_seconds,
 "profile": profile, "meter": meter, "meter_take": meter_take}
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
    let timer;
    await Promise.race([Promise.all([...pending]), new Promise((r) => { timer = setTimeout(r, 50); })]);
    clearTimeout(timer); // a timer left behind would fire in the middle of a later measured setup
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
  async deleteAll() { this.values.clear(); }  // like workerd: the alarm stays (deleteAlarm removes it)
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
      const state = new DurableObjectState(id, entry);
      entry.instance = ours("durable_object", () => main[this.className](state, env));
      this.instances.set(name, entry);
    }
    // The RPC stub: each public method of the Python class, called with JS values. As with workerd's
    // RPC (the object lives in another isolate), the caller gets a promise and the object's method
    // runs as its own task, not inline in the caller's.
    return { dispatch: timed("worker", (text) => Promise.resolve(callMethod(entry.instance, "dispatch", text))) };
  }
}
timeMethods(KvNamespace, "worker", ["get", "put"]);
timeMethods(Ratelimit, "worker", ["limit"]);
timeMethods(DurableObjectStorage, "durable_object", ["get", "put", "delete", "deleteAll", "getAlarm", "setAlarm", "deleteAlarm"]);
timeMethods(DurableObjectNamespace, "worker", ["idFromName", "get"]);
timeMethods(ExecutionContext, "worker", ["waitUntil"]);

const env = { ...config.env };
env.CALLS = new DurableObjectNamespace(config.durable_object_class || "CallRecordObject");
env.RELAY_WATCH = new DurableObjectNamespace("RelayWatchObject");
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
    if (!table.has(key)) table.set(key, { ...item, text: item.body === null ? null : JSON.stringify(item.body) });
  }
  globalThis.fetch = timed("worker", async (input, init = {}) => {
    const method = (init.method || "GET").toUpperCase();
    const key = recordedKey(method, String(input), init.body);
    upstreamRequests[key] = (upstreamRequests[key] || 0) + 1;
    const item = table.get(key);
    if (!item) process.stderr.write(`recorded upstream: no response for ${key}\n`);
    if (!item) return new Response(JSON.stringify({ error: `no recorded response for ${key}` }), { status: 599 });
    return new Response(item.text, { status: item.status, headers: { "content-type": "application/json" } });
  });
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

// CPU time of this (the main) thread, from the kernel's scheduler statistics (ns). The kernel brings
// it up to date at each tick, so one reading can lag by a tick: used only summed over a whole pass.
function mainThreadCpuMs() {
  return Number(fs.readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]) / 1e6;
}

async function bench() {
  const recorded = JSON.parse(fs.readFileSync(config.recorded, "utf8"));
  const body = JSON.stringify({ offer: { type: "offer", sdp: recorded.offer } });
  const statuses = {};
  const setMeter = harness.get("meter");
  const takeSteps = harness.get("meter_take");
  async function setup(metered = false) {
    const request = new Request("http://edge.test/v1/calls", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${config.token}` },
      body,
    });
    // The window: the Worker's fetch and all its waitUntil work. The caller reading the response body
    // (the runtime streaming it out, in workerd) is outside it. The meter is on exactly as long.
    if (metered) { setMeter(true); meter.on = true; }
    const cpu = process.cpuUsage();
    const wall = performance.now();
    const response = await workerFetch(request);
    await drain();
    const used = process.cpuUsage(cpu);
    const wallMs = performance.now() - wall;
    if (metered) { meter.on = false; setMeter(false); }
    await response.arrayBuffer();
    statuses[response.status] = (statuses[response.status] || 0) + 1;
    return { cpu: (used.user + used.system) / 1000, wall: wallMs };
  }
  // Warm-up, not measured: the isolate's caches (app, registry, TURN credentials) and V8's tier-up of
  // Pyodide's WebAssembly, which compiles hot functions on background threads for a few seconds.
  const firstMs = [];
  for (let i = 0; i < (config.warmup ?? 50); i++) firstMs.push((await setup()).cpu);
  const plain = { cpu_ms: [], wall_ms: [], process_cpu_ms_total: 0, main_thread_cpu_ms_total: 0 };
  const metered = { cpu_ms: [], worker_steps_ms: [], durable_object_ms: [], standin_worker_ms: [],
    standin_durable_object_ms: [] };
  if (config.profile) harness.get("profile")(true);
  // Plain and metered setups alternate, so both passes see the same moments of a noisy machine.
  for (let i = 0; i < config.iterations; i++) {
    const thread = mainThreadCpuMs();
    const one = await setup();
    plain.main_thread_cpu_ms_total += mainThreadCpuMs() - thread;
    plain.process_cpu_ms_total += one.cpu;
    plain.cpu_ms.push(one.cpu);
    plain.wall_ms.push(one.wall);

    takeSteps().destroy();
    meter.standin = { worker: 0, durable_object: 0 };
    meter.ours = { durable_object: 0 };
    meter.oursTotal = 0;
    const measured = await setup(true);
    const stepsProxy = takeSteps();
    const steps = stepsProxy.toJs({ dict_converter: Object.fromEntries });
    stepsProxy.destroy();
    metered.cpu_ms.push(measured.cpu);
    // The object's constructor runs inside a Worker step (in the namespace's get): the object's CPU.
    metered.worker_steps_ms.push(steps.worker - meter.oursTotal);
    metered.durable_object_ms.push(steps.durable_object + meter.ours.durable_object);
    metered.standin_worker_ms.push(meter.standin.worker);
    metered.standin_durable_object_ms.push(meter.standin.durable_object);
  }
  if (config.profile) fs.writeFileSync(config.profile, harness.get("profile")(false));
  // Floor: the same runtime and harness answering GET /healthz (routing only, no upstream, no DO).
  const floorMs = [];
  for (let i = 0; i < Math.min(config.iterations, 200); i++) {
    const cpu = process.cpuUsage();
    const response = await workerFetch(new Request("http://edge.test/healthz"));
    const used = process.cpuUsage(cpu);
    await response.arrayBuffer();
    floorMs.push((used.user + used.system) / 1000);
  }
  const reimport = harness.get("reimport_seconds");
  const importMs = [];
  for (let i = 0; i < (config.imports || 20); i++) importMs.push(reimport() * 1000);
  process.stdout.write(JSON.stringify({
    pyodide: py.version, load_ms: loadMs, first_import_ms: firstImportMs, warmup_cpu_ms: firstMs, plain, metered, statuses,
    healthz_cpu_ms: floorMs, reimport_ms: importMs, calls: env.CALLS.instances.size, upstream_requests: upstreamRequests,
  }) + "\n");
}

if (mode === "serve") await serve();
else if (mode === "bench") { await bench(); process.exit(0); }
else { process.stderr.write("usage: worker_host.mjs serve|bench CONFIG.json\n"); process.exit(2); }
