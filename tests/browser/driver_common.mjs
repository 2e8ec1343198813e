// What every web-client driver shares: its JSON-lines output, a watchdog, stdin lines from the scenario,
// and Chromium's flags (headless, no sandbox for containers, nothing fetched from the network, the
// microphone granted and faked by playing `wav`; --allow-loopback-in-peer-connection: WebRTC gathers on
// 127.0.0.1, which it skips by default).
import readline from "node:readline";
import { chromium } from "playwright-core";

export const emit = (doc) => process.stdout.write(`${JSON.stringify(doc)}\n`);

/** Exit 2 with an error line after `overallMs`; returns the timer (clear it on a clean exit). */
export const watchdog = (overallMs) =>
  setTimeout(() => { emit({ event: "error", message: `driver gave up after ${overallMs} ms` }); process.exit(2); }, overallMs);

let stdinLines = null; // made on first use: a driver that reads no stdin does not hold it open
/** The next line the scenario writes on stdin. */
export const nextLine = () => {
  stdinLines ??= readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => stdinLines.once("line", resolve));
};

export const chromiumArgs = (wav) => [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-default-apps",
  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
  `--use-file-for-fake-audio-capture=${wav}`,
  "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/** Debian's Chromium, headless, with its own profile; `viewport` as playwright takes it (default: its own). */
export const launch = (config, args, viewport) =>
  chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium,
    headless: true,
    args,
    ...(viewport ? { viewport } : {}),
    timeout: 30_000,
  });

/** Say "launched", then the context's page, its console errors and warnings and its uncaught errors
 * passed on as lines. */
export async function firstPage(context) {
  emit({ event: "launched", version: context.browser()?.version() ?? null });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warning") {
      emit({ event: "console", type: message.type(), text: message.text().slice(0, 500) });
    }
  });
  page.on("pageerror", (error) => emit({ event: "pageerror", text: String(error).slice(0, 500) }));
  return page;
}
