// The web client: one sendrecv audio transceiver, one offer/answer round trip with the edge
// (docs/edge.md, docs/web-client.md), live stats, voice-to-voice per turn, barge-ins, hang up.
// Everything measured is on window.splitrelay so tests (and people in the console) read numbers.
import { readStats } from "/stats.js";
import { FLOOR_DBFS, LevelMeter, TurnTracker } from "/turns.js";

const STATS_EVERY_MS = 500;
const LEVELS_EVERY_MS = 40;
const GATHER_LIMIT_MS = 3000; // the offer goes with whatever candidates are gathered by then
const SETUP_POLLS = 40; // × 500 ms: the edge gives the relay 20 s (CALL_SETUP_TIMEOUT_S) to attach
const BARGE_IN_SHOWN_MS = 2000;
// While connected the page reads the edge's record once a second: a call the relay, the agent or a
// limit ended (or a relay that died) shows as closed, with why, within about a second.
const RECORD_EVERY_MS = 1000;

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
// Kept in memory only: out of the address bar and the history (a reload needs the link again).
if (token) history.replaceState(null, "", location.pathname + location.search);

/** What the page knows and measured; reset at each call. The DOM is rendered from it, never read back. */
const view = {
  state: "idle", // idle → starting → connecting → connected → closing → closed (or failed)
  peer: null, // RTCPeerConnection.connectionState
  record: null, // the edge's call record state (created, connected, closed)
  callId: null,
  relay: null,
  answerToConnectedMs: null,
  stats: null,
  levels: { micDbfs: null, agentDbfs: null },
  turns: [],
  bargeIns: [],
  stages: [], // the agent's stage marks of its latest turn, from the edge's record
  closeReason: null, // why the edge closed the call (relay_lost, relay_ended: ...), when it did
  error: null,
};
window.splitrelay = view;

let call = null; // the live call's resources: {pc, mic, context, meters, tracker, timers}

function text(id, value) { $(id).textContent = value; }

function setState(state) {
  view.state = state;
  text("state", state);
  $("call").disabled = !token || !["idle", "closed", "failed"].includes(state);
  $("hangup").disabled = !["starting", "connecting", "connected"].includes(state);
}

function fail(message) {
  view.error = message;
  text("error", message);
  teardown();
  setState("failed");
  if (view.callId && view.record !== "closed") {
    api("DELETE", `/v1/calls/${view.callId}`).catch((error) => console.warn("cleanup failed", error));
  }
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  let doc = null;
  try { doc = await response.json(); } catch { /* a non-JSON error page: reported below */ }
  if (!response.ok) {
    const error = doc?.error;
    throw new Error(error ? `${method} ${path}: ${response.status} ${error.code}: ${error.message}`
                          : `${method} ${path}: HTTP ${response.status}`);
  }
  return doc;
}

function gathered(pc, limitMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, limitMs);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

const sleep = (delayMs) => new Promise((resolve) => setTimeout(resolve, delayMs));

function showRecord(doc) {
  view.record = doc.state;
  if (doc.relay) {
    view.relay = { id: doc.relay.id, reason: doc.relay.reason };
    text("relay", `${doc.relay.id} (${doc.relay.reason})`);
  }
  if (doc.answer_to_connected_ms !== undefined) {
    view.answerToConnectedMs = doc.answer_to_connected_ms;
    text("timing", `${doc.answer_to_connected_ms} ms`);
  }
}

/** Follow the edge's record until the relay is attached (bounded); answer an SFU renegotiation. */
async function followSetup(current) {
  for (let i = 0; i < SETUP_POLLS && call === current; i++) {
    const doc = await api("GET", `/v1/calls/${view.callId}`);
    if (call !== current) return;
    showRecord(doc);
    if (doc.renegotiation) {
      await current.pc.setRemoteDescription(doc.renegotiation.offer);
      await current.pc.setLocalDescription(await current.pc.createAnswer());
      await api("PATCH", `/v1/calls/${view.callId}`, { answer: current.pc.localDescription });
    }
    if (doc.state === "closed") throw new Error("the edge closed the call during setup");
    if (doc.state !== "created") { updateState(); followRecord(current); return; }
    await sleep(500);
  }
  if (call === current) throw new Error(`no relay attached within ${SETUP_POLLS / 2} s`);
}

/** While the call lasts, read the edge's record; when the edge closed it, end here too and say why. */
function followRecord(current) {
  let busy = false;
  current.timers.push(setInterval(async () => {
    if (call !== current || busy) return;
    busy = true;
    try {
      const doc = await api("GET", `/v1/calls/${view.callId}`);
      if (call !== current) return;
      showStages(doc.stages ?? []);
      if (doc.state !== "closed") return;
      view.record = "closed";
      view.closeReason = doc.close_reason ?? "closed";
      text("error", `the call ended: ${view.closeReason}`);
      teardown();
      setState("closed");
    } catch (error) {
      console.warn("reading the call record failed", error);
    } finally {
      busy = false;
    }
  }, RECORD_EVERY_MS));
}

/** The agent's stage marks of its latest turn (stt_final 180 ms · llm_first_token 420 ms ...). */
function showStages(stages) {
  if (!stages.length) return;
  const turn = Math.max(...stages.map((stage) => stage.turn));
  view.stages = stages.filter((stage) => stage.turn === turn);
  text("stages", view.stages.map((stage) => `${stage.name} ${Math.round(stage.ms)} ms`).join(" · "));
}

function updateState() {
  if (!call) return;
  if (view.peer === "connected" && view.record === "connected") setState("connected");
  else if (view.peer === "failed") fail("the media connection failed (ICE or DTLS)");
}

function showStats(s) {
  const unit = (value, suffix) => (value === null || value === undefined ? "-" : `${value} ${suffix}`);
  text("stat-rtt", unit(s.rttMs, "ms"));
  text("stat-jitter", unit(s.jitterMs, "ms"));
  text("stat-lost", s.packetsLost === null ? "-" : String(s.packetsLost));
  text("stat-playout", unit(s.playoutDelayMs, "ms"));
  text("stat-packets", `${s.packetsReceived} / ${s.packetsSent}`);
  text("stat-bitrate", s.kbpsIn === null ? "-" : `${s.kbpsIn} / ${s.kbpsOut} kbit/s`);
  const end = (e) => (e ? `${e.address}:${e.port} ${e.protocol} ${e.type}` : "?");
  text("stat-path", s.path ? `${end(s.path.local)} → ${end(s.path.remote)}` : "-");
}

function showTurn(turn) {
  const body = $("turns");
  body.querySelector(".empty")?.remove();
  const row = document.createElement("tr");
  for (const value of [String(turn.n), `${turn.voiceToVoiceMs} ms`, `${(turn.callerSpokeMs / 1000).toFixed(1)} s`]) {
    const cell = document.createElement("td");
    cell.textContent = value;
    row.append(cell);
  }
  body.append(row);
}

function showBargeIn(bargeIn) {
  const box = $("barge-in");
  text("barge-in-count", String(view.bargeIns.length));
  text("barge-in-last", `(last: after ${(bargeIn.agentPlayedMs / 1000).toFixed(1)} s of agent audio)`);
  box.dataset.active = "true";
  clearTimeout(showBargeIn.timer);
  showBargeIn.timer = setTimeout(() => { box.dataset.active = "false"; }, BARGE_IN_SHOWN_MS);
}

function resetView() {
  Object.assign(view, {
    peer: null, record: null, callId: null, relay: null, answerToConnectedMs: null, stats: null,
    levels: { micDbfs: null, agentDbfs: null }, turns: [], bargeIns: [], stages: [], closeReason: null,
    error: null,
  });
  text("error", "");
  for (const id of ["call-id", "relay", "timing", "stat-rtt", "stat-jitter", "stat-lost", "stat-playout",
    "stat-packets", "stat-bitrate", "stat-path", "barge-in-last"]) text(id, id === "barge-in-last" ? "" : "-");
  text("barge-in-count", "0");
  text("stages", "none reported");
  $("turns").innerHTML = '<tr class="empty"><td colspan="3">no turn yet</td></tr>';
}

function startMeasuring(current) {
  current.timers.push(setInterval(async () => {
    if (call !== current) return;
    try {
      const snapshot = await readStats(current.pc, view.stats);
      if (call !== current) return;
      view.stats = snapshot;
      showStats(snapshot);
    } catch (error) {
      console.warn("getStats failed", error);
    }
  }, STATS_EVERY_MS));
  current.timers.push(setInterval(() => {
    if (call !== current) return;
    const micDbfs = current.meters.mic.dbfs();
    const agentDbfs = current.meters.agent ? current.meters.agent.dbfs() : FLOOR_DBFS;
    view.levels = { micDbfs: Math.round(micDbfs), agentDbfs: Math.round(agentDbfs) };
    $("mic-level").value = micDbfs;
    $("agent-level").value = agentDbfs;
    const { turn, bargeIn } = current.tracker.update(performance.now(), micDbfs, agentDbfs);
    if (turn) showTurn(turn);
    if (bargeIn) showBargeIn(bargeIn);
  }, LEVELS_EVERY_MS));
}

async function startCall() {
  resetView();
  setState("starting");
  const current = { pc: null, mic: null, context: null, meters: {}, tracker: new TurnTracker(), timers: [] };
  call = current;
  view.turns = current.tracker.turns;
  view.bargeIns = current.tracker.bargeIns;
  try {
    current.context = new AudioContext(); // created on the click: allowed to start
    const { ice_servers: iceServers } = await api("GET", "/v1/ice-servers");
    current.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    if (call !== current) return;
    await current.context.resume();
    current.meters.mic = new LevelMeter(current.context, current.mic);
    const pc = new RTCPeerConnection({ iceServers });
    current.pc = pc;
    pc.addTransceiver(current.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [current.mic] });
    pc.ontrack = (event) => {
      const stream = new MediaStream([event.track]);
      current.meters.agent?.disconnect();
      $("remote").srcObject = stream; // Chrome feeds a remote track to Web Audio only while it plays
      current.meters.agent = new LevelMeter(current.context, stream);
    };
    pc.onconnectionstatechange = () => {
      if (call !== current) return;
      view.peer = pc.connectionState;
      updateState();
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, GATHER_LIMIT_MS);
    if (call !== current) return;
    const created = await api("POST", "/v1/calls", { offer: pc.localDescription });
    if (call !== current) return;
    view.callId = created.call_id;
    text("call-id", created.call_id);
    showRecord(created);
    await pc.setRemoteDescription(created.answer);
    setState("connecting");
    startMeasuring(current);
    await followSetup(current);
  } catch (error) {
    if (call === current) fail(String(error?.message ?? error));
  }
}

/** Stop everything local: timers, peer, microphone, audio graph. Idempotent. */
function teardown() {
  const current = call;
  call = null;
  if (!current) return;
  for (const timer of current.timers) clearInterval(timer);
  current.meters.mic?.disconnect();
  current.meters.agent?.disconnect();
  current.pc?.close();
  for (const track of current.mic?.getTracks() ?? []) track.stop();
  current.context?.close();
  $("remote").srcObject = null;
}

async function hangUp() {
  const callId = view.callId;
  teardown();
  setState("closing");
  try {
    if (callId) await api("DELETE", `/v1/calls/${callId}`);
    view.record = "closed";
  } catch (error) {
    view.error = `hang-up: ${error?.message ?? error}`;
    text("error", view.error);
  }
  setState("closed");
}

$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", hangUp);
setState("idle");
if (!token) {
  view.error = "no token: open this page with #token=<token from `splitrelay token issue`>";
  text("error", view.error);
}
