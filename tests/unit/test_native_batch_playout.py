"""What playout publishes to the per-batch C path (``Playout.publish``/``playing_until_ns``) is always what
``playing`` answers: for every arrival time t, ``playing(t)`` is ``t < playing_until_ns()``, after every
operation (frames in real time and in bursts, marks, timers, pause, resume, barge-in, CLEAR, flush, a new
source, close), and the published value is the current one."""

from __future__ import annotations

import random

import pytest

from splitrelay.relay.playout import FRAME_NS, PLAYING_ALWAYS
from tests.unit.test_playout import Harness


@pytest.mark.parametrize("seed", range(8))
def test_the_published_playing_time_is_what_playing_answers(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness()
    published: list[int] = []
    h.p.publish = published.append
    position = 0
    for _ in range(600):
        op = rng.random()
        if op < 0.45:
            marker = rng.random() < 0.1
            h.p.push_frame(bytes([1]), seq=position // 960, marker=marker, timestamp=position)
            position += 960 * rng.choice((1, 1, 1, 2))
        elif op < 0.5:
            h.p.push_mark("m", position)
        elif op < 0.55:
            h.p.pause()
        elif op < 0.62:
            h.p.resume()
        elif op < 0.65:
            h.p.barge_in(rng.randrange(50_000_000))
        elif op < 0.67:
            h.p.clear_before(position - rng.randrange(5000))
        elif op < 0.69:
            h.p.flush()
        elif op < 0.7:
            h.p.new_source()
        else:
            h.advance(rng.choice((FRAME_NS // 4, FRAME_NS, 3 * FRAME_NS, 400_000_000)))
        until = h.p.playing_until_ns()
        if published:
            assert published[-1] == until
        for t in (h.now - FRAME_NS, h.now, h.now + 90_000_000, h.now + 200_000_000):
            assert h.p.playing(t) == (t < until)
    h.p.close()
    assert published[-1] == h.p.playing_until_ns()
    assert PLAYING_ALWAYS > 1 << 61
