// Drives a page in Debian's headless Chromium that calls the Realtime emulator's API straight from the
// browser, cross-origin, as Cloudflare's published examples call the real service.
//
// Usage: node emulator_driver.mjs CONFIG.json
//   CONFIG: {pageUrl, apiBase, appId, appSecret, chromium, userDataDir, timeoutS}
//
// The page (served from another loopback port than the API) runs, in order:
//   cors  - POST sessions/new with Authorization and Content-Type: application/json (a preflighted
//           request): the status, or the fetch error a CORS failure gives.
//   close - session A pushes two tracks (offer + tracks/new), session B pulls both (SFU offer +
//           renegotiate); A closes its first track the standard way, as Cloudflare's own client library
//           does: transceiver.stop(), a new offer, PUT tracks/close with force: false; the answer is set
//           and A must end in signalingState "stable"; B's inbound stream of the second track and A's
//           outbound stream of it keep growing afterwards.
//   again - A pushes a third track with a new offer (Chromium may recycle the stopped m-line).
//   update - tracks/update on B points the transceiver playing "two" at "three" (relay failover's SFU
//           step); B's receiver stats before and 2 s after, its descriptions and connection states.
// Every line on stdout is one JSON object; the last is {"event": "result", ...} or {"event": "error"}.
import fs from "node:fs";
import { emit, firstPage, launch, watchdog as startWatchdog } from "./driver_common.mjs";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const overallMs = (config.timeoutS + 30) * 1000;
const watchdog = startWatchdog(overallMs);

const ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-default-apps",
  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
  "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--autoplay-policy=no-user-gesture-required",
];

// Runs inside the page. Each step records what it saw; a failed step records its error and later
// steps that depend on it are skipped, so the report says how far the page got.
async function pageScenario({ apiBase, appId, appSecret, timeoutS }) {
  const out = { steps: {} };
  const api = `${apiBase}/apps/${appId}`;
  const headers = { authorization: `Bearer ${appSecret}`, "content-type": "application/json" };
  const call = async (method, path, body) => {
    const response = await fetch(`${api}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    let doc = null;
    try { doc = JSON.parse(text); } catch { doc = { raw: text.slice(0, 300) }; }
    if (!response.ok) throw new Error(`${method} ${path}: HTTP ${response.status} ${text.slice(0, 300)}`);
    return doc;
  };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const until = async (what, predicate, ms) => {
    const deadline = Date.now() + ms;
    for (let i = 0; i < 10_000 && Date.now() < deadline; i += 1) {
      if (await predicate()) return;
      await sleep(50);
    }
    throw new Error(`timed out after ${ms} ms waiting for ${what}`);
  };
  const connected = (pc, name) => until(`${name} connected`, () => pc.connectionState === "connected", timeoutS * 1000);
  const rtp = async (pc, type, mid) => {
    const mids = new Map(pc.getTransceivers().map((t) => [t.receiver.track.id, t.mid]));
    const senders = new Map(pc.getTransceivers().map((t) => [t.sender.track?.id, t.mid]));
    const report = await pc.getStats();
    let count = 0;
    report.forEach((stat) => {
      if (stat.type !== type || stat.kind !== "audio") return;
      const track = stat.trackIdentifier ?? report.get(stat.mediaSourceId)?.trackIdentifier;
      const statMid = stat.mid ?? (type === "inbound-rtp" ? mids.get(track) : senders.get(track));
      if (statMid === mid) count += type === "inbound-rtp" ? stat.packetsReceived : stat.packetsSent;
    });
    return count;
  };
  // What the page's transports do over the next second and a half (kept in the report for diagnosis).
  const trace = async (pc) => {
    const seen = [];
    for (let i = 0; i < 3; i += 1) {
      const transports = [];
      (await pc.getStats()).forEach((stat) => {
        if (stat.type === "transport") transports.push({ id: stat.id, dtls: stat.dtlsState, ice: stat.iceState, sent: stat.packetsSent });
      });
      seen.push({ connection: pc.connectionState, ice: pc.iceConnectionState, transports });
      await sleep(500);
    }
    return seen;
  };
  const grows = async (pc, type, mid, what) => {
    const before = await rtp(pc, type, mid);
    await until(`${what} to grow past ${before} packets`, async () => (await rtp(pc, type, mid)) > before + 10, 5_000);
    return [before, await rtp(pc, type, mid)];
  };

  try {
    const made = await call("POST", "/sessions/new", {});
    out.steps.cors = { ok: true, sessionId: typeof made.sessionId === "string" };
  } catch (error) {
    out.steps.cors = { ok: false, error: String(error.message ?? error) };
    return out;
  }

  const pcA = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  const pcB = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  try {
    const close = {};
    out.steps.close = close;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mic = stream.getAudioTracks()[0];
    const one = pcA.addTransceiver(mic, { direction: "sendonly" });
    const two = pcA.addTransceiver(mic.clone(), { direction: "sendonly" });
    const sessionA = (await call("POST", "/sessions/new", {})).sessionId;
    await pcA.setLocalDescription(await pcA.createOffer());
    const pushed = await call("POST", `/sessions/${sessionA}/tracks/new`, {
      sessionDescription: { type: "offer", sdp: pcA.localDescription.sdp },
      tracks: [
        { location: "local", mid: one.mid, trackName: "one" },
        { location: "local", mid: two.mid, trackName: "two" },
      ],
    });
    await pcA.setRemoteDescription(pushed.sessionDescription);
    await connected(pcA, "A");
    close.mids = [one.mid, two.mid];

    const sessionB = (await call("POST", "/sessions/new", {})).sessionId;
    const pulled = await call("POST", `/sessions/${sessionB}/tracks/new`, {
      tracks: [
        { location: "remote", sessionId: sessionA, trackName: "one" },
        { location: "remote", sessionId: sessionA, trackName: "two" },
      ],
    });
    await pcB.setRemoteDescription(pulled.sessionDescription);
    await pcB.setLocalDescription(await pcB.createAnswer());
    await call("PUT", `/sessions/${sessionB}/renegotiate`, {
      sessionDescription: { type: "answer", sdp: pcB.localDescription.sdp },
    });
    await connected(pcB, "B");
    const pulledMids = Object.fromEntries(pulled.tracks.map((t) => [t.trackName, t.mid]));
    close.pulledMids = pulledMids;
    await until("B to receive both tracks", async () =>
      (await rtp(pcB, "inbound-rtp", pulledMids.one)) > 0 && (await rtp(pcB, "inbound-rtp", pulledMids.two)) > 0, 10_000);

    one.stop();
    const offer = await pcA.createOffer();
    await pcA.setLocalDescription(offer);
    close.offer = offer.sdp;
    const closed = await call("PUT", `/sessions/${sessionA}/tracks/close`, {
      tracks: [{ mid: one.mid }],
      sessionDescription: { type: "offer", sdp: offer.sdp },
      force: false,
    });
    close.response = { tracks: closed.tracks, requiresImmediateRenegotiation: closed.requiresImmediateRenegotiation };
    close.answer = closed.sessionDescription?.sdp ?? null;
    try {
      await pcA.setRemoteDescription(closed.sessionDescription);
    } catch (error) {
      close.setRemoteError = String(error.message ?? error);
    }
    close.signalingState = pcA.signalingState;
    close.trace = await trace(pcA);
    close.stoppedCurrentDirection = one.currentDirection;
    close.connectionState = pcA.connectionState;
    close.outboundTwo = await grows(pcA, "outbound-rtp", two.mid, "A's outbound stream of track two");
    close.inboundTwo = await grows(pcB, "inbound-rtp", pulledMids.two, "B's inbound stream of track two");
    const session = await call("GET", `/sessions/${sessionA}`);
    close.sessionTracks = session.tracks.map((t) => ({ mid: t.mid, trackName: t.trackName, status: t.status }));

    const again = {};
    out.steps.again = again;
    const three = pcA.addTransceiver(mic.clone(), { direction: "sendonly" });
    const offer3 = await pcA.createOffer();
    await pcA.setLocalDescription(offer3);
    again.offer = offer3.sdp;
    const pushed3 = await call("POST", `/sessions/${sessionA}/tracks/new`, {
      sessionDescription: { type: "offer", sdp: offer3.sdp },
      tracks: [{ location: "local", mid: three.mid, trackName: "three" }],
    });
    again.answer = pushed3.sessionDescription.sdp;
    await pcA.setRemoteDescription(pushed3.sessionDescription);
    again.signalingState = pcA.signalingState;
    again.trace = await trace(pcA);
    again.mid = three.mid;
    again.outboundThree = await grows(pcA, "outbound-rtp", three.mid, "A's outbound stream of track three");
    again.outboundTwo = await grows(pcA, "outbound-rtp", two.mid, "A's outbound stream of track two");

    // update: tracks/update points B's transceiver (playing "two") at "three", as relay failover moves
    // a caller; B sends no offer and must keep playing on the same receiver.
    const update = {};
    out.steps.update = update;
    const midB = pulledMids.two;
    const changes = [];
    pcB.addEventListener("connectionstatechange", () => changes.push(pcB.connectionState));
    const descriptions = () => `${pcB.localDescription.sdp}\n${pcB.remoteDescription.sdp}`;
    const described = descriptions();
    const inbound = async () => {
      const receiver = pcB.getTransceivers().find((t) => t.mid === midB)?.receiver.track.id;
      let found = null;
      (await pcB.getStats()).forEach((stat) => {
        if (stat.type === "inbound-rtp" && stat.kind === "audio" && (stat.mid === midB || stat.trackIdentifier === receiver)) {
          found = {
            ssrc: stat.ssrc, packetsReceived: stat.packetsReceived, packetsLost: stat.packetsLost,
            totalSamplesReceived: stat.totalSamplesReceived, concealedSamples: stat.concealedSamples,
            jitterBufferDelay: stat.jitterBufferDelay, jitterBufferEmittedCount: stat.jitterBufferEmittedCount,
          };
        }
      });
      return found;
    };
    // Play B's track, so Chromium decodes it (samples and concealment count only for a played track).
    const audio = document.createElement("audio");
    audio.srcObject = new MediaStream([pcB.getTransceivers().find((t) => t.mid === midB).receiver.track]);
    document.body.append(audio);
    update.play = await audio.play().then(() => "playing", (error) => String(error.message ?? error));
    await sleep(1000);
    update.before = await inbound();
    const updated = await call("PUT", `/sessions/${sessionB}/tracks/update`, {
      tracks: [{ location: "remote", sessionId: sessionA, trackName: "three", mid: midB }],
    });
    update.response = updated;
    await sleep(2000);
    update.after = await inbound();
    update.sameDescriptions = descriptions() === described;
    update.signalingState = pcB.signalingState;
    update.connectionState = pcB.connectionState;
    update.changes = changes;
    update.sessionTracks = (await call("GET", `/sessions/${sessionB}`)).tracks.map((t) => ({
      mid: t.mid, sessionId: t.sessionId === sessionA ? "A" : t.sessionId, trackName: t.trackName, status: t.status,
    }));
  } catch (error) {
    out.error = String(error.message ?? error);
  } finally {
    pcA.close();
    pcB.close();
  }
  return out;
}

async function main() {
  const context = await launch(config, ARGS);
  try {
    const page = await firstPage(context);
    await page.goto(config.pageUrl, { timeout: 10_000 });
    const origin = await page.evaluate(() => window.location.origin);
    const result = await page.evaluate(pageScenario, {
      apiBase: config.apiBase, appId: config.appId, appSecret: config.appSecret, timeoutS: config.timeoutS,
    });
    emit({ event: "result", origin, ...result });
  } finally {
    await context.close();
  }
}

main().then(
  () => { clearTimeout(watchdog); process.exit(0); },
  (error) => { emit({ event: "error", message: String(error?.message ?? error).slice(0, 4000) }); process.exit(1); },
);
