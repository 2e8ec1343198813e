// Stand-ins for the two runtime-internal modules that `workers-runtime-sdk` imports and that only
// workerd provides (it registers them with pyodide.registerJsModule before importing the Worker).
// They are written to behave as workerd's do for what the edge uses; docs/edge.md says why each exists.

// `_pyodide_entrypoint_helper`: workerd's bridge to the JS side of the runtime.
//  - patchWaitUntil(ctx): workerd wraps ctx.waitUntil so a Python awaitable passed to it is copied
//    (Pyodide destroys borrowed proxies when the call returns) and destroyed after it settles.
//  - cloudflareWorkersModule / cloudflareSocketsModule: the `cloudflare:workers` and
//    `cloudflare:sockets` modules (`workers.env`, `workers.waitUntil`); the edge does not use them.
//  - doAnImport(name): dynamic import of a JS module; unused by the edge.
const patched = new WeakSet();

function patchWaitUntil(ctx) {
  if (!ctx || typeof ctx.waitUntil !== "function" || patched.has(ctx)) return;
  const original = ctx.waitUntil.bind(ctx);
  ctx.waitUntil = (promise) => {
    let awaitable = promise;
    if (awaitable && typeof awaitable === "object" && "copy" in awaitable) awaitable = awaitable.copy();
    original((async () => {
      try {
        await awaitable;
      } finally {
        if (awaitable && typeof awaitable === "object" && "destroy" in awaitable) awaitable.destroy();
      }
    })());
  };
  patched.add(ctx);
}

export const entrypointHelper = {
  patchWaitUntil,
  cloudflareWorkersModule: {
    env: {},
    waitUntil: () => {
      throw new Error("cloudflare:workers waitUntil is not emulated (the edge uses ctx.waitUntil)");
    },
  },
  cloudflareSocketsModule: {},
  doAnImport: async (name) => {
    throw new Error(`import of ${name} is not emulated by the test host`);
  },
  patch_env_helper: function* () {
    yield;
  },
};

// `_cloudflare_compat_flags`: the Worker's compatibility flags as booleans (workerd: COMPATIBILITY_FLAGS).
// The SDK reads two; both default to off, as for wrangler.toml's flags (only `python_workers`).
export const compatFlags = {
  python_workers: true,
  python_workflows_implicit_dependencies: false,
  python_request_headers_preserve_commas: false,
};
