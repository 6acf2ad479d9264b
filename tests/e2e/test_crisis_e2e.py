"""A caller in crisis, spoken: Piper says a crisis line and an emergency line, the real Whisper
hears them inside a simulated call, and in every persona the phone answers with its help line
(the right number, spoken digit by digit), never with the model, and the exchange is in the
call's history. One set of real models for the whole call. (The model going on with that history
is checked with scripted stages in tests/unit/test_crisis.py.)"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from payphone.call.crisis import DIGIT_WORDS, HelpLine, help_line, normalise, render_help
from payphone.call.options import CallOptions, first_persona
from payphone.config import load_settings
from payphone.personas.loader import load_personas
from payphone.sim.recording import build_report
from payphone.sim.runner import run_script
from payphone.sim.script import load_script
from payphone.stages import load_stages
from tests.speech_fixtures import SAMPLE_RATE, piper

pytestmark = [pytest.mark.models, pytest.mark.slow]

CALLER = {
    "crisis": "I feel so alone. I want to kill myself.",
    "emergency": "Help! My friend is not breathing.",
}
NUMBERS = {"crisis": "988", "emergency": "911"}
WORD_DIGITS = {word: str(digit) for digit, word in enumerate(DIGIT_WORDS)}


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.astype(np.int16).tobytes())


def digits_heard(text: str) -> str:
    """The digits in what Whisper heard, whether it wrote "988" or "nine eight eight"."""
    words = [WORD_DIGITS.get(word, word) for word in normalise(text).split()]
    return "".join(word for word in words if word.isdigit())


async def test_every_persona_answers_spoken_crisis_and_emergency_lines_with_the_help_line(
    tmp_path: Path,
) -> None:
    settings = load_settings()
    book = load_personas()
    for name, text in CALLER.items():
        write_wav(tmp_path / f"{name}.wav", piper(settings, text))
    keys = [persona.key for persona in book]
    steps = ["- offhook", "- wait: 0.3"]
    for key in keys:
        steps += [f"- press: '{key}'", "- wait_reply"]
        steps += ["- say: crisis.wav", "- wait_reply", "- say: emergency.wav", "- wait_reply"]
    steps += ["- onhook"]
    script = tmp_path / "call.yaml"
    script.write_text("\n".join(steps) + "\n", encoding="utf-8")

    stages = await load_stages(settings, first_persona(book, settings.call), list(book))
    try:
        result = await run_script(
            load_script(script),
            stages.for_phone(settings.vad, settings.turn),
            CallOptions.from_settings(settings),
            personas=book,
            fast=True,
            sink_speed=20.0,
        )
        turns = build_report(result.calls)["turns"]
        [call] = result.rig.calls
        expected = [(p.id, kind) for p in book for kind in ("crisis", "emergency")]
        assert [(t["persona"], t["help_line"]) for t in turns] == expected
        for turn, persona in zip(turns, [p for p in book for _ in (0, 1)], strict=True):
            kind = turn["help_line"]
            line = help_line(kind, persona, settings.help).text
            assert turn["reply"] == line, turn  # the fixed line, word for word
            assert ("nine eight eight" in line) == (kind == "crisis")
            assert "nine one one" in line
            assert turn["latency_ms"]["first_token"] is None  # the model wrote nothing
            assert turn["latency_ms"]["first_audio"] is not None
            assert not turn["fallback"] and not turn["interrupted"]
            # the earpiece says the kind's number as digits: Whisper hears it back from the
            # sentence that carries it, in the persona's voice (on the whole 15 s line Whisper
            # once stopped after "Pause all programs."; the other number is checked above).
            # Help lines are steady (no Piper noise), so this is the sentence every caller hears
            # (with the noise on, Whisper heard "98" in 3 of 250 COMP-U-TRON renders)
            carrier = next(s for s in line.split(". ") if s.startswith("The number is"))
            said = HelpLine(kind, carrier.rstrip(".") + ".")
            pcm = await render_help(call.deps.lines, persona, said)
            rate = stages.synthesizer.sample_rate
            at_16k = soxr.resample(pcm.astype(np.float32), rate, SAMPLE_RATE).astype(np.int16)
            heard = (await stages.transcriber.transcribe(at_16k)).text
            assert NUMBERS[kind] in digits_heard(heard), (persona.id, heard)

        # the last persona's history: what the caller said, and the help line as its reply
        history = [(m["role"], m["content"]) for m in call.conversation.turns]
        assert [role for role, _ in history] == ["user", "assistant"] * 2
        assert history[1][1] == turns[-2]["reply"] and history[3][1] == turns[-1]["reply"]
        assert "kill myself" in history[0][1].lower()
        assert "breathing" in history[2][1].lower()
    finally:
        await stages.aclose()
