"""VAD end-pointing on real synthetic speech: one utterance, pre-roll kept, nothing dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payphone.config import Settings, VadSettings, load_settings
from payphone.pcm import Pcm
from payphone.speech.vad import Utterance, VadEndpointer, frame_dbfs, utterances
from tests.speech_fixtures import SAMPLE_RATE, add_noise, piper, place, silence, speech_bounds

pytestmark = pytest.mark.models

SENTENCE = "What time does the library open tomorrow morning?"


@pytest.fixture(scope="module")
def app_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def speech(app_settings: Settings) -> Pcm:
    return piper(app_settings, SENTENCE)


def feed_all(vad: VadEndpointer, pcm: Pcm, chunk: int = 320) -> list[Utterance]:
    out: list[Utterance] = []
    for i in range(0, len(pcm), chunk):
        out += vad.feed(pcm[i : i + chunk])
    return out + vad.flush()


def test_one_utterance_in_noisy_speech_keeps_the_preroll(speech: Pcm) -> None:
    clean, offset = place(speech, 1.0, 2.0)
    noisy = add_noise(clean, snr_db=20, reference=speech)
    vad = VadEndpointer(VadSettings())
    found = feed_all(vad, noisy)

    assert len(found) == 1
    utt = found[0]
    first, last = speech_bounds(speech)
    true_start = (offset + first) / SAMPLE_RATE
    true_end = (offset + last) / SAMPLE_RATE
    # pre-roll: at least 300 ms before the detected start, and the first syllable is inside
    assert utt.speech_start_s - utt.start_s >= 0.3 - 1e-9
    assert utt.start_s < true_start - 0.1
    # the audio handed on is exactly the input from start_s on (no frame lost or altered)
    begin = round(utt.start_s * SAMPLE_RATE)
    assert np.array_equal(utt.pcm, noisy[begin : begin + len(utt.pcm)])
    assert (begin + len(utt.pcm)) / SAMPLE_RATE >= true_end
    # end of speech near the true end; detection exactly one hangover later
    assert abs(utt.end_s - true_end) <= 0.061  # two frames
    assert utt.detected_s - utt.end_s == pytest.approx(0.6, abs=0.031)
    assert not utt.cut


@pytest.mark.parametrize("chunk", [160, 320, 480, 1000, 4096])
def test_any_chunk_size_finds_the_same_utterance(speech: Pcm, chunk: int) -> None:
    audio, _ = place(speech, 0.5, 1.0)
    reference = feed_all(VadEndpointer(), audio, 480)
    found = feed_all(VadEndpointer(), audio, chunk)
    assert [(u.start_s, u.end_s) for u in found] == [(u.start_s, u.end_s) for u in reference]


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=40))
def test_no_sample_is_ever_dropped(speech: Pcm, chunks: list[int]) -> None:
    audio = add_noise(place(speech, 0.4, 0.8)[0], snr_db=25, reference=speech, seed=3)
    vad = VadEndpointer(max_utterance_s=1.0, min_utterance_ms=100)
    found: list[Utterance] = []
    pos = 0
    for size in chunks * (len(audio) // sum(chunks) + 1):
        if pos >= len(audio):
            break
        found += vad.feed(audio[pos : pos + size])
        pos += size
        assert vad.stats.accounted == vad.stats.samples_in
    found += vad.flush()
    assert vad.stats.samples_in == len(audio)
    assert vad.stats.accounted == len(audio)
    assert vad.stats.pending == 0
    assert sum(len(u.pcm) for u in found) == vad.stats.in_utterances
    for utt in found:
        begin = round(utt.start_s * SAMPLE_RATE)
        assert np.array_equal(utt.pcm, audio[begin : begin + len(utt.pcm)])


@given(chunk=st.sampled_from([160, 320, 333, 480, 1000]))
@settings(max_examples=5, deadline=None)
def test_the_utterance_carries_the_words_audio_and_only_the_frame_decides(
    speech: Pcm, chunk: int
) -> None:
    """Behind two echo filters the VAD decides on AEC3's frame, and the utterance carries the
    same span through the words' filter: here the words are the speech at half level."""
    clean, _ = place(speech, 1.0, 2.0)
    words = (clean // 2).astype(np.int16)
    vad = VadEndpointer(VadSettings())
    found: list[Utterance] = []
    for i in range(0, len(clean), chunk):
        found += vad.feed(clean[i : i + chunk], words[i : i + chunk])
    found += vad.flush()

    assert len(found) == 1
    begin = round(found[0].start_s * SAMPLE_RATE)
    assert np.array_equal(found[0].pcm, words[begin : begin + len(found[0].pcm)])
    # speech only in the words is not speech: the frame decides
    quiet = VadEndpointer(VadSettings())
    assert quiet.feed(np.zeros_like(clean), clean) + quiet.flush() == []
    with pytest.raises(ValueError, match="words has 10 samples, the frame 20"):
        quiet.feed(clean[:20], clean[:10])


def test_silence_and_noise_give_no_utterance() -> None:
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(3 * SAMPLE_RATE) * 300).astype(np.int16)
    for audio in (silence(3.0), noise):
        vad = VadEndpointer()
        assert feed_all(vad, audio) == []
        assert vad.stats.accounted == len(audio)


def test_a_blip_shorter_than_min_utterance_is_dropped(speech: Pcm) -> None:
    first, _ = speech_bounds(speech)
    blip = speech[first : first + int(0.1 * SAMPLE_RATE)]
    audio, _ = place(blip, 0.5, 1.0)
    vad = VadEndpointer(start_voiced_frames=2, start_window_frames=3, min_utterance_ms=200)
    assert feed_all(vad, audio) == []
    assert vad.stats.dropped_blips == 1
    assert vad.stats.blips > 0
    # the same blip is kept when the minimum allows it
    keep = VadEndpointer(start_voiced_frames=2, start_window_frames=3, min_utterance_ms=30)
    assert len(feed_all(keep, audio)) == 1


def test_long_speech_is_cut_at_max_utterance_and_carries_on(speech: Pcm) -> None:
    audio, _ = place(np.concatenate([speech, speech]), 0.5, 1.0)
    vad = VadEndpointer(max_utterance_s=1.5)
    found = feed_all(vad, audio)
    assert len(found) >= 3
    assert found[0].cut
    assert found[0].speech_s == pytest.approx(1.5, abs=0.031)
    # the next piece starts where the cut one stopped: no gap, no overlap
    assert found[1].start_s == pytest.approx(found[0].start_s + found[0].duration_s)
    assert found[1].speech_start_s == pytest.approx(found[0].end_s)
    assert vad.stats.cuts >= 1


def test_mic_is_ignored_while_playing_without_barge_in(speech: Pcm) -> None:
    audio, _ = place(speech, 0.5, 1.0)
    vad = VadEndpointer(barge_in=False)
    vad.gate(True)
    assert feed_all(vad, audio) == []
    assert vad.stats.gated == len(audio) - len(audio) % vad.frame_samples
    vad.gate(False)
    assert len(feed_all(vad, audio)) == 1


def test_gating_mid_utterance_drops_it_without_barge_in(speech: Pcm) -> None:
    audio, _ = place(speech, 0.5, 1.0)
    vad = VadEndpointer(barge_in=False)
    half = len(audio) // 2
    assert vad.feed(audio[:half]) == []
    assert vad.in_speech
    vad.gate(True)
    assert not vad.in_speech
    assert vad.feed(audio[half:]) == []
    assert vad.stats.accounted == vad.stats.samples_in


def test_barge_in_needs_speech_above_the_echo(speech: Pcm) -> None:
    echo = (speech.astype(np.float64) * 0.05).astype(np.int16)  # our voice leaking back, -26 dB
    playback = np.concatenate([echo, echo, echo])
    echo_only = VadEndpointer(barge_in=True)
    echo_only.gate(True)
    assert feed_all(echo_only, playback) == []

    caller = np.zeros_like(playback)
    at = len(echo) + 4000
    caller[at : at + len(speech)] = speech
    mixed = np.clip(playback.astype(np.int32) + caller, -32768, 32767).astype(np.int16)
    barge = VadEndpointer(barge_in=True)
    barge.gate(True)
    found = feed_all(barge, mixed)
    assert len(found) == 1
    first, _ = speech_bounds(speech)
    true_start = (at + first) / SAMPLE_RATE
    # heard a little late over the echo, but the pre-roll still holds the first syllable
    assert true_start - 0.1 <= found[0].speech_start_s <= true_start + 0.3
    assert found[0].start_s < true_start


def _heard_from(vad: VadEndpointer, pcm: Pcm, chunk: int = 480) -> float | None:
    """When (s) the VAD decided the caller had started."""
    for i in range(0, len(pcm), chunk):
        vad.feed(pcm[i : i + chunk])
        if vad.in_speech:
            return (i + chunk) / SAMPLE_RATE
    return None


def test_over_our_voice_speech_starts_on_fewer_voiced_frames(speech: Pcm) -> None:
    def heard_at(playing: bool, start_frames: int) -> float | None:
        settings = VadSettings(barge_in=True, barge_in_start_frames=start_frames)
        vad = VadEndpointer(settings, echo_cancelled=True)  # what the canceller leaves: nothing
        vad.gate(playing)
        return _heard_from(vad, np.concatenate([silence(0.5), speech]))

    quick, strict = heard_at(True, 2), heard_at(True, 6)
    assert quick is not None and strict is not None
    assert quick <= strict - 0.06  # at least two 30 ms frames sooner
    # not playing, the ordinary start rule decides whatever the barge-in rule says
    assert heard_at(False, 2) == heard_at(False, 6)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="frames"):
        VadEndpointer(frame_ms=25)
    with pytest.raises(ValueError, match="rate"):
        VadEndpointer(sample_rate=22050)
    with pytest.raises(ValueError, match="start_voiced_frames"):
        VadEndpointer(start_voiced_frames=5, start_window_frames=3)


def test_frame_level_in_dbfs() -> None:
    assert frame_dbfs(np.zeros(160, np.int16)) == -120.0
    full = np.full(160, 32767, np.int16)
    assert frame_dbfs(full) == pytest.approx(0.0, abs=0.01)


async def test_async_helper_yields_utterances_and_flushes(speech: Pcm) -> None:
    audio, _ = place(speech, 0.3, 0.1)  # ends before the hangover: only the flush finds it

    async def frames() -> AsyncIterator[Pcm]:
        for i in range(0, len(audio), 320):
            yield audio[i : i + 320]

    found = [u async for u in utterances(frames(), VadEndpointer())]
    assert len(found) == 1
    assert found[0].detected_s >= found[0].end_s


BAR_SPEEDS = (0.9, 1.0, 1.1)
BAR_TALK = (
    "So I told him, if you want the car you can pay for the gas yourself.",
    "Two more of those, and a basket of fries for the table please.",
    "Did you see who just walked in? Over by the jukebox.",
)


def babble(app_settings: Settings, seconds: float) -> npt.NDArray[np.float64]:
    """Four people talking at once behind the caller, without a common pause (a bar)."""
    pairs = zip(BAR_TALK, BAR_SPEEDS, strict=True)
    talk = [piper(app_settings, text, scale) for text, scale in pairs]
    out = np.zeros(int(seconds * SAMPLE_RATE))
    for talker in range(4):
        at = talker * SAMPLE_RATE // 4
        for n in range(talker, talker + 99):
            if at >= len(out):
                break
            clip = talk[n % len(talk)].astype(np.float64)[: len(out) - at]
            out[at : at + len(clip)] += clip
            at += len(clip) + SAMPLE_RATE // 5
    return out


def _room_under(
    app_settings: Settings, caller: Pcm, db_under: float, seconds: float
) -> npt.NDArray[np.float64]:
    """`seconds` of babble `db_under` dB under the caller's level."""
    room = babble(app_settings, seconds)
    level = np.sqrt(np.mean(np.square(caller.astype(np.float64))))
    return room * level * 10 ** (-db_under / 20) / np.sqrt(np.mean(np.square(room)))


def _under_our_tone(seconds: float) -> Pcm:
    """AEC3's output under the dial tone: its suppressor takes the room out (-95 dBFS)."""
    return add_noise(silence(seconds), 95, reference=np.full(16, 32767, np.int16))


def _in_the_room(app_settings: Settings, caller: Pcm, db_under: float) -> tuple[Pcm, int]:
    """The caller 2 s into `db_under` dB of babble that goes on 3 s after them, and where."""
    mix = _room_under(app_settings, caller, db_under, 5.0 + len(caller) / SAMPLE_RATE)
    at = 2 * SAMPLE_RATE
    mix[at : at + len(caller)] += caller
    return np.clip(mix, -32768, 32767).astype(np.int16), at


def test_a_caller_in_a_talking_room_is_heard_to_stop(app_settings: Settings, speech: Pcm) -> None:
    """Babble 15 dB under the caller goes on after they stop: webrtcvad calls it speech too.
    The pause the end-of-turn model waits for (turn.pause_ms) must still show, at once; it
    never came while the room talked (the turn ended when the babble did, or at 15 s)."""
    mix, at = _in_the_room(app_settings, speech, 15)
    first, last = speech_bounds(speech)
    vad = VadEndpointer(VadSettings(), hangover_ms=1200)  # as with the end-of-turn model
    paused_at, started_at = None, None
    for start in range(0, len(mix), 480):
        vad.feed(mix[start : start + 480])
        now = (start + 480) / SAMPLE_RATE
        if vad.in_speech and started_at is None and now > (at + first) / SAMPLE_RATE:
            started_at = now
        if vad.in_speech and vad.pause_ms >= 180 and now > (at + last) / SAMPLE_RATE:
            paused_at = now
            break
    assert started_at is not None and started_at - (at + first) / SAMPLE_RATE < 0.3
    assert paused_at is not None, "the caller's pause never showed under the babble"
    assert paused_at - (at + last) / SAMPLE_RATE < 0.4


def test_the_room_alone_starts_little_phantom_speech(app_settings: Settings) -> None:
    """Babble with nobody at the handset: its peaks are speech to webrtcvad, and each
    utterance they start would hold the caller's turn or become one. A start needs frames
    well over the room's floor, as the caller's own voice at the handset is (10 in these 20 s
    when any voiced frame over the floor could start one)."""
    room = np.clip(babble(app_settings, 20.0) * 0.1, -32768, 32767).astype(np.int16)
    vad = VadEndpointer(VadSettings(), hangover_ms=180)  # each pause ends one: count them all
    found = feed_all(vad, room, 480)
    assert len(found) <= 6


@pytest.mark.parametrize("db_under", [15, 10])
def test_in_a_talking_room_the_silence_limit_still_ends_the_turn(
    app_settings: Settings, speech: Pcm, db_under: int
) -> None:
    """The end-of-turn model unsure, the silence limit (turn.max_silence_ms) must end the turn:
    1.2 s in which the room's peaks do not count as the caller going on. They clear the
    floor's margin in runs, and the limit never came while the room talked."""
    mix, at = _in_the_room(app_settings, speech, db_under)
    last = (at + speech_bounds(speech)[1]) / SAMPLE_RATE
    vad = VadEndpointer(VadSettings(), hangover_ms=1200)  # as with the end-of-turn model
    found = feed_all(vad, mix[: int((last + 2.0) * SAMPLE_RATE)], 480)
    assert found, "the room's peaks kept the pause from ever reaching the silence limit"
    assert abs(found[0].end_s - last) < 0.3
    assert found[0].detected_s - last < 1.6


def test_in_a_talking_room_the_caller_going_on_takes_the_pause_back(
    app_settings: Settings,
) -> None:
    """A caller who pauses to think and goes on ("I was wondering ... if you could help me"):
    after a settled pause only a clear voice takes it back, and theirs at the handset does,
    at once."""
    head, tail = piper(app_settings, "I was wondering"), piper(app_settings, "if you could help")
    gap = silence(0.7)
    mix, at = _in_the_room(app_settings, np.concatenate([head, gap, tail]), 15)
    resumed = (at + len(head) + len(gap) + speech_bounds(tail)[0]) / SAMPLE_RATE
    vad = VadEndpointer(VadSettings(), hangover_ms=1200)
    longest, taken_back = 0, None
    for start in range(0, int((resumed + 0.5) * SAMPLE_RATE), 480):
        vad.feed(mix[start : start + 480])
        now = (start + 480) / SAMPLE_RATE
        if now < resumed:
            longest = max(longest, vad.pause_ms)
        elif taken_back is None and vad.in_speech and vad.pause_ms == 0:
            taken_back = now
    assert longest >= 500, "the pause never settled"
    assert taken_back is not None and taken_back - resumed < 0.1


def test_a_tone_of_ours_teaches_the_floor_nothing(app_settings: Settings) -> None:
    """With the mic open under a sound of ours (the dial tone, a key's tone) the echo
    canceller's suppressor takes the room out too (a bar under the dial tone came out at -95
    dBFS). Learned, those frames pinned the floor there for its whole window: after them the
    room's babble was all caller, one utterance of 3.5 s."""
    room = np.clip(babble(app_settings, 8.0) * 0.1, -32768, 32767).astype(np.int16)
    suppressed = _under_our_tone(3.0)
    vad = VadEndpointer(VadSettings(), hangover_ms=180)
    feed_all(vad, room[: 3 * SAMPLE_RATE], 480)  # the room, before the tone
    vad.feed(suppressed, sounding=True)
    found, in_speech = [], 0
    for start in range(3 * SAMPLE_RATE, len(room), 480):
        found += vad.feed(room[start : start + 480])
        in_speech += vad.in_speech
    found += vad.flush()
    assert max((u.speech_s for u in found), default=0.0) < 1.5
    assert in_speech * 0.03 < 2.5


def _greeting_in_the_room(
    app_settings: Settings, caller: Pcm, speaks: bool
) -> tuple[list[float], float]:
    """The call's first 5 s in a room talking 15 dB under `caller`: 1.5 s of dial tone, then
    our greeting, with the room heard through the words' filter (`words`, its own array) and
    AEC3's output as `pcm`: under the dial tone `_under_our_tone`, under the greeting the
    room. With `speaks` the caller starts 3.5 s in.
    Returns when each utterance started, and when the caller began (inf: never)."""
    room = _room_under(app_settings, caller, 15, 5.0)
    at, began = int(3.5 * SAMPLE_RATE), np.inf
    if speaks:
        room[at : at + len(caller)] += caller[: len(room) - at]
        began = (at + speech_bounds(caller)[0]) / SAMPLE_RATE
    mic = np.clip(room, -32768, 32767).astype(np.int16)
    suppressed = _under_our_tone(1.5)
    vad = VadEndpointer(VadSettings(), barge_in=True, echo_cancelled=True)
    starts: list[float] = []
    for start in range(0, len(mic), 480):
        now = start / SAMPLE_RATE
        words = mic[start : start + 480]
        tone = now < 1.5
        vad.gate(not tone)
        pcm = suppressed[start : start + 480] if tone else words.copy()
        was = vad.in_speech
        vad.feed(pcm, words, sounding=tone)
        if vad.in_speech and not was:
            starts.append(now)
    return starts, began


def test_a_talking_room_does_not_talk_over_the_greeting(app_settings: Settings) -> None:
    """Nobody at the handset in a bar: the room's babble must not start speech over the
    greeting (a barge-in that stops it, then a phantom turn). The room's floor could not be
    learned from AEC3's output (nothing under the dial tone, never over our voice), so any
    babble frame over the echo's residue started speech; the words' filter shows the room as
    it is, and a start over our voice needs frames well over it, as elsewhere."""
    caller = piper(app_settings, "Hang on, I need a taxi.")
    starts, _ = _greeting_in_the_room(app_settings, caller, speaks=False)
    assert not starts, f"the room started speech over the greeting at {starts} s"


def test_a_caller_talks_over_the_greeting_in_a_talking_room(app_settings: Settings) -> None:
    """...while the caller at the handset, 15 dB over the room, still stops it at once."""
    caller = piper(app_settings, "Hang on, I need a taxi.")
    starts, began = _greeting_in_the_room(app_settings, caller, speaks=True)
    caught = [s for s in starts if s >= began - 0.1]
    assert caught and caught[0] - began < 0.2
