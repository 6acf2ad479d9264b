"""End-pointing: 16 kHz int16 mic audio in, whole utterances out (webrtcvad).

Why it is built this way: the peers we learned from dropped frames and clipped the first
syllable. Here every sample fed in is accounted for (`VadStats`), `preroll_ms` of audio before
the detected start rides along with each utterance, and the end of speech is stamped at the
moment speech actually stopped (the hangover is subtracted back out), so latency logs measure
from what the caller experienced.

Echo while we play (`gate(True)`): without barge-in the mic is simply ignored. With barge-in a
frame counts as voiced only if webrtcvad says so *and* its level stands `echo_margin_db` above a
running estimate of the echo level (`_EchoTracker`: a slew-limited peak follower of the mic
level, learned during the first `echo_warmup_ms` of audible playback, never below
`echo_floor_db`). Close speech into the handset clears that bar; our own voice leaking back from
the earpiece does not. It is a level heuristic, not echo cancellation: a caller must speak up
to interrupt, and a quiet caller is only heard once playback stops.

End of speech: webrtcvad holds its "speech" verdict for a few frames after speech stops (its
own overhang, ~100 ms at 30 ms frames), so a voiced frame must also stand `energy_margin_db`
above the background level (averaged over unvoiced frames between utterances). The end is then
stamped within a frame of the true end, and detected one hangover later.

Other people talking behind the caller (a bar, a hallway) is speech to webrtcvad too, so there
are no unvoiced frames to learn that background from: the caller's turn never ended while the
room talked (eight caller lines in four-talker babble 20 dB under them: no 90 ms pause in the
6 s the babble went on after them). So a voiced frame must also stand `floor_margin_db` above
the room's floor: the `floor_percentile`th percentile of the frame levels of the last
`floor_window_ms` (never our own voice: those frames take the echo rules). Babble that never
pauses sets that floor; the caller at the handset stands above it, and their pause shows under
the babble (the same lines: a 90 ms pause a median 0.02-0.08 s after their last word, at
10-25 dB).
The room's own peaks still start speech now and then (a phantom utterance, which holds the
caller's turn or becomes one), so a start also needs `start_loud_frames` of its voiced frames
`floor_start_margin_db` over the floor: the caller's onset at the handset clears it (a soft
first syllable may sit under it, and rides along in the pre-roll). 20 s of the babble alone:
4 utterances instead of 10; white noise 20 dB under a caller: the start detected a median
15 ms later.
Once a pause has lasted `settle_ms` (as long as the end-of-turn model's `turn.pause_ms`), only a
voiced frame `floor_resume_margin_db` over the floor takes it back, as the caller at the handset
speaking again does: the room's peaks clear the floor's margin in runs, and a talking room's pause
rarely reached the silence limit (babble 15 dB under `bench turns`' 34 lines: 1.2 s of pause
never came after 19-25 of them with the floor alone, after 0-2 with this rule, and began a
median 30 ms after the last word; a caller going on is heard as soon as before, 30-40 ms).
The echo canceller's suppressor takes the room out with our own sounds (the dial tone over a
bar's babble came out at -95 dBFS), and over our voice it passes the room only as what its
echo rules call residue. So when the words come through a filter of their own (`feed(pcm,
words)`, speexdsp's linear filter: it subtracts our echo and leaves the room alone) the floor and
every margin over it are measured on the words, under the dial tone and the greeting too, and a
start over our voice needs the same frames well over the floor as any other. Learned from AEC3's
output alone, the floor knew nothing at the start of a call: in a bar with nobody at the handset
(babble 15 dB under the bench's callers, 6 calls of 8 s) the room was heard as a "hello?" over
the dial tone in 5 calls, paused our voice 10 times and cut it off 8 times, and started 8 turns
(3 answered); with the words' floor: 3, 3, 0 and 4 (1 answered).
Without a second filter, frames under a sound of ours (`sounding`) or our voice teach the floor
nothing (pinned at -95 dBFS it made the babble after the tone all caller).
In a quiet room the floor is the room's hiss and changes nothing, except that an unbroken
monologue's softest frames fall under it once it has filled the window (six 8-10 s monologues
with -50 dBFS hiss: 45 pauses of 90 ms instead of 22), each soon stale: the end-of-turn model
judges only a pause that lasts.

webrtcvad costs a few microseconds per frame, so `feed` is cheap enough to call on the event loop.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import webrtcvad

from payphone.config import VadSettings
from payphone.log import get_logger
from payphone.pcm import Pcm

log = get_logger(__name__)

SUPPORTED_RATES = (8000, 16000, 32000, 48000)
SUPPORTED_FRAME_MS = (10, 20, 30)
SILENCE_DB = -120.0
NOISE_ALPHA = 0.05  # background level: average over ~20 unvoiced frames


@dataclass(frozen=True)
class Utterance:
    """One thing the caller said. Times are seconds of stream time (samples fed / rate).

    `start_s` is where `pcm` begins (pre-roll included), `speech_start_s` where speech was first
    heard, `end_s` when speech actually ended (the hangover expired at `detected_s`; `end_s` is
    that moment minus the hangover), `detected_s` when the VAD decided it was over. `pcm` runs
    from `start_s` to `end_s` plus a short tail. `cut` marks an utterance ended by the maximum
    length rather than by silence. `detected_monotonic` is `time.monotonic()` at detection, so
    the call loop can place end of speech on the wall clock.
    """

    pcm: Pcm
    sample_rate: int
    start_s: float
    speech_start_s: float
    end_s: float
    detected_s: float
    cut: bool = False
    detected_monotonic: float = 0.0

    @property
    def duration_s(self) -> float:
        """Length of the audio handed on (pre-roll and tail included)."""
        return len(self.pcm) / self.sample_rate

    @property
    def speech_s(self) -> float:
        """How long the caller spoke."""
        return self.end_s - self.speech_start_s

    @property
    def end_monotonic(self) -> float:
        """End of speech on the `time.monotonic()` clock."""
        return self.detected_monotonic - (self.detected_s - self.end_s)


@dataclass
class VadStats:
    """Where every fed sample went; `accounted` always equals `samples_in`."""

    samples_in: int = 0
    frames: int = 0
    voiced_frames: int = 0
    in_utterances: int = 0
    silence: int = 0
    blips: int = 0
    gated: int = 0
    utterances: int = 0
    dropped_blips: int = 0
    cuts: int = 0
    pending: int = 0

    @property
    def accounted(self) -> int:
        """Samples in emitted utterances, silence, dropped blips, gated audio and still pending."""
        return self.in_utterances + self.silence + self.blips + self.gated + self.pending


@dataclass
class _Frame:
    pcm: Pcm  # as the utterance carries it (the words' audio); only the VAD's decides `voiced`
    index: int
    voiced: bool
    # how far the frame stands over the room's floor (inf: no floor yet, or over our voice,
    # where the echo rules decide): a start and a taken-back pause need a margin of it
    over_floor_db: float = math.inf


@dataclass
class _EchoTracker:
    """Running echo level (dB) while our own audio plays, for voice barge-in.

    A peak follower of the mic level: it learns freely for the first `warmup_frames` audible
    frames of each playback, then rises at most `slew_db` per frame (so a caller's sudden onset
    stands out for the frames the start rule needs, while our own voice swelling slowly does
    not) and falls back slowly. It never drops below `floor_db`, and it is frozen while the
    caller is speaking, so their own voice never raises the bar against them.
    """

    margin_db: float
    warmup_frames: int
    floor_db: float = -50.0
    slew_db: float = 1.0
    release: float = 0.003
    level_db: float = -50.0
    learned: int = 0

    def reset(self) -> None:
        self.level_db = self.floor_db
        self.learned = 0

    def stands_out(self, frame_db: float, learn: bool) -> bool:
        """Whether the frame is `margin_db` above the echo; `learn` updates the estimate."""
        if self.learned < self.warmup_frames:
            if frame_db > self.floor_db:
                self.level_db = max(self.level_db, frame_db)
                self.learned += 1
            return False
        loud = frame_db >= self.level_db + self.margin_db
        if learn:
            if frame_db > self.level_db:
                self.level_db += min(frame_db - self.level_db, self.slew_db)
            else:
                self.level_db += self.release * (frame_db - self.level_db)
                self.level_db = max(self.floor_db, self.level_db)
        return loud


class _RoomFloor:
    """The room's floor level (dB): a low percentile of the last frames' levels, whatever they
    were. It follows a background that talks without pause (where webrtcvad calls every frame
    speech), and a caller's own pauses keep it from rising to their voice."""

    def __init__(self, frames: int, percentile: float) -> None:
        self._levels: deque[float] = deque(maxlen=frames)
        self._percentile = percentile
        self._least = max(1, frames // 10)  # the floor needs this many frames to mean anything

    def add(self, level_db: float) -> None:
        self._levels.append(level_db)

    def level_db(self) -> float:
        if len(self._levels) < self._least:
            return SILENCE_DB
        return float(np.percentile(np.fromiter(self._levels, float), self._percentile))


def frame_dbfs(pcm: Pcm) -> float:
    """RMS level of a frame in dB relative to int16 full scale."""
    if len(pcm) == 0:
        return SILENCE_DB
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    return max(SILENCE_DB, 20.0 * math.log10(rms / 32768.0)) if rms > 0 else SILENCE_DB


@dataclass
class _Speech:
    """The utterance being collected."""

    frames: list[_Frame] = field(default_factory=list)
    speech_start_index: int = 0
    last_voiced_index: int = 0
    unvoiced_run: int = 0


class VadEndpointer:
    """Streaming end-pointer: `feed` any chunk of int16 PCM, get finished utterances back.

    Start: `start_voiced_frames` voiced among the last `start_window_frames` frames
    (`barge_in_start_frames` over our own voice, with barge-in). End: a run
    of unvoiced frames as long as `hangover_ms`. Utterances shorter than `min_utterance_ms` of
    speech are dropped as blips; speech longer than `max_utterance_s` is cut and emitted, and
    collection carries straight on into the next utterance (nothing lost at the seam).
    """

    def __init__(
        self,
        settings: VadSettings | None = None,
        *,
        aggressiveness: int | None = None,
        frame_ms: int | None = None,
        sample_rate: int | None = None,
        start_voiced_frames: int | None = None,
        start_window_frames: int | None = None,
        hangover_ms: int | None = None,
        preroll_ms: int | None = None,
        min_utterance_ms: int | None = None,
        max_utterance_s: float | None = None,
        barge_in: bool | None = None,
        tail_ms: int = 200,
        echo_margin_db: float = 10.0,
        echo_warmup_ms: int = 300,
        echo_floor_db: float = -50.0,
        energy_margin_db: float = 6.0,
        floor_window_ms: int = 3000,
        floor_percentile: float = 10.0,
        floor_margin_db: float = 9.0,
        floor_start_margin_db: float = 18.0,
        start_loud_frames: int = 2,
        settle_ms: int = 180,
        floor_resume_margin_db: float = 14.0,
        echo_cancelled: bool = False,
    ) -> None:
        s = settings or VadSettings()
        self.aggressiveness = s.aggressiveness if aggressiveness is None else aggressiveness
        self.frame_ms = s.frame_ms if frame_ms is None else frame_ms
        self.sample_rate = s.sample_rate if sample_rate is None else sample_rate
        self.start_voiced = (
            s.start_voiced_frames if start_voiced_frames is None else start_voiced_frames
        )
        self.start_window = (
            s.start_window_frames if start_window_frames is None else start_window_frames
        )
        self.barge_in_start = min(s.barge_in_start_frames, self.start_window)
        self.hangover_ms = s.hangover_ms if hangover_ms is None else hangover_ms
        self.preroll_ms = s.preroll_ms if preroll_ms is None else preroll_ms
        self.min_utterance_ms = s.min_utterance_ms if min_utterance_ms is None else min_utterance_ms
        self.max_utterance_s = s.max_utterance_s if max_utterance_s is None else max_utterance_s
        self.barge_in = s.barge_in if barge_in is None else barge_in
        if self.sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"webrtcvad needs a rate in {SUPPORTED_RATES}, not {self.sample_rate}")
        if self.frame_ms not in SUPPORTED_FRAME_MS:
            raise ValueError(
                f"webrtcvad needs frames of {SUPPORTED_FRAME_MS} ms, not {self.frame_ms}"
            )
        if not 1 <= self.start_voiced <= self.start_window:
            raise ValueError("start_voiced_frames must be between 1 and start_window_frames")

        self.frame_samples = self.sample_rate * self.frame_ms // 1000
        self.hangover_frames = max(1, math.ceil(self.hangover_ms / self.frame_ms))
        self.preroll_frames = math.ceil(self.preroll_ms / self.frame_ms)
        self.tail_frames = min(self.hangover_frames, math.ceil(tail_ms / self.frame_ms))
        self.min_frames = math.ceil(self.min_utterance_ms / self.frame_ms)
        self.max_frames = max(1, int(self.max_utterance_s * 1000 / self.frame_ms))

        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._echo = _EchoTracker(
            margin_db=echo_margin_db,
            warmup_frames=math.ceil(echo_warmup_ms / self.frame_ms),
            floor_db=echo_floor_db,
            level_db=echo_floor_db,
        )
        # what the echo canceller leaves of our voice: a property of the handset, so learned
        # across playbacks (never reset), never while the caller speaks
        # ...and it rises slowly: a caller's soft onset ("Excuse me") must not be learned as
        # residue in the frames the start rule needs
        self._residual = _EchoTracker(
            echo_margin_db,
            warmup_frames=0,
            floor_db=echo_floor_db,
            slew_db=0.25,
            level_db=echo_floor_db,
        )
        self._playing = False
        self.echo_cancelled = echo_cancelled
        self.energy_margin_db = energy_margin_db
        self._noise_db: float | None = None
        self.floor_margin_db = floor_margin_db
        self.floor_start_margin_db = floor_start_margin_db
        self.start_loud_frames = start_loud_frames
        self.settle_frames = math.ceil(settle_ms / self.frame_ms)
        self.floor_resume_margin_db = floor_resume_margin_db
        self._floor = _RoomFloor(max(1, floor_window_ms // self.frame_ms), floor_percentile)
        self._partial = np.zeros(0, dtype=np.int16)
        self._partial_words = self._partial  # the same samples as the words carry them
        # frames before a start: the start window plus the pre-roll
        self._ring: deque[_Frame] = deque()
        self._speech: _Speech | None = None
        self._next_index = 0
        self._blip: Pcm | None = None  # the last blip dropped, until taken
        self.stats = VadStats()

    # -- public ------------------------------------------------------------------------------

    @property
    def in_speech(self) -> bool:
        """Whether the caller is speaking now (an utterance is being collected)."""
        return self._speech is not None

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def _over_our_voice(self) -> bool:
        """Our voice plays and the caller may talk over it: the barge-in rules apply."""
        return self._playing and self.barge_in

    def gate(self, playing: bool) -> None:
        """Tell the VAD whether our own audio is playing (the mic then hears the earpiece).

        Without barge-in, everything heard while playing is ignored, and an utterance in
        progress when playback starts is dropped (counted as gated). With barge-in, speech must
        stand out from the echo level, which is learned afresh each time playback starts; behind
        an echo canceller (`echo_cancelled`) it must stand out from what the canceller leaves of
        our voice, learned over all playbacks and never relearned at a restart (that would take
        a caller talking between two sentences for the echo).
        """
        if playing == self._playing:
            return
        self._playing = playing
        self._echo.reset()
        if playing and not self.barge_in:
            self._discard_all_to("gated")

    def feed(self, pcm: Pcm, words: Pcm | None = None, sounding: bool = False) -> list[Utterance]:
        """Take any number of samples; return the utterances that ended inside them.

        `words`: the same samples as the utterances should carry them (the mic through another
        echo filter, for Whisper); None: `pcm` itself. Only `pcm` decides what is speech.
        `words` as an array of its own (not `pcm` again) is a second filter's view of the room:
        the room's floor is learned from it. `sounding`: some sound of ours is in the earpiece
        with the mic open (the dial tone, a key's tone): the echo canceller's suppressor takes
        the room out with it (the dial tone over a bar's babble came out at -95 dBFS), so
        without a words channel these frames teach nothing about the room; learned, they
        pinned the floor there for its whole window, past the greeting.
        """
        own_words = words is not None and words is not pcm
        samples = np.asarray(pcm, dtype=np.int16).reshape(-1)
        spoken = samples if words is None else np.asarray(words, dtype=np.int16).reshape(-1)
        if len(spoken) != len(samples):
            raise ValueError(f"words has {len(spoken)} samples, the frame {len(samples)}")
        self.stats.samples_in += len(samples)
        buffered, carried = samples, spoken
        if len(self._partial):
            buffered = np.concatenate([self._partial, samples])
            carried = np.concatenate([self._partial_words, spoken])
        whole = len(buffered) // self.frame_samples * self.frame_samples
        self._partial = buffered[whole:].copy()
        self._partial_words = carried[whole:].copy()
        out: list[Utterance] = []
        for offset in range(0, whole, self.frame_samples):
            span = slice(offset, offset + self.frame_samples)
            done = self._frame(buffered[span], carried[span], sounding, own_words)
            if done is not None:
                out.append(done)
        self._update_pending()
        return out

    @property
    def pause_ms(self) -> int:
        """How long the caller has been silent inside an utterance (0 while speaking or idle)."""
        return 0 if self._speech is None else self._speech.unvoiced_run * self.frame_ms

    @property
    def voiced_ms(self) -> int:
        """Voiced audio in the utterance in progress (0 when idle): how long the caller has
        really spoken, pauses not counted."""
        if self._speech is None:
            return 0
        return sum(f.voiced for f in self._speech.frames) * self.frame_ms

    @property
    def speech_mark(self) -> int | None:
        """The last voiced frame of the utterance in progress: it changes when the caller speaks
        again, so a decision taken on an earlier pause can be recognised as stale."""
        return None if self._speech is None else self._speech.last_voiced_index

    @property
    def speech_samples(self) -> int:
        """How long the utterance in progress is, in samples (pre-roll and pause included)."""
        return 0 if self._speech is None else len(self._speech.frames) * self.frame_samples

    def speech_so_far(self) -> Pcm:
        """The audio of the utterance in progress, pre-roll and the pause so far included."""
        if self._speech is None or not self._speech.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.pcm for f in self._speech.frames])

    def take_blip(self) -> Pcm | None:
        """The audio of the blip dropped last, once (None: none since the last take). Over our
        own voice a caller's first word ("Stop,") can reach the VAD as only a few voiced frames
        through the echo canceller; the listener puts it back in front of their next words."""
        blip, self._blip = self._blip, None
        return blip

    def end_now(self) -> Utterance | None:
        """The caller has finished (the end-of-turn model says so): close the utterance now,
        as the hangover would have, without waiting for it."""
        if self._speech is None:
            return None
        return self._finish(cut=False)

    def flush(self) -> list[Utterance]:
        """End of stream (hang-up, file end): finish an utterance in progress, if long enough."""
        out: list[Utterance] = []
        # a trailing partial frame (< one frame) cannot be judged by webrtcvad: count it silent
        self.stats.silence += len(self._partial)
        self._partial = self._partial_words = np.zeros(0, dtype=np.int16)
        if self._speech is not None:
            done = self._finish(cut=False)
            if done is not None:
                out.append(done)
        self._discard_all_to("silence")
        self._update_pending()
        return out

    def reset(self) -> None:
        """Forget everything in progress (a new call); pending audio counts as silence."""
        self._discard_all_to("silence")
        self.stats.silence += len(self._partial)
        self._partial = self._partial_words = np.zeros(0, dtype=np.int16)
        self._update_pending()

    # -- frame by frame ----------------------------------------------------------------------

    def _time(self, frame_index: int) -> float:
        return frame_index * self.frame_samples / self.sample_rate

    def _judge(self, frame: Pcm, sounding: bool, room: Pcm | None) -> tuple[bool, float]:
        """(voiced, over the floor): whether the frame is the caller speaking, and how far it
        stands over the room's floor (a start and a taken-back pause need a margin of it).
        `room`: the same frame through the words' echo filter, which only subtracts our echo
        and leaves the room alone: the floor and the margins are measured on it, under our
        voice and the dial tone too. Without it, over our own voice the echo rules decide and
        every voiced frame counts, and `sounding` (a sound of ours with the mic open) frames
        teach the room's levels nothing (`feed`)."""
        voiced = bool(self._vad.is_speech(frame.tobytes(), self.sample_rate))
        level = frame_dbfs(frame)
        room_db = level if room is None else frame_dbfs(room)
        if room is not None or not (sounding or self._over_our_voice):
            self._floor.add(room_db)
        if self._over_our_voice:
            # the echo estimate is frozen while the caller speaks
            tracker = self._residual if self.echo_cancelled else self._echo
            voiced = tracker.stands_out(level, learn=self._speech is None) and voiced
            if room is None:
                return voiced, math.inf
            if not voiced:
                return False, -math.inf
            over = room_db - self._floor.level_db()
            return over >= self.floor_margin_db, over
        if not voiced:
            if self._speech is None and not sounding:
                self._noise_db = (
                    level
                    if self._noise_db is None
                    else self._noise_db + NOISE_ALPHA * (level - self._noise_db)
                )
            return False, -math.inf
        over = room_db - self._floor.level_db()
        if over < self.floor_margin_db:
            return False, over  # the room talking, not the caller at the handset
        # webrtcvad keeps saying "speech" for a few frames after it ends (its own overhang);
        # frames no louder than the background do not count, so the end is stamped on time
        above = self._noise_db is None or level >= self._noise_db + self.energy_margin_db
        return above, over

    def _frame(self, pcm: Pcm, words: Pcm, sounding: bool, own_words: bool) -> Utterance | None:
        index = self._next_index
        self._next_index += 1
        self.stats.frames += 1
        if self._playing and not self.barge_in:
            self.stats.gated += len(pcm)
            return None
        frame = _Frame(words, index, *self._judge(pcm, sounding, words if own_words else None))
        self.stats.voiced_frames += frame.voiced
        if self._speech is None:
            self._listen(frame)
            return None
        return self._collect(frame)

    def _listen(self, frame: _Frame) -> None:
        self._ring.append(frame)
        window = list(self._ring)[-self.start_window :]
        needed = self.barge_in_start if self._over_our_voice else self.start_voiced
        voiced = [f for f in window if f.voiced]
        # a start also needs a few frames well over the room's floor: the room's own peaks
        # start less phantom speech, and the caller's onset at the handset clears it
        loud = sum(f.over_floor_db >= self.floor_start_margin_db for f in voiced)
        loud = loud >= min(self.start_loud_frames, needed)
        if len(voiced) >= needed and loud:
            first_voiced = voiced[0]
            keep_from = first_voiced.index - self.preroll_frames
            while self._ring and self._ring[0].index < keep_from:
                self.stats.silence += len(self._ring.popleft().pcm)
            self._speech = _Speech(
                frames=list(self._ring),
                speech_start_index=first_voiced.index,
                last_voiced_index=frame.index,
            )
            self._ring.clear()
            return
        limit = self.preroll_frames + self.start_window
        while len(self._ring) > limit:
            self.stats.silence += len(self._ring.popleft().pcm)

    def _collect(self, frame: _Frame) -> Utterance | None:
        speech = self._speech
        assert speech is not None
        speech.frames.append(frame)
        if frame.voiced and self._takes_back_pause(speech, frame):
            speech.last_voiced_index = frame.index
            speech.unvoiced_run = 0
        else:
            speech.unvoiced_run += 1
        if speech.unvoiced_run >= self.hangover_frames:
            return self._finish(cut=False)
        if frame.index - speech.speech_start_index + 1 >= self.max_frames:
            return self._finish(cut=True)
        return None

    def _takes_back_pause(self, speech: _Speech, frame: _Frame) -> bool:
        """Whether a voiced frame ends the pause: early in it, any does; once the pause has
        lasted `settle_ms` (long enough for the end-of-turn model to have been asked), only a
        frame `floor_resume_margin_db` over the room's floor, as the caller at the handset
        speaks. The room's own peaks clear the floor's margin in runs, and they kept a
        talking room's pause from ever reaching the silence limit."""
        settled = speech.unvoiced_run >= self.settle_frames
        return not settled or frame.over_floor_db >= self.floor_resume_margin_db

    def _finish(self, cut: bool) -> Utterance | None:
        """Close the utterance in progress: emit it, or drop it as a blip."""
        speech = self._speech
        assert speech is not None
        self._speech = None
        if not speech.frames:
            return None
        detected_index = speech.frames[-1].index + 1
        if cut:
            last = speech.frames[-1].index
            end_index = last + 1
        else:
            end_index = speech.last_voiced_index + 1
            last = min(speech.frames[-1].index, speech.last_voiced_index + self.tail_frames)
        kept = [f for f in speech.frames if f.index <= last]
        rest = len(speech.frames) - len(kept)
        rest_samples = rest * self.frame_samples
        if not kept or end_index - speech.speech_start_index < self.min_frames:
            self.stats.blips += sum(len(f.pcm) for f in kept)
            self.stats.silence += rest_samples
            self.stats.dropped_blips += 1
            self._blip = np.concatenate([f.pcm for f in kept]) if kept else None
            log.debug(
                "vad_blip_dropped",
                speech_ms=(end_index - speech.speech_start_index) * self.frame_ms,
            )
            return None
        pcm = np.concatenate([f.pcm for f in kept])
        self.stats.in_utterances += len(pcm)
        self.stats.silence += rest_samples
        self.stats.utterances += 1
        self.stats.cuts += cut
        utterance = Utterance(
            pcm=pcm,
            sample_rate=self.sample_rate,
            start_s=self._time(kept[0].index),
            speech_start_s=self._time(speech.speech_start_index),
            end_s=self._time(end_index),
            detected_s=self._time(detected_index),
            cut=cut,
            detected_monotonic=time.monotonic(),
        )
        if cut:
            # keep listening without a gap: the caller is still talking
            self._speech = _Speech(
                speech_start_index=detected_index, last_voiced_index=detected_index - 1
            )
        log.debug(
            "vad_utterance",
            speech_ms=round(utterance.speech_s * 1000.0, 1),
            audio_ms=round(utterance.duration_s * 1000.0, 1),
            cut=cut,
        )
        return utterance

    def _discard_all_to(self, bucket: str) -> None:
        dropped = sum(len(f.pcm) for f in self._ring)
        if self._speech is not None:
            dropped += sum(len(f.pcm) for f in self._speech.frames)
        self._ring.clear()
        self._speech = None
        self._blip = None
        setattr(self.stats, bucket, getattr(self.stats, bucket) + dropped)

    def _update_pending(self) -> None:
        pending = len(self._partial) + sum(len(f.pcm) for f in self._ring)
        if self._speech is not None:
            pending += sum(len(f.pcm) for f in self._speech.frames)
        self.stats.pending = pending


async def utterances(
    frames: AsyncIterator[Pcm], endpointer: VadEndpointer, flush: bool = True
) -> AsyncIterator[Utterance]:
    """Utterances from a stream of mic frames; cancelling it loses nothing already yielded.

    With `flush`, an utterance still open when the stream ends is finished and yielded.
    """
    async for chunk in frames:
        for utterance in endpointer.feed(chunk):
            yield utterance
    if flush:
        for utterance in endpointer.flush():
            yield utterance
