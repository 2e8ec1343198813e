// The call's live numbers from RTCPeerConnection.getStats(), in milliseconds and counts.
// Where they come from (W3C webrtc-stats): RTT from the selected ICE candidate pair (STUN checks),
// else from RTCP (remote-inbound-rtp); jitter and loss from inbound-rtp (what reaches us from the
// relay); playout delay = jitterBufferDelay / jitterBufferEmittedCount (the jitter buffer's average).

const ms = (seconds) => (typeof seconds === "number" ? Math.round(seconds * 10000) / 10 : null);

function selectedPair(report) {
  for (const stat of report.values()) {
    if (stat.type === "transport" && stat.selectedCandidatePairId) return report.get(stat.selectedCandidatePairId);
  }
  for (const stat of report.values()) {
    if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") return stat;
  }
  return null;
}

function endpoint(candidate) {
  if (!candidate) return null;
  return { address: candidate.address ?? candidate.ip ?? null, port: candidate.port ?? null,
           protocol: candidate.protocol ?? null, type: candidate.candidateType ?? null };
}

function first(report, type) {
  for (const stat of report.values()) if (stat.type === type && stat.kind === "audio") return stat;
  return null;
}

/** One snapshot; `previous` (the last snapshot) gives bitrates over the interval. */
export async function readStats(pc, previous) {
  const report = await pc.getStats();
  const pair = selectedPair(report);
  const inbound = first(report, "inbound-rtp");
  const outbound = first(report, "outbound-rtp");
  const remoteInbound = first(report, "remote-inbound-rtp");
  const now = performance.now();
  const snapshot = {
    at: Math.round(now),
    rttMs: ms(pair?.currentRoundTripTime) ?? ms(remoteInbound?.roundTripTime),
    rtcpRttMs: ms(remoteInbound?.roundTripTime),
    jitterMs: ms(inbound?.jitter),
    packetsLost: inbound?.packetsLost ?? null,
    packetsReceived: inbound?.packetsReceived ?? 0,
    bytesReceived: inbound?.bytesReceived ?? 0,
    packetsSent: outbound?.packetsSent ?? 0,
    bytesSent: outbound?.bytesSent ?? 0,
    lostOut: remoteInbound?.packetsLost ?? null,
    jitterOutMs: ms(remoteInbound?.jitter),
    playoutDelayMs: inbound?.jitterBufferEmittedCount
      ? ms(inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) : null,
    concealedSamples: inbound?.concealedSamples ?? null,
    kbpsIn: null,
    kbpsOut: null,
    path: pair ? { local: endpoint(report.get(pair.localCandidateId)),
                   remote: endpoint(report.get(pair.remoteCandidateId)) } : null,
  };
  if (previous && now > previous.at) {
    const seconds = (now - previous.at) / 1000;
    snapshot.kbpsIn = Math.round(((snapshot.bytesReceived - previous.bytesReceived) * 8) / seconds / 100) / 10;
    snapshot.kbpsOut = Math.round(((snapshot.bytesSent - previous.bytesSent) * 8) / seconds / 100) / 10;
  }
  return snapshot;
}
