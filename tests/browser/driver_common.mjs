// What every web-client driver shares: its JSON-lines output, a watchdog, stdin lines from the scenario,
// and Chromium's flags (headless, no sandbox for containers, nothing fetched from the network, the
// microphone granted and faked by playing `wav`; --allow-loopback-in-peer-connection: WebRTC gathers on
// 127.0.0.1, which it skips by default).
import readline from "node:readline";

export const emit = (doc) => process.stdout.write(`${JSON.stringify(doc)}\n`);

/** Exit 2 with an error line after `overallMs`; returns the timer (clear it on a clean exit). */
export const watchdog = (overallMs) =>
  setTimeout(() => { emit({ event: "error", message: `driver gave up after ${overallMs} ms` }); process.exit(2); }, overallMs);

const stdinLines = readline.createInterface({ input: process.stdin });
/** The next line the scenario writes on stdin. */
export const nextLine = () => new Promise((resolve) => stdinLines.once("line", resolve));

export const chromiumArgs = (wav) => [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-default-apps",
  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
  `--use-file-for-fake-audio-capture=${wav}`,
  "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
];
