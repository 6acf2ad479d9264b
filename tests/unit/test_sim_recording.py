"""What the simulated phone records and hears: a faithful call.wav, and the handset's echo."""

from __future__ import annotations

import asyncio
import wave
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from payphone.call.assembly import PhoneStages
from payphone.call.events import CallState
from payphone.call.options import CallOptions
from payphone.call.phone import Phone
from payphone.config import CallSettings
from payphone.hardware.base import HookState
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.gaps import recording_dropouts, reply_gaps
from payphone.sim.recording import build_report, write_call_wav
from payphone.sim.rig import Rig, build_rig
from payphone.sim.runner import SimResult, run_script
from payphone.sim.script import Step
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
    speech_burst,
)
from payphone.speech.base import Synthesizer, VoiceSpec

QUICK = CallSettings(dial_tone_s=0.2, idle_prompt_s=60, filler_after_s=10)
MIC = 16000


class NoiseSynthesizer(Synthesizer):
    """A persona voice with no period (unlike a tone), so a cross-correlation has one peak."""

    def __init__(self, sample_rate: int = 22050) -> None:
        self.sample_rate = sample_rate
        self._rng = np.random.default_rng(5)

    async def synthesize(self, text: str, voice: VoiceSpec) -> AsyncIterator[Pcm]:
        samples = int(max(1, len(text.split())) * 0.06 * self.sample_rate)
        yield (self._rng.standard_normal(samples) * 3000).astype(np.int16)


def write_mono(path: Path, pcm: Pcm) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC)
        out.writeframes(pcm.tobytes())


async def hello_call(tmp_path: Path, after_offhook: Step, reply: str) -> SimResult:
    """A call that says "hello" once (after `after_offhook`) to scripted stages replying
    `reply`, and hangs up once the reply is over."""
    write_mono(tmp_path / "hello.wav", speech_burst(0.6))
    steps = [
        Step("offhook", 1),
        after_offhook,
        Step("say", 3, path=tmp_path / "hello.wav"),
        Step("wait_reply", 4, seconds=10),
        Step("onhook", 5),
    ]
    stages = PhoneStages(
        ScriptedTranscriber(deque(["hello"])),
        ScriptedBackend(reply=reply),
        ToneSynthesizer(),
        EnergyEndpointer,
    )
    return await run_script(steps, stages, CallOptions(QUICK), personas=load_personas())


async def test_a_scripted_calls_recording_has_no_dropouts_and_true_reply_gaps(
    tmp_path: Path,
) -> None:
    result = await hello_call(
        tmp_path,
        Step("wait", 2, seconds=0.4),
        "Well hello there. What can I do for you tonight, my friend?",
    )
    path = tmp_path / "call.wav"
    write_call_wav(path, result.rig.sink, result.tape)
    assert len(result.calls[0].turns) == 1
    assert recording_dropouts(path) == []
    assert result.rig.sink.underruns == []
    report = build_report(result.calls, result.rig.sink.underruns)
    assert [turn["underruns"] for turn in report["turns"]] == [0]
    # the reply sits where it was heard, relative to the caller's words
    said_at, said = next((at, pcm) for at, pcm in result.tape.pieces if len(pcm) > MIC // 2)
    said_end = said_at + len(said) / MIC
    reply_at = next(b.at for b in result.rig.sink.heard if b.at > said_end)
    gaps = reply_gaps(path)
    assert len(gaps) == 1
    assert abs(gaps[0] - (reply_at - said_end)) <= 0.021  # 10 ms windows at both ends


async def test_a_phone_slow_to_make_the_call_still_gets_the_script_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine the hook read off-hook before the phone had made the call, the
    next `wait_reply` found no call and returned, and the whole script ran before the greeting
    (CI: a call with no turns). The runner waits for the call itself."""
    real_start = Phone.start_call

    def late_start(phone: Phone) -> None:  # the phone gets to it 0.3 s after the hook moved
        asyncio.get_running_loop().call_later(0.3, real_start, phone)

    monkeypatch.setattr(Phone, "start_call", late_start)
    result = await hello_call(tmp_path, Step("wait_reply", 2, seconds=10), "Well hello there.")
    assert [turn.heard for turn in result.calls[0].turns] == ["hello"]


async def test_underruns_are_counted_in_the_turn_they_happened_in(tmp_path: Path) -> None:
    stages = PhoneStages(
        ScriptedTranscriber(deque(["hello"])),
        ScriptedBackend(  # the model stalls after the first sentence: the earpiece runs dry
            reply="Well hello there, this is the operator speaking. How can I help?",
            stall_s=1.0,
            fail_after_tokens=9,
        ),
        ToneSynthesizer(),
        EnergyEndpointer,
    )
    rig = build_rig(stages, CallOptions(QUICK))
    task = await rig.start()
    rig.lift()
    await rig.wait_state(CallState.LISTENING)
    rig.mic.push(speech_burst(0.5))
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rig.sink.aclose()
    rig.hook.close()
    report = build_report([call.log for call in rig.calls], rig.sink.underruns)
    assert len(rig.sink.underruns) == 1  # the first sentence played out before the next came
    assert [turn["underruns"] for turn in report["turns"]] == [len(rig.sink.underruns)]
    assert {u["call_id"] for u in report["underruns"]} == {rig.calls[0].call_id}


async def persona_greets(echo: HandsetEcho | None) -> Rig:
    stages = PhoneStages(
        ScriptedTranscriber(deque()), ScriptedBackend(), NoiseSynthesizer(), EnergyEndpointer
    )
    rig = build_rig(stages, CallOptions(QUICK), echo=echo, keep_mic=True)
    task = await rig.start()
    rig.lift()
    await rig.wait_state(CallState.GREETING)
    await rig.wait_state(CallState.LISTENING)
    await asyncio.sleep(0.2)
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rig.sink.aclose()
    rig.hook.close()
    return rig


def earpiece_at_mic_clock(rig: Rig, length: int) -> np.ndarray:
    """What the earpiece played, resampled to 16 kHz, sample m at the mic's sample m."""
    sink = rig.sink
    track = np.zeros(max(b.end for b in sink.heard), dtype=np.float32)
    for buffer in sink.heard:
        track[buffer.sample : buffer.end] = buffer.pcm
    at_mic_rate = soxr.resample(track, sink.sample_rate, MIC)
    assert rig.handset.epoch is not None
    shift = round((rig.handset.epoch - sink.epoch) * MIC)
    return np.asarray(at_mic_rate[shift : shift + length], dtype=np.float64)


def delay_of(heard: np.ndarray, played: np.ndarray, max_lag: int) -> int:
    """How much later `played` shows up in `heard`: GCC-PHAT, so the dial tone's period does not
    outvote the voice."""
    size = 2 * len(heard)
    cross = np.fft.rfft(heard, size) * np.conj(np.fft.rfft(played, size))
    return int(np.argmax(np.fft.irfft(cross / np.maximum(np.abs(cross), 1e-9))[:max_lag]))


async def test_with_an_echo_the_mic_hears_the_persona_the_configured_delay_later() -> None:
    rig = await persona_greets(HandsetEcho(-10, 20))
    heard = np.concatenate(rig.handset.delivered).astype(np.float64)
    earpiece = earpiece_at_mic_clock(rig, len(heard) - 1000)
    lag = delay_of(heard, earpiece, 800)
    assert 320 <= lag <= 328  # 20 ms at 16 kHz, plus the handset filter's fraction of a ms
    # over the greeting (the last 200 ms the earpiece played: noise, not the dial tone)
    assert rig.handset.epoch is not None
    first = round((rig.sink.heard[-10].at - rig.handset.epoch) * MIC)
    voice = earpiece[first : first + 3200]
    echo = heard[first + lag : first + lag + 3200]
    correlation = np.dot(echo, voice) / np.sqrt(np.dot(echo, echo) * np.dot(voice, voice))
    assert correlation > 0.4  # the same sound, band-limited to the telephone band
    level_db = 10 * np.log10(np.dot(echo, echo) / np.dot(voice, voice))
    assert -16 < level_db < -12  # -10 dB, less what white noise loses outside 300-3400 Hz


async def test_without_an_echo_the_mic_hears_nothing_of_the_persona() -> None:
    rig = await persona_greets(None)
    heard = np.concatenate(rig.handset.delivered)
    assert np.abs(rig.sink.heard_pcm()).max() > 1000  # the persona did speak
    assert not heard.any()


def test_the_summary_table_shortens_a_long_reply_at_a_word_with_an_ellipsis() -> None:
    from rich.console import Console

    from payphone.sim.simulate import TABLE_REPLY_CHARS, print_summary

    long_reply = "You've got a story there, kid. " * 8
    turn = {
        "persona": "detective_jones",
        "heard": "Somebody stole my bicycle.",
        "reply": long_reply,
        "fallback": False,
        "interrupted": False,
        "latency_ms": {"first_audio": 580.0},
    }
    console = Console(record=True, width=400)
    print_summary({"turns": [turn], "events": []}, console)
    row = next(line for line in console.export_text().splitlines() if "kid" in line)
    shown = row.split("│")[4].strip()
    assert shown.endswith("…") and len(shown) <= TABLE_REPLY_CHARS
    assert long_reply.startswith(shown[:-1]) and not long_reply[len(shown) - 1].isalpha()
