// The web client's turn logic (edge/static/turns.js) on scripted levels: exact numbers, no browser.
// Run: node --experimental-detect-module --test tests/browser/turns.test.mjs (tests/unit/test_web_client.py)
import assert from "node:assert/strict";
import { test } from "node:test";
import { TurnTracker } from "../../edge/static/turns.js";

const SPEECH = -20;
const QUIET = -70;
const TICK = 40;

/** Feed a script of [durationMs, micDbfs, agentDbfs] segments, one tick every 40 ms; return events. */
function play(tracker, script, start = 0) {
  const events = [];
  let now = start;
  for (const [duration, mic, agent] of script) {
    for (let t = 0; t < duration; t += TICK) {
      const { turn, bargeIn } = tracker.update(now, mic, agent);
      if (turn) events.push({ turn, now });
      if (bargeIn) events.push({ bargeIn, now });
      now += TICK;
    }
  }
  return { events, now };
}

test("a turn: the agent answers after 520 ms of silence, 560 ms after the last speech tick", () => {
  const tracker = new TurnTracker();
  const { events } = play(tracker, [[400, QUIET, QUIET], [2000, SPEECH, QUIET], [520, QUIET, QUIET], [800, QUIET, SPEECH]]);
  assert.equal(tracker.turns.length, 1);
  const turn = tracker.turns[0];
  assert.equal(turn.n, 1);
  assert.equal(turn.voiceToVoiceMs, 560); // last speech tick at 2360, reply at 2920
  assert.equal(turn.callerSpokeMs, 1960);
  assert.deepEqual(events.map((e) => Object.keys(e)[0]), ["turn"]);
  assert.equal(tracker.bargeIns.length, 0);
});

test("no turn without the caller speaking first, and one turn per reply", () => {
  const tracker = new TurnTracker();
  play(tracker, [[400, QUIET, SPEECH], [600, QUIET, QUIET], [400, QUIET, SPEECH]]);
  assert.equal(tracker.turns.length, 0);
  play(tracker, [[600, SPEECH, QUIET], [600, QUIET, QUIET], [400, QUIET, SPEECH], [200, QUIET, QUIET], [400, QUIET, SPEECH]], 2000);
  assert.equal(tracker.turns.length, 1, "a gap shorter than 400 ms inside the reply is the same reply");
});

test("a barge-in: the caller speaks over the agent; how long the agent played and when it stopped", () => {
  const tracker = new TurnTracker();
  play(tracker, [[1000, SPEECH, QUIET], [600, QUIET, QUIET], [1200, QUIET, SPEECH]]);
  const { events } = play(tracker, [[200, SPEECH, SPEECH], [1000, SPEECH, QUIET], [600, QUIET, QUIET]], 2800);
  assert.equal(tracker.bargeIns.length, 1);
  const bargeIn = tracker.bargeIns[0];
  assert.equal(bargeIn.agentPlayedMs, 1200);
  assert.equal(bargeIn.agentStoppedAfterMs, 160); // the agent's last loud tick came 160 ms after it
  assert.equal(events.filter((e) => e.bargeIn).length, 1, "one barge-in per reply, however long the overlap");
});

test("speech while the agent is quiet is not a barge-in", () => {
  const tracker = new TurnTracker();
  play(tracker, [[1000, SPEECH, QUIET], [600, QUIET, QUIET], [400, QUIET, SPEECH], [800, QUIET, QUIET], [600, SPEECH, QUIET]]);
  assert.equal(tracker.bargeIns.length, 0);
  assert.equal(tracker.turns.length, 1);
});
