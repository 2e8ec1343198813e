// Drives the web client (edge/static) in Debian's headless Chromium through the end of a call that the
// relay ended because its agent died (issue 15): the page must close the call and say why.
//
// Usage: node agent_lost_driver.mjs CONFIG.json
//   CONFIG: {url, wav, chromium, userDataDir, screenshot, callTimeoutS, endTimeoutS}
//
// Launched as tests/browser/client_driver.mjs launches Chromium. Every RTCPeerConnection the page makes
// is kept (an init script) so the driver can tell that the page closed it. The driver clicks Call, waits
// (bounded) until the page is connected and receives audio, prints {"event": "in_call", ...}, then waits
// for one line on stdin (the scenario has killed the agent) and for the page to show the end: it prints
// {"event": "ended", shownAtMs, view, stateText, errorText, peers}, where shownAtMs is the wall-clock time
// (Date.now()) at which the page's state element turned "closed", taken by a MutationObserver.
import fs from "node:fs";
import { chromiumArgs, emit, firstPage, launch, nextLine, watchdog as startWatchdog } from "./driver_common.mjs";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const overallMs = (config.callTimeoutS + config.endTimeoutS + 60) * 1000;
const watchdog = startWatchdog(overallMs);

const ARGS = chromiumArgs(config.wav);

// Keeps every peer connection the page creates, unchanged otherwise.
const KEEP_PEERS = () => {
  const Native = window.RTCPeerConnection;
  window.__peers = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.__peers.push(this);
    }
  };
};

// Stamps the moment the page's visible state turns "closed" (what the caller sees), and what it said.
const WATCH_END = () => {
  const state = document.getElementById("state");
  window.__ended = null;
  new MutationObserver(() => {
    if (window.__ended === null && state.textContent === "closed") {
      window.__ended = { atMs: Date.now(), error: document.getElementById("error").textContent };
    }
  }).observe(state, { childList: true, characterData: true, subtree: true });
};

// The edge's record of the call as the page reads it (for a failure's message: the close reason).
async function edgeRecord(callId) {
  if (!callId) return null;
  const url = new URL(config.url);
  const token = new URLSearchParams(url.hash.slice(1)).get("token");
  const response = await fetch(new URL(`/v1/calls/${callId}`, url.origin), { headers: { authorization: `Bearer ${token}` } });
  return response.json();
}

const snapshot = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.splitrelay)));
const peers = (page) => page.evaluate(() => window.__peers.map((pc) => ({
  connectionState: pc.connectionState, signalingState: pc.signalingState, iceConnectionState: pc.iceConnectionState,
})));

async function main() {
  const context = await launch(config, ARGS, { width: 900, height: 1100 });
  try {
    await context.addInitScript(KEEP_PEERS);
    const page = await firstPage(context);
    await page.goto(config.url, { timeout: 10_000 });
    await page.evaluate(WATCH_END);
    await page.getByRole("button", { name: "Call" }).click({ timeout: 5_000 });

    const reached = await page.waitForFunction(
      () => {
        const v = window.splitrelay;
        if (v.state === "failed" || v.state === "closed") return { failed: `${v.state}: ${v.error}` };
        const ready = v.state === "connected" && v.stats && v.stats.packetsReceived > 0;
        return ready ? { failed: null } : false;
      },
      null,
      { timeout: config.callTimeoutS * 1000, polling: 100 },
    ).then((handle) => handle.jsonValue(), async (error) => {
      const view = await snapshot(page);
      await page.screenshot({ path: config.screenshot, fullPage: true });
      throw new Error(`the page did not connect: ${error.message.split("\n")[0]}; view: ${JSON.stringify(view)}`);
    });
    if (reached.failed) {
      const view = await snapshot(page);
      throw new Error(`the page failed: ${reached.failed}; edge record: ${JSON.stringify(await edgeRecord(view.callId))}`);
    }
    emit({ event: "in_call", view: await snapshot(page), peers: await peers(page) });

    const line = await Promise.race([
      nextLine(),
      new Promise((resolve) => setTimeout(() => resolve(null), config.callTimeoutS * 1000)),
    ]);
    if (line === null) throw new Error(`no line on stdin within ${config.callTimeoutS} s`);
    await page.waitForFunction(() => window.__ended !== null, null, { timeout: config.endTimeoutS * 1000, polling: 50 })
      .catch(async (error) => {
        await page.screenshot({ path: config.screenshot, fullPage: true });
        throw new Error(`the page did not show the end: ${error.message.split("\n")[0]}; view: ${JSON.stringify(await snapshot(page))}`);
      });
    const ended = await page.evaluate(() => window.__ended);
    await page.screenshot({ path: config.screenshot, fullPage: true });
    emit({
      event: "ended",
      shownAtMs: ended.atMs,
      errorAtShown: ended.error,
      view: await snapshot(page),
      stateText: await page.locator("#state").textContent(),
      errorText: await page.locator("#error").textContent(),
      callEnabled: await page.getByRole("button", { name: "Call" }).isEnabled(),
      peers: await peers(page),
    });
  } finally {
    await context.close();
  }
}

main().then(
  () => { clearTimeout(watchdog); emit({ event: "exit" }); process.exit(0); },
  (error) => { emit({ event: "error", message: String(error?.message ?? error).slice(0, 4000) }); process.exit(1); },
);
