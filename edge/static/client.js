// One sendrecv audio transceiver, one offer/answer round trip with the edge (docs/edge.md).
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
let pc = null;
let callId = null;
let polling = false;

function show(id, text) { $(id).textContent = text; }
function fail(message) { show("error", message); show("state", "failed"); }

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const doc = await response.json();
  if (!response.ok) throw new Error(`${response.status} ${doc.error?.code}: ${doc.error?.message}`);
  return doc;
}

function gathered(peer, limitMs) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, limitMs);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function poll() {
  polling = true;
  for (let i = 0; i < 60 && polling && callId; i++) {  // bounded: 60 s
    const doc = await api("GET", `/v1/calls/${callId}`);
    show("state", doc.state);
    show("relay", `${doc.relay.id} (${doc.relay.reason})`);
    if (doc.answer_to_connected_ms !== undefined) show("timing", `${doc.answer_to_connected_ms} ms`);
    if (doc.renegotiation) {
      await pc.setRemoteDescription(doc.renegotiation.offer);
      await pc.setLocalDescription(await pc.createAnswer());
      await api("PATCH", `/v1/calls/${callId}`, { answer: pc.localDescription });
    }
    if (doc.state !== "created") return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function call() {
  show("error", "");
  $("call").disabled = true;
  try {
    const { ice_servers } = await api("GET", "/v1/ice-servers");
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc = new RTCPeerConnection({ iceServers: ice_servers });
    pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendrecv", streams: [mic] });
    pc.ontrack = (event) => { $("remote").srcObject = new MediaStream([event.track]); };
    pc.onconnectionstatechange = () => show("state", `${pc.connectionState}`);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 3000);
    const created = await api("POST", "/v1/calls", { offer: pc.localDescription });
    callId = created.call_id;
    show("call-id", callId);
    await pc.setRemoteDescription(created.answer);
    $("hangup").disabled = false;
    await poll();
  } catch (error) {
    fail(String(error.message || error));
    $("call").disabled = false;
  }
}

async function hangup() {
  polling = false;
  $("hangup").disabled = true;
  try { if (callId) await api("DELETE", `/v1/calls/${callId}`); } catch (error) { fail(String(error.message)); }
  if (pc) pc.close();
  pc = null; callId = null;
  show("state", "closed");
  $("call").disabled = false;
}

if (!token) fail("no token: open this page with #token=<token from `splitrelay token issue`>");
else $("call").disabled = false;
$("call").addEventListener("click", call);
$("hangup").addEventListener("click", hangup);
