// Turn taking as the caller hears it: voice-to-voice per turn and barge-ins, from two audio levels.
// Measured in the page (not at the relay) because that is what a person experiences: the end of their
// own speech at the microphone, and the agent's reply at playout, after the network and jitter buffer.

export const SPEECH_DBFS = -45; // speech above, room noise (after the browser's noise suppression) below
const MIC_HANG_MS = 300; // a pause shorter than this does not end the caller's speech
const AGENT_HANG_MS = 400; // nor the agent's (gaps between words)
export const FLOOR_DBFS = -90; // shown for digital silence

/** RMS level in dBFS of one analyser window; the floor for digital silence. */
export class LevelMeter {
  constructor(context, stream) {
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 2048; // 43 ms at 48 kHz: one window covers a whole tick
    this.buffer = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  dbfs() {
    this.analyser.getFloatTimeDomainData(this.buffer);
    let sum = 0;
    for (const sample of this.buffer) sum += sample * sample;
    const rms = Math.sqrt(sum / this.buffer.length);
    return rms > 0 ? Math.max(FLOOR_DBFS, 20 * Math.log10(rms)) : FLOOR_DBFS;
  }

  disconnect() { this.source.disconnect(); }
}

/**
 * Feed it (time, mic level, agent level) every tick. A turn is the agent's audio starting after the
 * caller spoke and went quiet: voice-to-voice = reply start − last caller speech. A barge-in is the
 * caller speaking while the agent's audio is still playing (once per reply).
 */
export class TurnTracker {
  constructor(thresholdDbfs = SPEECH_DBFS) {
    this.threshold = thresholdDbfs;
    this.lastMicAt = -Infinity;
    this.micStartAt = 0;
    this.lastAgentAt = -Infinity;
    this.reply = null; // the agent reply playing now: {startAt, bargeIn}
    this.callerSpokeSinceReply = false;
    this.turns = [];
    this.bargeIns = [];
  }

  micSpeaking(now) { return now - this.lastMicAt < MIC_HANG_MS; }
  agentSpeaking() { return this.reply !== null; }

  /** One tick; returns {turn, bargeIn}: what this tick completed, or null. */
  update(now, micDbfs, agentDbfs) {
    let turn = null;
    let bargeIn = null;
    if (this.reply && now - this.lastAgentAt >= AGENT_HANG_MS) {
      const cut = this.reply.bargeIn;
      if (cut) cut.agentStoppedAfterMs = Math.max(0, Math.round(this.lastAgentAt - cut.at));
      this.reply = null;
    }
    const mic = micDbfs >= this.threshold;
    if (mic) {
      if (!this.micSpeaking(now)) this.micStartAt = now;
      if (this.reply && !this.reply.bargeIn) {
        bargeIn = { at: Math.round(now), agentPlayedMs: Math.round(now - this.reply.startAt), agentStoppedAfterMs: null };
        this.reply.bargeIn = bargeIn;
        this.bargeIns.push(bargeIn);
      }
      this.lastMicAt = now;
      this.callerSpokeSinceReply = true;
    }
    if (agentDbfs >= this.threshold) {
      if (!this.reply) {
        this.reply = { startAt: now, bargeIn: null };
        if (this.callerSpokeSinceReply && !mic) {
          turn = {
            n: this.turns.length + 1,
            endOfSpeechAt: Math.round(this.lastMicAt),
            replyStartAt: Math.round(now),
            voiceToVoiceMs: Math.round(now - this.lastMicAt),
            callerSpokeMs: Math.round(this.lastMicAt - this.micStartAt),
          };
          this.turns.push(turn);
          this.callerSpokeSinceReply = false;
        }
      }
      this.lastAgentAt = now;
    }
    return { turn, bargeIn };
  }
}
