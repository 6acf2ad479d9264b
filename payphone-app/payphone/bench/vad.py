"""`bench vad`: how fast the end-pointer runs, and how exactly it finds the end of speech.

Why: the hangover is the one deliberate delay in a turn, so end-of-speech detection should
land at the true end plus the hangover, within a frame; and the VAD runs on the event loop,
so it must be far faster than real time.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from payphone.bench.stt import QUESTIONS, SAMPLE_RATE, speak_espeak, speak_piper
from payphone.config import Settings
from payphone.pcm import Pcm
from payphone.speech.vad import Utterance, VadEndpointer


def _speech_bounds(speech: Pcm, threshold: float = 0.02) -> tuple[int, int]:
    """First and one-past-last sample above `threshold` of the peak: where speech truly is."""
    loud = np.abs(speech.astype(np.float64)) > threshold * float(np.max(np.abs(speech)))
    return int(np.argmax(loud)), len(loud) - int(np.argmax(loud[::-1]))


def _noisy(pcm: Pcm, snr_db: float, rms_of: Pcm, seed: int) -> Pcm:
    rms = float(np.sqrt(np.mean(np.square(rms_of.astype(np.float64)))))
    noise = np.random.default_rng(seed).standard_normal(len(pcm)) * rms * 10 ** (-snr_db / 20)
    return np.clip(pcm + noise, -32768, 32767).astype(np.int16)


def _feed(vad: VadEndpointer, pcm: Pcm, chunk: int) -> list[Utterance]:
    out: list[Utterance] = []
    for i in range(0, len(pcm), chunk):
        out += vad.feed(pcm[i : i + chunk])
    return out + vad.flush()


def main(settings: Settings, trials: int = 3, snr_db: float = 30.0) -> dict[str, Any]:
    """Print end-of-speech error and throughput (best of `trials` passes); return the figures."""
    vs = settings.vad
    hangover_s = VadEndpointer(vs).hangover_frames * vs.frame_ms / 1000.0
    chunk = SAMPLE_RATE * 20 // 1000  # what a 20 ms audio buffer delivers

    speeches: list[tuple[str, Pcm]] = []
    for i, text in enumerate(QUESTIONS):
        if i % 2 == 0:
            speeches.append((f"piper: {text}", speak_piper(settings, text, deterministic=True)))
        else:
            speeches.append((f"espeak: {text}", speak_espeak(text)))

    end_errors_ms: list[float] = []
    detect_errors_ms: list[float] = []
    counts: list[int] = []
    gap = np.zeros(SAMPLE_RATE, dtype=np.int16)
    print(f"end of speech, {len(speeches)} questions, white noise {snr_db:g} dB below speech:")
    for n, (_, speech) in enumerate(speeches):
        audio = np.concatenate([gap, speech, gap, gap])
        noisy = _noisy(audio, snr_db, speech, seed=n)
        found = _feed(VadEndpointer(vs), noisy, chunk)
        counts.append(len(found))
        if len(found) != 1:
            continue
        true_end = (len(gap) + _speech_bounds(speech)[1]) / SAMPLE_RATE
        end_errors_ms.append((found[0].end_s - true_end) * 1000.0)
        detect_errors_ms.append((found[0].detected_s - true_end - hangover_s) * 1000.0)
    one_each = sum(c == 1 for c in counts)
    frame_ms = vs.frame_ms
    within = sum(abs(e) <= frame_ms for e in detect_errors_ms)
    print(f"  exactly one utterance found in {one_each}/{len(counts)} clips")
    print(
        f"  end_s - true end:                 median {statistics.median(end_errors_ms):+7.1f} ms"
        f"   min {min(end_errors_ms):+7.1f}   max {max(end_errors_ms):+7.1f}"
    )
    print(
        f"  detected - (true end + {hangover_s * 1000:.0f} ms):  median "
        f"{statistics.median(detect_errors_ms):+7.1f} ms   within one frame ({frame_ms} ms): "
        f"{within}/{len(detect_errors_ms)}"
    )

    long_audio = np.concatenate([np.concatenate([gap, s]) for _, s in speeches] * 3)
    long_audio = _noisy(long_audio, snr_db, long_audio, seed=99)
    passes = []
    for _ in range(max(1, trials)):
        vad = VadEndpointer(vs)
        started = time.perf_counter()
        _feed(vad, long_audio, chunk)
        passes.append(time.perf_counter() - started)
    elapsed = min(passes)  # the least disturbed pass: other processes share the CPU
    seconds = len(long_audio) / SAMPLE_RATE
    fps = vad.stats.frames / elapsed
    print(
        f"throughput: {vad.stats.frames} frames ({seconds:.0f} s of audio, {frame_ms} ms frames, "
        f"fed in 20 ms chunks) in {elapsed * 1000:.0f} ms: {fps:,.0f} frames/s, "
        f"{seconds / elapsed:,.0f}x real time, {elapsed / vad.stats.frames * 1e6:.1f} us/frame"
    )
    return {
        "vad_frames_per_s": round(fps),
        "vad_realtime_x": round(seconds / elapsed),
        "vad_us_per_frame": round(elapsed / vad.stats.frames * 1e6, 1),
        "vad_end_error_ms_median": round(statistics.median(end_errors_ms), 1),
        "vad_detect_minus_hangover_ms_median": round(statistics.median(detect_errors_ms), 1),
        "vad_detect_within_one_frame": f"{within}/{len(detect_errors_ms)}",
        "vad_one_utterance": f"{one_each}/{len(counts)}",
        "hangover_ms": round(hangover_s * 1000),
        "frame_ms": frame_ms,
    }
