"""The in-memory earpiece's sample clock: buffers end to end, real underruns counted, stop cuts."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from payphone.hardware.memory_audio import MemorySink

RATE = 22050


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


async def busy_loop(seconds: float) -> None:
    """Other work on the loop: many short sleeps, each woken a little late."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.0007)


async def test_buffers_lie_end_to_end_however_late_the_player_wakes() -> None:
    sink = MemorySink(RATE)
    clip = tone(1.0)
    busy = asyncio.create_task(busy_loop(1.2))
    await sink.play(clip)
    await sink.drain()
    await busy
    heard = sink.heard
    assert [b.sample for b in heard[1:]] == [b.end for b in heard[:-1]]  # no gap, no overlap
    assert np.array_equal(sink.heard_pcm(), clip)
    assert sink.underruns == []
    assert heard[-1].at == pytest.approx(sink.time_of(heard[-1].sample))
    await sink.aclose()


async def test_a_starved_sink_counts_each_underrun_and_logs_it() -> None:
    sink = MemorySink(RATE)
    with capture_logs() as logs:
        await sink.play(tone(0.1))
        await asyncio.sleep(0.25)  # the producer is late: the earpiece ran dry mid-stream
        await sink.play(tone(0.1))
        await asyncio.sleep(0.25)
        await sink.play(tone(0.1))
        await sink.drain()
    assert len(sink.underruns) == 2
    assert [u.gap_s for u in sink.underruns] == [pytest.approx(0.15, abs=0.03)] * 2
    first_end = sink.heard[0].sample + int(0.1 * RATE)
    assert sink.underruns[0].at == pytest.approx(sink.time_of(first_end), abs=0.001)
    events = [entry for entry in logs if entry["event"] == "earpiece_underrun"]
    assert [round(e["gap_ms"] / 50) for e in events] == [3, 3]
    await sink.aclose()


async def test_silence_between_streams_is_not_an_underrun() -> None:
    sink = MemorySink(RATE)
    await sink.play(tone(0.1))
    await sink.drain()  # the reply is over
    await asyncio.sleep(0.15)
    await sink.play(tone(0.1))
    sink.stop()  # cut off
    await asyncio.sleep(0.1)
    await sink.play(tone(0.1))
    await sink.drain()
    assert sink.underruns == []
    gaps = [b.sample - a.end for a, b in itertools.pairwise(sink.heard)]
    assert max(gaps) >= 0.14 * RATE  # the pause is there, where it happened
    await sink.aclose()


async def test_stop_cuts_the_sounding_buffer_where_the_sound_stopped() -> None:
    sink = MemorySink(RATE)
    feeding = asyncio.create_task(sink.play(tone(1.0)))  # back-pressure: returns near the end
    await asyncio.sleep(0.3)
    stopped_at = sink.sample_at(time.monotonic())
    sink.stop()
    assert not sink.playing
    heard = sink.heard_pcm()
    assert abs(len(heard) - 0.3 * RATE) < 0.05 * RATE
    assert sink.heard[-1].end == pytest.approx(stopped_at, abs=0.005 * RATE)
    feeding.cancel()  # the caller of `stop` cancels the feeder too (`Call.interrupt`)
    await asyncio.sleep(0.1)
    assert len(sink.heard_pcm()) == len(heard)  # nothing more was heard after the stop
    await sink.aclose()


async def test_played_is_what_sounded_on_the_clock_with_silence_between() -> None:
    sink = MemorySink(RATE)
    first = tone(0.1, 500)
    await sink.play(first)
    await sink.drain()
    await asyncio.sleep(0.05)
    await sink.play(tone(0.1, 700))
    await sink.drain()
    start = sink.heard[0].sample
    played = sink.played(start - 100, int(0.35 * RATE))
    assert np.array_equal(played[:100], np.zeros(100, dtype=np.int16))
    assert np.array_equal(played[100 : 100 + len(first)], first)
    second = next(b for b in sink.heard if b.sample > start + len(first))
    gap = played[100 + len(first) : 100 + second.sample - start]
    assert len(gap) > 0.04 * RATE and not gap.any()
    await sink.aclose()


async def test_a_muted_earpiece_keeps_its_clock_and_queue_and_plays_silence() -> None:
    sink = MemorySink(8000, buffer_ms=20)
    tone = np.full(8000, 5000, dtype=np.int16)  # 1 s
    playing = asyncio.ensure_future(sink.play(tone))  # queues as the earpiece makes room
    await asyncio.sleep(0.2)
    sink.mute(True)
    muted_at = sink.sample_at(time.monotonic())
    await asyncio.sleep(0.3)
    sink.mute(False)
    await playing
    await sink.drain()
    heard = sink.heard_pcm()
    assert len(heard) == len(tone)  # nothing was dropped: the audio kept its time
    silent = np.flatnonzero(heard == 0)
    assert 0.25 * 8000 < len(silent) < 0.4 * 8000  # about the 0.3 s it was muted
    assert abs(int(silent[0]) - muted_at) < 0.03 * 8000  # from the moment it was muted
    assert np.all(sink.played(muted_at + 400, 800) == 0)  # the echo reference is silent too
    await sink.aclose()


async def test_a_stop_ends_a_mute_so_the_next_sound_is_heard() -> None:
    sink = MemorySink(8000, buffer_ms=20)
    sink.mute(True)
    sink.stop()  # a new activity takes over (the call's interrupt)
    await sink.play(np.full(800, 5000, dtype=np.int16))
    await sink.drain()
    assert np.all(sink.heard_pcm() == 5000)
    await sink.aclose()
