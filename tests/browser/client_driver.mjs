// Drives the web client (edge/static) in Debian's headless Chromium through playwright-core.
//
// Usage: node client_driver.mjs CONFIG.json
//   CONFIG: {url, wav, chromium, userDataDir, screenshot, callTimeoutS, want: {turns, bargeIns}, hangupWaitS}
//
// The microphone is Chromium's fake capture device playing `wav` in a loop. The driver clicks Call,
// waits (bounded) until the page measured what `want` asks for and shows RTT and jitter, checks that
// received bytes keep growing, takes the screenshot, prints {"event": "in_call", ...}, then waits for a
// "hangup" line on stdin, clicks Hang up and prints {"event": "closed", ...}. Every line on stdout is
// one JSON object; the numbers come from window.splitrelay (the page's own measurements), not pixels.
import fs from "node:fs";
import { chromiumArgs, emit, firstPage, launch, nextLine, watchdog as startWatchdog } from "./driver_common.mjs";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const overallMs = (config.callTimeoutS + config.hangupWaitS + 30) * 1000;
const watchdog = startWatchdog(overallMs);

const ARGS = chromiumArgs(config.wav);

const snapshot = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.splitrelay)));

async function main() {
  const context = await launch(config, ARGS, { width: 900, height: 1100 });
  try {
    const page = await firstPage(context);
    await page.goto(config.url, { timeout: 10_000 });
    await page.getByRole("button", { name: "Call" }).click({ timeout: 5_000 });

    const want = config.want;
    const reached = await page.waitForFunction(
      ({ turns, bargeIns }) => {
        const v = window.splitrelay;
        if (v.state === "failed") return { failed: v.error };
        const ready = v.state === "connected" && v.turns.length >= turns && v.bargeIns.length >= bargeIns
          && v.stats && v.stats.rttMs !== null && v.stats.jitterMs !== null && v.stats.packetsReceived > 0;
        return ready ? { failed: null } : false;
      },
      want,
      { timeout: config.callTimeoutS * 1000, polling: 100 },
    ).then((handle) => handle.jsonValue(), async (error) => {
      const view = await snapshot(page);
      await page.screenshot({ path: config.screenshot, fullPage: true });
      throw new Error(`page did not reach ${JSON.stringify(want)}: ${error.message.split("\n")[0]}; view: ${JSON.stringify(view)}`);
    });
    if (reached.failed) throw new Error(`the page failed: ${reached.failed}`);

    const first = await snapshot(page);
    // Received bytes grow between two stats snapshots (the agent's audio keeps arriving); bounded.
    await page.waitForFunction(
      (bytes) => window.splitrelay.stats && window.splitrelay.stats.bytesReceived > bytes,
      first.stats.bytesReceived,
      { timeout: 15_000, polling: 100 },
    );
    const later = await snapshot(page);
    await page.screenshot({ path: config.screenshot, fullPage: true });
    emit({ event: "in_call", first, later });

    const line = await Promise.race([
      nextLine(),
      new Promise((resolve) => setTimeout(() => resolve(null), config.hangupWaitS * 1000)),
    ]);
    if (line === null) throw new Error(`no "hangup" on stdin within ${config.hangupWaitS} s`);
    await page.getByRole("button", { name: "Hang up" }).click({ timeout: 5_000 });
    await page.waitForFunction(() => window.splitrelay.state === "closed", null, { timeout: 10_000 });
    emit({ event: "closed", view: await snapshot(page) });
  } finally {
    await context.close();
  }
}

main().then(
  () => { emit({ event: "exit" }); process.exit(0); },
  (error) => { emit({ event: "error", message: String(error?.message ?? error).slice(0, 4000) }); process.exit(1); },
);
