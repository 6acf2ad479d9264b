"""The prompt contract with real models: a GGUF that says it was trained on persona tags gets
tags, in-process and through Ollama, with no setting; a GGUF without the key gets full prompts.

The tagged model is a copy of the packaged SmolLM2 GGUF with `payphone.prompt_style = "tag"`
written by the training export's own function (`tagged_gguf` in tests/conftest.py). The Ollama
side is the protocol server answering /api/show with that GGUF's metadata as Ollama lists it.
Whisper and Piper are replaced by stand-ins: only the model matters here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog

from payphone import stages as stages_module
from payphone.call.options import CallOptions, first_persona
from payphone.cli import State, with_llm_overrides
from payphone.config import Settings
from payphone.doctor import check_prompt_style
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.factory import chosen_prompt_style, conversation
from payphone.llm.ollama_backend import OllamaBackend
from payphone.models import resolve_gguf
from payphone.personas.loader import load_personas
from payphone.sim.rig import build_rig
from payphone.sim.stand_ins import ScriptedTranscriber, ToneSynthesizer
from tests.support.ollama_server import OllamaProtocolServer, gguf_model_info

pytestmark = pytest.mark.models

MODEL = "payphone-persona"
BOOK = load_personas()


class Tones(ToneSynthesizer):
    """The tone stand-in, loadable like Piper voices are."""

    async def load(self, *voices: Any) -> None:
        pass


@pytest.fixture
def light_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`load_stages` with the real LLM and stand-ins for Whisper, Piper and the turn model;
    returns the system prompts the model is primed with, in order."""
    monkeypatch.setattr(stages_module, "WhisperTranscriber", lambda *a: ScriptedTranscriber())
    monkeypatch.setattr(stages_module, "PiperSynthesizer", lambda *a: Tones())
    monkeypatch.setattr(stages_module, "load_turn_model", lambda settings: None)
    primed: list[str] = []
    for cls in (EmbeddedBackend, OllamaBackend):
        real = cls.warm_up

        async def spy(
            self: Any, system_prompt: str, examples: Any = (), *, real: Any = real
        ) -> None:
            primed.append(system_prompt)
            await real(self, system_prompt, examples)

        monkeypatch.setattr(cls, "warm_up", spy)
    return primed


async def first_call_prompt(stages: stages_module.Stages, settings: Settings) -> str:
    """Lift the handset of a phone built from `stages`: the system prompt of the new call."""
    rig = build_rig(
        stages.for_phone(settings.vad, settings.turn),
        CallOptions.from_settings(settings),
        personas=BOOK,
    )
    task = await rig.start()
    try:
        rig.lift()
        async with asyncio.timeout(5):
            while not rig.calls:
                await asyncio.sleep(0.01)
        return rig.calls[0].conversation.system_prompt
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="module")
def untagged_gguf() -> Path:
    return resolve_gguf(Settings())


# --- in-process ----------------------------------------------------------------------------


async def test_the_embedded_backend_reads_the_style_from_the_gguf(
    tagged_gguf: Path, untagged_gguf: Path
) -> None:
    tagged, untagged = EmbeddedBackend(tagged_gguf), EmbeddedBackend(untagged_gguf)
    assert tagged.declared_prompt_style is None  # not known before the model loads
    for backend in (tagged, untagged):
        await backend.load()
        await backend.aclose()
    assert tagged.declared_prompt_style is not None
    assert tagged.declared_prompt_style.style == "tag"
    assert untagged.declared_prompt_style is not None
    assert untagged.declared_prompt_style.style is None
    llm = Settings().llm  # llm.prompt_style left at its default
    mae = BOOK.operator
    by_tagged = conversation(llm, mae.prompt_tag, mae.prompt, declared=tagged.declared_prompt_style)
    by_base = conversation(llm, mae.prompt_tag, mae.prompt, declared=untagged.declared_prompt_style)
    assert (by_tagged.system_prompt, by_base.system_prompt) == (mae.prompt_tag, mae.prompt)


@pytest.mark.parametrize(
    ("tagged", "env", "wanted"),
    [
        (True, {}, "tag"),
        (False, {}, "full"),
        (True, {"PAYPHONE_LLM__PROMPT_STYLE": "full"}, "full"),
    ],
    ids=["tagged-model", "packaged-model", "setting-overrides"],
)
async def test_simulate_model_sends_what_the_model_was_trained_on(
    light_stages: list[str],
    tagged_gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
    tagged: bool,
    env: dict[str, str],
    wanted: str,
) -> None:
    """`simulate --model FILE.gguf`: the start-up prime and every call use the model's style."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = with_llm_overrides(State(None), None, None, str(tagged_gguf) if tagged else None)
    persona = first_persona(BOOK, settings.call)
    expected = persona.prompt_tag if wanted == "tag" else persona.prompt
    with structlog.testing.capture_logs() as logs:
        stages = await stages_module.load_stages(settings, persona, [persona])
    try:
        chosen = [e for e in logs if e["event"] == "prompt_style"]
        assert [e["style"] for e in chosen] == [wanted]  # logged once, with where it came from
        assert ("llm.prompt_style" if env else "GGUF") in chosen[0]["source"]
        assert light_stages == [expected]
        assert await first_call_prompt(stages, settings) == expected
    finally:
        await stages.aclose()


# --- through Ollama ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagged_info(tagged_gguf: Path) -> dict[str, Any]:
    return gguf_model_info(tagged_gguf)


@pytest.fixture(scope="module")
def untagged_info(tagged_info: dict[str, Any]) -> dict[str, Any]:
    """The packaged model as Ollama lists it: the tagged copy without the key."""
    return {k: v for k, v in tagged_info.items() if k != "payphone.prompt_style"}


def ollama_settings(url: str) -> Settings:
    return Settings.model_validate(
        {"llm": {"backend": "ollama", "ollama_host": url, "ollama_model": MODEL}}
    )


async def test_the_ollama_backend_asks_the_server_once(
    tagged_info: dict[str, Any], untagged_info: dict[str, Any]
) -> None:
    assert tagged_info["payphone.prompt_style"] == "tag"
    assert "tokenizer.chat_template" not in tagged_info  # as Ollama lists a model
    for info, wanted in ((tagged_info, "tag"), (untagged_info, None)):
        async with OllamaProtocolServer(models=[MODEL], model_info={MODEL: info}) as srv:
            backend = OllamaBackend(srv.url, MODEL)
            assert backend.declared_prompt_style is None
            await backend.probe()
            await backend.probe()
            await backend.aclose()
            assert backend.declared_prompt_style is not None
            assert backend.declared_prompt_style.style == wanted
            assert srv.requests.count("/api/show") == 1


async def test_the_phone_primes_and_calls_with_the_style_ollama_reports(
    light_stages: list[str], tagged_info: dict[str, Any]
) -> None:
    """Pi #2 is asked in the background start-up, before the first prime; calls follow it."""
    async with OllamaProtocolServer(models=[MODEL], model_info={MODEL: tagged_info}) as srv:
        settings = ollama_settings(srv.url)
        persona = first_persona(BOOK, settings.call)
        stages = await stages_module.load_stages(settings, persona, [persona])
        try:
            async with asyncio.timeout(10):
                await stages.backend.wait_closed()
            assert light_stages == [persona.prompt_tag]
            assert srv.chats[-1].messages == [{"role": "system", "content": persona.prompt_tag}]
            assert await first_call_prompt(stages, settings) == persona.prompt_tag
        finally:
            await stages.aclose()


async def test_doctor_and_personas_show_the_style_ollama_reports(
    tagged_info: dict[str, Any],
) -> None:
    async with OllamaProtocolServer(models=[MODEL], model_info={MODEL: tagged_info}) as srv:
        settings = ollama_settings(srv.url)
        chosen = await chosen_prompt_style(settings)
        assert chosen.style == "tag" and MODEL in chosen.source
        (check,) = await asyncio.to_thread(check_prompt_style, settings)
        assert check.status == "ok" and check.detail.startswith("tag (")
