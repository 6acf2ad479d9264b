"""Caller lines as the phone really hears them: Piper speaks, the line colours, Whisper writes.

At run time the persona model never reads what a caller typed: it reads faster-whisper's
transcript of a voice on a narrow-band handset, cased and punctuated in Whisper's way and with
Whisper's own mistakes. `python -m training hear` takes every authored caller line, speaks it
in four caller voices (Piper's packaged demo voice at several speeds and pitches, one with the
elderly quaver, one on a narrow, overdriven, hissing line), puts it through the telephone band
(300-3400 Hz, the phone's own filter from `payphone.speech.effects`) with a little line hiss,
and transcribes it with the phone's Whisper and STT settings (`WhisperTranscriber`: the same
model, window and noise rules).

The result is a committed, reviewable file (`training/data/heard/callers.jsonl`, one caller
line per JSON line, sorted) that `training.augment` uses for the caller turns. The work is
incremental: a (line, voice) pair already in the file is not redone, so a run after new data
only speaks the new lines. Piper's own noise is off and the hiss is seeded from the line, so
the same models give the same file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from payphone.config import Settings
from payphone.log import get_logger
from payphone.pcm import Pcm
from training.dataset import DATA_DIR, Conversation, content_problems

log = get_logger(__name__)

HEARD_FILE = DATA_DIR / "heard" / "callers.jsonl"
MIC_RATE = 16000
LEAD_S, TRAIL_S = 0.25, 0.35  # silence the VAD keeps around an utterance


@dataclass(frozen=True)
class CallerVoice:
    """One way a caller sounds: Piper's speed, a pitch shift, a voice effect, line hiss."""

    name: str
    length_scale: float = 1.0
    pitch_semitones: float = 0.0
    effect: str = "none"
    snr_db: float = 30.0

    def params(self) -> dict[str, Any]:
        """What the heard file records next to each transcript (and compares to redo)."""
        return {k: v for k, v in asdict(self).items() if k != "name"}


# Four callers: a plain one, a quick low one, a slow high trembling one, one on a bad line.
VOICES: tuple[CallerVoice, ...] = (
    CallerVoice("plain", length_scale=1.0, snr_db=30.0),
    CallerVoice("quick-low", length_scale=0.85, pitch_semitones=-2.0, snr_db=20.0),
    CallerVoice("slow-high", length_scale=1.2, pitch_semitones=3.0, effect="elderly", snr_db=25.0),
    CallerVoice("bad-line", length_scale=1.05, pitch_semitones=-1.0, effect="noir", snr_db=15.0),
)


@dataclass(frozen=True)
class Heard:
    """What Whisper wrote for one caller line in one voice ("" when it heard no speech)."""

    voice: str
    text: str
    params: Mapping[str, Any]

    def to_record(self) -> dict[str, Any]:
        return {"voice": self.voice, **self.params, "text": self.text}


HeardBook = dict[str, dict[str, Heard]]  # caller line -> voice name -> what was heard


def caller_lines(conversations: Iterable[Conversation]) -> list[str]:
    """Every distinct authored caller turn, in order of first appearance."""
    lines = (m["content"] for c in conversations for m in c.messages if m["role"] == "user")
    return list(dict.fromkeys(lines))


def read_heard(path: Path = HEARD_FILE) -> HeardBook:
    """The heard file as line -> voice -> `Heard`; a missing file is an empty book."""
    book: HeardBook = {}
    if not path.exists():
        return book
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            if raw.strip():
                record = json.loads(raw)
                book[record["line"]] = {
                    h["voice"]: Heard(
                        h["voice"],
                        h["text"],
                        {k: v for k, v in h.items() if k not in ("voice", "text")},
                    )
                    for h in record["heard"]
                }
    return book


def write_heard(book: HeardBook, path: Path = HEARD_FILE) -> None:
    """Sorted by line, voices in `VOICES` order; atomic (a temp file renamed over)."""
    order = {v.name: i for i, v in enumerate(VOICES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for line in sorted(book):
            heard = sorted(book[line].values(), key=lambda h: (order.get(h.voice, 99), h.voice))
            record = {"line": line, "heard": [h.to_record() for h in heard]}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def heard_variants(path: Path = HEARD_FILE) -> dict[str, tuple[str, ...]]:
    """Caller line -> the distinct transcripts usable as training text: not empty (the phone
    would not answer those) and free of the data rules' invented numbers or addresses."""
    usable: dict[str, tuple[str, ...]] = {}
    for line, voices in read_heard(path).items():
        texts = [
            h.text.strip()
            for h in voices.values()
            if h.text.strip() and not content_problems(h.text)
        ]
        if texts:
            usable[line] = tuple(dict.fromkeys(texts))
    return usable


def todo(
    lines: Sequence[str], book: HeardBook, voices: Sequence[CallerVoice]
) -> list[tuple[str, CallerVoice]]:
    """The (line, voice) pairs not yet heard with these exact voice settings."""
    return [
        (line, voice)
        for line in lines
        for voice in voices
        if (done := book.get(line, {}).get(voice.name)) is None
        or dict(done.params) != voice.params()
    ]


def _seed(line: str, voice: CallerVoice) -> int:
    """A stable seed per (line, voice), independent of order and of the rest of the data."""
    return int.from_bytes(hashlib.sha256(f"{voice.name}\n{line}".encode()).digest()[:8], "big")


class CallerSpeech:
    """Piper, the telephone band and the line hiss: a caller line as the phone's mic gets it."""

    def __init__(self, settings: Settings) -> None:
        from payphone.models import resolve_voice
        from payphone.speech.tts import load_voice

        self._voice = load_voice(resolve_voice(settings, download=False))
        self._rate = int(self._voice.config.sample_rate)
        self._target_dbfs = settings.tts.target_dbfs

    def speak(self, line: str, voice: CallerVoice) -> Pcm:
        """16 kHz int16 with the VAD's silence around it; the same samples every run."""
        from piper import SynthesisConfig

        from payphone.sim.runner import to_mic_rate
        from payphone.speech.effects import Leveler, build_chain, pitch_ratio

        config = SynthesisConfig(
            length_scale=voice.length_scale * pitch_ratio(voice.pitch_semitones),
            noise_scale=0.0,  # Piper's noise is drawn inside ONNX, unseeded: off, for
            noise_w_scale=0.0,  # a file that only changes when the models do
            normalize_audio=False,
        )
        chain = build_chain(voice.effect, self._rate, voice.pitch_semitones, telephone=True)
        leveler = Leveler(self._rate, self._target_dbfs)
        parts = [
            leveler.process(chain.process(np.asarray(s.audio_float_array, dtype=np.float32)))
            for s in self._voice.synthesize(line, config)
        ]
        parts.append(leveler.carry(chain.flush()))
        audio = np.concatenate(parts) * 32767.0
        speech = to_mic_rate(audio, self._rate).astype(np.float64)
        clip = np.concatenate(
            [np.zeros(int(LEAD_S * MIC_RATE)), speech, np.zeros(int(TRAIL_S * MIC_RATE))]
        )
        rms = float(np.sqrt(np.mean(np.square(speech)))) if len(speech) else 0.0
        rng = np.random.default_rng(_seed(line, voice))
        clip += rng.standard_normal(len(clip)) * rms * 10.0 ** (-voice.snr_db / 20.0)
        return np.clip(np.rint(clip), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class HearResult:
    """What one run did: how many (line, voice) pairs were transcribed, in how long."""

    lines: int
    done: int
    reused: int
    dropped: int
    seconds: float
    audio_seconds: float

    @property
    def per_pair_s(self) -> float:
        return self.seconds / self.done if self.done else 0.0


def hear(
    conversations: Sequence[Conversation],
    path: Path = HEARD_FILE,
    settings: Settings | None = None,
    voices: Sequence[CallerVoice] = VOICES,
    progress: Callable[[int], None] | None = None,
    save_every: int = 50,
) -> HearResult:
    """Transcribe every caller line not yet in `path`, in every voice; rewrite `path`.

    Piper speaks the next clip in a worker thread while Whisper transcribes this one, so both
    cores stay busy. The file is saved every `save_every` transcripts, so an interrupted run
    keeps its work. Lines no longer in the data, and voices no longer in `voices`, are dropped.
    """
    started = time.perf_counter()
    lines = caller_lines(conversations)
    book = read_heard(path)
    stale = set(book) - set(lines)
    for line in stale:
        del book[line]
    names = {v.name for v in voices}
    retired = [(line, name) for line, heard in book.items() for name in heard if name not in names]
    for line, name in retired:
        del book[line][name]
    pending = todo(lines, book, voices)
    reused = len(lines) * len(voices) - len(pending)
    audio_s = 0.0
    if pending:
        settings = settings or Settings()
        for count, (line, voice, pcm, text) in enumerate(_transcribed(pending, settings), 1):
            audio_s += len(pcm) / MIC_RATE
            book.setdefault(line, {})[voice.name] = Heard(voice.name, text, voice.params())
            if progress is not None:
                progress(1)
            if count % save_every == 0:
                write_heard(book, path)
    if pending or stale or retired or not path.exists():
        write_heard(book, path)
    result = HearResult(
        len(lines), len(pending), reused, len(stale), time.perf_counter() - started, audio_s
    )
    log.info("heard", **asdict(result), per_pair_s=round(result.per_pair_s, 3))
    return result


def _transcribed(
    pending: Sequence[tuple[str, CallerVoice]], settings: Settings
) -> Iterator[tuple[str, CallerVoice, Pcm, str]]:
    """(line, voice, audio, transcript) for each pair, Piper one clip ahead of Whisper."""
    from payphone.models import resolve_whisper
    from payphone.speech.stt import WhisperTranscriber

    speech = CallerSpeech(settings)
    whisper = WhisperTranscriber(resolve_whisper(settings, download=False), settings.stt)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hear-piper") as pool:
        ahead = collections.deque(pool.submit(speech.speak, *pair) for pair in pending[:2])
        for k, (line, voice) in enumerate(pending):
            pcm = ahead.popleft().result()
            if k + 2 < len(pending):
                ahead.append(pool.submit(speech.speak, *pending[k + 2]))
            yield line, voice, pcm, whisper.transcribe_sync(pcm).text
