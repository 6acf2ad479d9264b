"""The simulated payphone end to end with the real demo models (fast mode)."""

from __future__ import annotations

import json
import re
import wave
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from payphone.call.lines import render_line
from payphone.config import load_settings
from payphone.models import resolve_voice
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.simulate import CALLER_VOICE, simulate
from payphone.speech.tts import PiperSynthesizer

pytestmark = [pytest.mark.models, pytest.mark.slow]


async def say(path: Path, text: str) -> None:
    settings = load_settings()
    voice = PiperSynthesizer(settings.tts, partial(resolve_voice, settings), telephone_filter=False)
    pcm = np.asarray(await render_line(voice, text, CALLER_VOICE), dtype=np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(voice.sample_rate)
        out.writeframes(pcm.tobytes())


def check_schema(report: dict[str, object]) -> None:
    assert set(report) == {
        "model",
        "turns",
        "events",
        "reply_gaps_s",
        "underruns",
        "earpiece_dropouts",
    }
    assert report["model"] == "SmolLM2-135M-Instruct.Q8_0.gguf"  # which model answered
    assert all(0 <= gap < 8 for gap in report["reply_gaps_s"])  # type: ignore[attr-defined]
    assert report["earpiece_dropouts"] == 0  # the recording is as faithful as the earpiece
    for turn in report["turns"]:  # type: ignore[attr-defined]
        assert set(turn) == {
            "persona",
            "heard",
            "reply",
            "fallback",
            "interrupted",
            "help_line",
            "deflected",
            "latency_ms",
            "underruns",
        }
        assert turn["help_line"] in (None, "crisis", "emergency")
        assert isinstance(turn["fallback"], bool) and isinstance(turn["interrupted"], bool)
        assert isinstance(turn["deflected"], bool)
        assert set(turn["latency_ms"]) == {
            "transcript_ready",
            "first_token",
            "first_chunk",
            "first_audio",
            "reply_done",
        }


async def test_a_call_with_a_switch_a_hang_up_mid_reply_and_a_clean_second_call(
    tmp_path: Path,
) -> None:
    await say(tmp_path / "question.wav", "Hello operator, what time do you close tonight?")
    await say(tmp_path / "story.wav", "Tell me a long story about your cat please.")
    await say(tmp_path / "case.wav", "Detective, somebody stole my red bicycle.")
    script = tmp_path / "call.yaml"
    script.write_text(
        "- offhook\n- wait: 0.3\n- press: '0'\n- wait_reply\n- say: question.wav\n- wait_reply\n"
        "- press: '2'\n- wait_reply\n- say: story.wav\n- wait: 2.5\n- onhook\n"
        "- offhook\n- press: '1'\n- wait_reply\n- say: case.wav\n- wait_reply\n- onhook\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    report = await simulate(load_settings(), script, out, fast=True, console=Console(quiet=True))
    assert report == json.loads((out / "report.json").read_text(encoding="utf-8"))
    check_schema(report)
    turns = report["turns"]
    assert [t["persona"] for t in turns] == ["operator", "grandma_mae", "detective_jones"]
    assert "close" in turns[0]["heard"].lower()
    assert "cat" in turns[1]["heard"].lower()
    assert "bicycle" in turns[2]["heard"].lower()
    assert turns[1]["interrupted"]  # the handset went down while Grandma Mae was talking
    for turn in (turns[0], turns[2]):  # the others were answered out loud
        assert turn["reply"].strip()
        assert turn["latency_ms"]["first_audio"] is not None
    calls = {e["call_id"] for e in report["events"]}
    assert len(calls) == 2
    with wave.open(str(out / "call.wav"), "rb") as recording:
        assert recording.getnchannels() == 2
        audio = np.frombuffer(recording.readframes(recording.getnframes()), np.int16)
    earpiece, caller = audio[0::2], audio[1::2]
    assert np.abs(earpiece).max() > 1000 and np.abs(caller).max() > 1000


async def test_noise_only_makes_no_turn(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(16000 * 3) * 300).astype(np.int16)
    with wave.open(str(tmp_path / "noise.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(noise.tobytes())
    script = tmp_path / "noise.yaml"
    script.write_text(
        "- offhook\n- press: '0'\n- wait_reply\n- say: noise.wav\n- wait_reply: 8\n- onhook\n",
        encoding="utf-8",
    )
    report = await simulate(load_settings(), script, tmp_path / "out", True, Console(quiet=True))
    check_schema(report)
    assert report["turns"] == []


async def test_with_the_handsets_echo_and_barge_in_only_the_callers_turns_are_answered(
    tmp_path: Path,
) -> None:
    """The earpiece leaks back into the mic at -10 dB; AEC3 takes it out, so the persona never
    answers (or stops for) its own voice, with barge-in on (the default)."""
    lines = [
        "Hello operator, what time do you close tonight?",
        "Is the bakery on Main Street open too?",
    ]
    await say(tmp_path / "question.wav", lines[0])
    await say(tmp_path / "thanks.wav", lines[1])
    script = tmp_path / "call.yaml"
    script.write_text(
        "- offhook\n- wait_reply\n- say: question.wav\n- wait_reply\n- say: thanks.wav\n"
        "- wait_reply\n- wait: 1.0\n- onhook\n",
        encoding="utf-8",
    )
    assert load_settings().vad.barge_in
    report = await simulate(
        load_settings(),
        script,
        tmp_path / "out",
        fast=True,
        console=Console(quiet=True),
        echo=HandsetEcho(db=-10.0, delay_ms=20.0),
    )
    check_schema(report)
    # a first half held while the caller went on is no turn of its own (it joins the next);
    # every answered turn is one of the caller's two lines
    # On a loaded machine the phone may answer the first half ("Hello operator,") before the
    # caller goes on, and the caller then talks over that answer: both are the caller's doing.
    # What must never happen is a turn made of the persona's own voice coming back.
    # A reply may quote the caller ("the bakery on Main Street"): only a run the caller never
    # said but a reply did can have come back through the earpiece.
    replies = " ".join(_words(t["reply"]) for t in report["turns"])
    said = " ".join(_words(line) for line in lines)
    for turn in report["turns"]:
        words = _words(turn["heard"]).split()
        runs = {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}
        assert not any(run in replies and run not in said for run in runs), turn
    heard = " | ".join(t["heard"].lower() for t in report["turns"] if t["reply"])
    assert "close" in heard and "bakery" in heard, heard  # both caller lines were answered


def _words(text: str) -> str:
    """Lower-case words only, so runs compare across punctuation."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))
