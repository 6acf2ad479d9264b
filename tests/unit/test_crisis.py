"""A caller in crisis: the recogniser (both sides, as Whisper writes), the help line's numbers,
the persona and settings checks, and a call where the line replaces the model's reply."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
import structlog

from payphone.call.assembly import PhoneStages
from payphone.call.crisis import (
    HelpKind,
    help_for,
    help_line,
    normalise,
    prerender_help,
    recognise,
    spoken_number,
)
from payphone.call.events import CallState
from payphone.call.lines import LineBook
from payphone.call.options import CallOptions
from payphone.config import HelpSettings, load_settings
from payphone.llm.history import INTERRUPTED_MARKER
from payphone.personas.loader import SHIPPED_DIR, load_personas
from payphone.reply.chunker import ChunkerConfig
from payphone.settings_errors import SettingsError
from payphone.sim.rig import Rig, build_rig
from payphone.sim.stand_ins import (
    EnergyEndpointer,
    ScriptedBackend,
    ScriptedTranscriber,
    ToneSynthesizer,
)
from tests.helpers import run_module
from tests.unit.test_call_core import PATIENT, on_the_line
from tests.unit.test_call_loop import running, speak, switch_off

CRISIS_LINES = [
    "I want to kill myself.",
    "I'm going to kill myself tonight.",
    "i want to kill my self",
    "I'm going to end it all.",
    "I just want to end it all",
    "I'm thinking of ending my life.",
    "I don't want to live anymore.",
    "I don't wanna live any more.",
    "I don't want to love anymore.",  # as Whisper tiny.en heard "I don't want to live anymore."
    "I do not want to be alive.",
    "I don't want to wake up tomorrow.",
    "I don't want to be here anymore.",
    "I've been thinking about hurting myself.",
    "I keep cutting myself.",
    "I want to hurt myself.",
    "I've been self-harming again.",
    "I'm having suicidal thoughts.",
    "I've been thinking about suicide.",
    "I want to die.",
    "Everyone would be better off without me.",
    "I'd be better off dead.",
    "I wish I was dead.",
    "I wish I had never been born.",
    "There's no reason to live.",
    "I have nothing left to live for.",
    "My life is not worth living.",
    "I can't go on anymore.",
    "I'm tired of living.",
    "I'm going to take my own life.",
    "I'm going to hang myself.",
    "I'm thinking about jumping off a bridge.",
    "I WANT TO KILL MYSELF",
    "I want to... kill myself.",
    "I’m going to end it all.",  # a typographic apostrophe
]

EMERGENCY_LINES = [
    "Someone is having a heart attack!",
    "My dad is having a heart attack.",
    "My friend isn't breathing.",
    "He's not breathing!",
    "She stopped breathing.",
    "I can't breathe.",
    "There's a fire!",
    "There is a fire in my kitchen.",
    "My house is on fire.",
    "The building is burning down.",
    "I smell gas in the apartment.",
    "Someone has a gun.",
    "There's a man with a gun, he has a gun!",
    "He's pointing a gun at me.",
    "Somebody's got a knife.",
    "Someone is going to hurt me.",
    "He's going to hurt me.",
    "Someone is trying to kill me.",
    "She said she would kill me.",
    "My husband is hitting me.",
    "Someone is breaking into my house.",
    "There's someone in my house.",
    "I've been stabbed.",
    "I just got shot.",
    "I'm being attacked.",
    "There's a shooting at the mall.",
    "I took too many pills.",
    "I swallowed a bottle of sleeping pills.",
    "I swallow the bottle of sleeping pills.",  # as Whisper tiny.en heard the line above
    "He's not breeding.",  # as Whisper tiny.en heard "He's not breathing!"
    "I think I overdosed.",
    "My son drank bleach.",
    "My grandpa is unconscious.",
    "My wife won't wake up.",
    "He's having a seizure.",
    "She's choking!",
    "He's bleeding a lot.",
    "Call an ambulance!",
    "Please call 911.",
    "My friend was hit by a car.",
    "I'm going to kill someone.",
    "This is an emergency.",
]

ORDINARY_LINES = [
    "I'm dying to know.",
    "That joke killed me.",
    "What a killer deal.",
    "My phone died.",
    "My battery is dead.",
    "The detective solved a murder case in the movie.",
    "In the movie, a man has a gun.",
    "I watched a show where someone got shot.",
    "My mom is going to kill me.",
    "My boss is going to kill me if I'm late.",
    "I nearly killed myself laughing.",
    "These shoes are killing me.",
    "The heat is killing me.",
    "You're killing me, Grandma.",
    "I cut myself shaving.",
    "I hurt myself playing football.",
    "I'm cutting myself a slice of pie.",
    "Be careful not to hurt myself on these stairs, I always say.",
    "I don't want to hurt my friend's feelings.",
    "Oh, you almost gave me a heart attack!",
    "I'm on fire today.",
    "This song is fire.",
    "You're fired!",
    "Fire away, detective.",
    "We sat by the fire and told stories.",
    "There's a fire in the fireplace.",
    "Give it a shot.",
    "She shot me a look.",
    "I got shot down by a girl.",
    "Stick to your guns.",
    "Beats me.",
    "My brother beat me at chess.",
    "I'm going to die of boredom.",
    "That cake is to die for.",
    "I don't want to live in this city.",
    "I don't want to wake up early tomorrow.",
    "Have you seen Suicide Squad?",
    "My plants died last winter.",
    "I'm starving, what's for dinner?",
    "I take all my pills every morning.",
    "Break a leg tonight.",
    "I could murder a pizza.",
    "Detective, somebody stole my red bicycle.",
    "What time do you close tonight?",
    "Tell me a long story about your cat, please.",
    "I'm not breathing a word of this to anyone.",
    "I'm not breathing the word of this to anyone.",  # as Whisper tiny.en heard it
    "Let's kill some time.",
    "What a stroke of luck.",
    "My heart skipped a beat.",
    "I'm dead tired.",
]


@pytest.mark.parametrize("line", CRISIS_LINES)
def test_talk_of_suicide_or_self_harm_is_a_crisis(line: str) -> None:
    assert recognise(line) == "crisis"


@pytest.mark.parametrize("line", EMERGENCY_LINES)
def test_danger_to_life_right_now_is_an_emergency(line: str) -> None:
    assert recognise(line) == "emergency"


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_speech_gets_no_help_line(line: str) -> None:
    assert recognise(line) is None


def test_an_emergency_outranks_a_crisis() -> None:
    assert recognise("I want to die, I took too many pills.") == "emergency"


def test_whisper_text_is_normalised() -> None:
    assert normalise("My friend's NOT breathing!!") == "my friend not breathing"
    assert normalise("I can't, he won't, she's gonna") == "i can not he will not she is going to"
    assert normalise("I\u2019m  fine... I'd say") == "i am fine i would say"


def test_numbers_are_spoken_digit_by_digit() -> None:
    assert spoken_number("988") == "nine eight eight"
    assert spoken_number("911") == "nine one one"
    assert spoken_number("000") == "zero zero zero"
    assert spoken_number("116 123") == "one one six, one two three"
    assert spoken_number("13-11-14") == "one three, one one, one four"


def test_every_persona_names_the_numbers_from_the_settings() -> None:
    book = load_personas()
    assert book.errors == []
    uk = HelpSettings(crisis_number="116 123", emergency_number="999")
    for persona in book:
        crisis = help_line("crisis", persona, HelpSettings())
        assert crisis.kind == "crisis" and "nine eight eight" in crisis.text
        emergency = help_line("emergency", persona, HelpSettings())
        assert emergency.kind == "emergency" and "nine one one" in emergency.text
        assert "nine eight eight" not in emergency.text
        for text in (crisis.text, emergency.text):
            assert not any(c.isdigit() for c in text)  # spoken, never "988"
        assert "one one six, one two three" in help_line("crisis", persona, uk).text
        assert "nine nine nine" in help_line("emergency", persona, uk).text
    assert help_for("What a lovely day.", book.operator, HelpSettings()) is None


def test_no_help_sentence_is_longer_than_piper_is_warmed_for() -> None:
    """Piper renders a sentence at a time and its memory arena keeps the longest one for good;
    start-up warms it with the chunker's longest chunk, so no help sentence may be longer."""
    longest = ChunkerConfig().max_words
    for persona in load_personas():
        for kind in get_args(HelpKind):
            text = help_line(
                kind, persona, HelpSettings(crisis_number="116 123", emergency_number="13 11 14")
            ).text
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                assert len(sentence.split()) <= longest, (persona.id, sentence)


def write_persona(tmp_path: Path, help_table: str) -> list[str]:
    text = (SHIPPED_DIR / "operator.toml").read_text(encoding="utf-8")
    text = text[: text.index("\n[help]")] if "\n[help]" in text else text
    (tmp_path / "operator.toml").write_text(text + "\n[help]\n" + help_table, "utf-8")
    return load_personas(tmp_path).errors


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('crisis = "Call 988 now."\n', "no digits"),
        ('crisis = "Call someone you trust."\n', "{crisis_number}"),
        ('emergency = "Dial {crisis_number}."\n', "{emergency_number}"),
        ('crisis = "Call {crisis_number} or {hotline}."\n', "unknown placeholder {hotline}"),
        ('crisis = "Call {crisis_number."\n', "broken placeholder"),
    ],
)
def test_a_persona_help_line_must_take_its_numbers_from_the_settings(
    tmp_path: Path, table: str, message: str
) -> None:
    [error] = write_persona(tmp_path, table)
    assert "operator.toml" in error and "field help." in error and message in error


def test_a_persona_without_help_lines_gets_the_default(tmp_path: Path) -> None:
    assert write_persona(tmp_path, "") == []
    operator = load_personas(tmp_path).operator
    assert "nine eight eight" in help_line("crisis", operator, HelpSettings()).text


def test_help_numbers_default_to_the_us_and_take_other_countries() -> None:
    assert load_settings().help == HelpSettings(crisis_number="988", emergency_number="911")
    toml = Path("p.toml")
    toml.write_text('[help]\ncrisis_number = "116 123"\nemergency_number = "999"\n', "utf-8")
    assert load_settings(toml).help.crisis_number == "116 123"


@pytest.mark.parametrize("value", ["", "9", "nine", "98a", "988 ", "+44 116", "1234567890123456"])
def test_a_bad_help_number_names_the_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PAYPHONE_HELP__CRISIS_NUMBER", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    [line] = info.value.problems
    assert line.startswith("PAYPHONE_HELP__CRISIS_NUMBER")


def test_a_bad_help_number_in_the_config_file_exits_2_without_a_traceback(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('[help]\nemergency_number = "nine-one-one"\n', encoding="utf-8")
    result = run_module("payphone", "--config", str(toml), "config")
    assert result.returncode == 2
    assert "[help] emergency_number" in result.stderr
    assert "Traceback" not in result.stderr


# -- in a call (scripted speech stages, real call loop) ---------------------------------------

UK = HelpSettings(crisis_number="116 123", emergency_number="999")


def help_rig(
    texts: list[str], reply: str = "I am here."
) -> tuple[Rig, ScriptedBackend, ToneSynthesizer]:
    """The scripted rig with the settings' help numbers (not the default ones) on every call."""
    backend = ScriptedBackend(reply=reply)
    synth = ToneSynthesizer()
    stages = PhoneStages(ScriptedTranscriber(deque(texts)), backend, synth, EnergyEndpointer)
    return build_rig(stages, CallOptions(PATIENT, help=UK), sink_speed=4.0), backend, synth


async def test_help_lines_are_rendered_steady_at_start_up_and_played_from_the_cache() -> None:
    synth = ToneSynthesizer(delay_s=0.0)
    lines, book = LineBook(synth), list(load_personas())
    assert await prerender_help(lines, book, UK) == 2 * len(book)
    assert all(voice.steady for voice in synth.voices)
    rendered = len(synth.spoken)
    for persona in book:
        await lines.render(persona, help_line("crisis", persona, UK).text, steady=True)
    assert len(synth.spoken) == rendered


async def test_a_crisis_turn_speaks_the_help_line_and_the_model_goes_on_with_it() -> None:
    texts = ["I don't want to live anymore.", "Thank you for listening."]
    rig, backend, synth = help_rig(texts)
    task = await on_the_line(rig)
    merge = [structlog.contextvars.merge_contextvars]
    with structlog.testing.capture_logs(processors=merge) as logs:
        await speak(rig)
        await rig.wait_state(CallState.SPEAKING)
        await rig.wait_state(CallState.LISTENING, timeout=10)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.help_line == "crisis"
    assert turn.reply == help_line("crisis", call.persona, UK).text
    assert "one one six, one two three" in turn.reply  # the numbers the settings gave the call
    assert turn.reply in synth.spoken  # in the persona's voice, through the synthesizer
    voice = synth.voices[synth.spoken.index(turn.reply)]
    assert voice == replace(call.persona.voice_spec, steady=True)  # the rendering tests hear
    assert backend.requests == []  # the model was not asked
    assert turn.as_report()["help_line"] == "crisis"
    assert turn.latency_ms.get("first_audio") is not None
    assert "first_token" not in turn.latency_ms
    [given] = [e for e in logs if e["event"] == "help_line_given"]
    assert given["kind"] == "crisis" and given["persona"] == "operator"
    assert given["call_id"] == call.call_id
    assert not any("live anymore" in str(value) for e in logs for value in e.values())

    await speak(rig)  # the call stays on the line: the next words go to the model, with context
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    [messages] = backend.requests
    turns = messages[len(call.conversation.prefix()) :]  # after the prompt and its examples
    assert [m["content"] for m in turns] == [texts[0], turn.reply, texts[1]]
    assert call.log.turns[1].help_line is None and call.log.turns[1].reply == "I am here."
    await switch_off(rig, task)


async def test_an_emergency_in_another_persona_gets_its_own_words_and_the_emergency_number() -> (
    None
):
    rig, backend, synth = help_rig(["My friend isn't breathing!"])
    task = await on_the_line(rig)
    rig.keypad.press("2")
    await rig.wait_state(CallState.GREETING)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert (turn.persona, turn.help_line) == ("grandma_mae", "emergency")
    assert turn.reply == help_line("emergency", call.persona, UK).text
    assert "nine nine nine" in turn.reply and "sweetie" in turn.reply
    assert turn.reply in synth.spoken and backend.requests == []
    await switch_off(rig, task)


async def test_a_help_line_cut_off_is_kept_as_heard_and_interrupted() -> None:
    rig, backend, _ = help_rig(["I want to kill myself."])
    task = await on_the_line(rig)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING)
    rig.keypad.press("#")
    await rig.wait_state(CallState.LISTENING, timeout=5)
    await asyncio.sleep(0.05)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.help_line == "crisis" and turn.interrupted
    assert call.conversation.turns[-1]["content"].endswith(INTERRUPTED_MARKER)
    assert turn.reply in call.conversation.turns[-1]["content"]
    assert backend.requests == []
    await switch_off(rig, task)


async def test_a_caller_in_crisis_before_the_greeting_is_answered_with_the_help_line() -> None:
    """The first words, said over the dial tone, would only bring the greeting."""
    rig, backend, _ = help_rig(["I want to kill myself."])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    await speak(rig)
    await rig.wait_state(CallState.SPEAKING, timeout=10)  # the help line takes over
    await rig.wait_state(CallState.LISTENING, timeout=10)
    call = rig.calls[0]
    [turn] = call.log.turns
    assert turn.help_line == "crisis"
    assert backend.requests == []
    assert any(e["event"] == "help_needed_before_greeting" for e in call.log.events)
    await switch_off(rig, task)


async def test_ordinary_first_words_only_bring_the_greeting() -> None:
    rig, backend, _ = help_rig(["Hello? Is this thing on?"])
    task = await running(rig)
    rig.lift()
    await rig.wait_state(CallState.DIAL_TONE)
    await speak(rig)
    await rig.wait_state(CallState.GREETING, timeout=10)
    await rig.wait_state(CallState.LISTENING, timeout=10)
    assert rig.calls[0].log.turns == [] and backend.requests == []
    await switch_off(rig, task)
