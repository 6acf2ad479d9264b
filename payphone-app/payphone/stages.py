"""Load the real speech and model stages once, at start-up, from settings.

Whisper, the Piper voices and the persona model each take seconds to load; the service, the
simulator and the benchmarks all load them here, in worker threads, before the first call.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from payphone.call.assembly import PhoneStages
from payphone.call.listen import TurnModel, VadListener
from payphone.config import Settings, TurnSettings, VadSettings
from payphone.llm.base import ChatOptions
from payphone.llm.breaker import BreakerStatus
from payphone.llm.factory import Guarded, build_backend, chat_options
from payphone.llm.prompt_style import ChosenStyle, Declared, choose
from payphone.log import get_logger, ms
from payphone.models import resolve_gguf, resolve_voice, resolve_whisper
from payphone.personas.loader import Persona
from payphone.reply.chunker import ChunkerConfig
from payphone.reply.guard import GuardConfig
from payphone.reply.speakable import Speakable, make_speakable
from payphone.speech.echo_canceller import EchoCanceller, load_echo_canceller
from payphone.speech.stt import WhisperTranscriber
from payphone.speech.tts import PiperSynthesizer
from payphone.speech.turn_model import load_turn_model

log = get_logger("stages")


@dataclass
class Stages:
    """The heavy parts of a phone, loaded and warm."""

    transcriber: WhisperTranscriber
    synthesizer: PiperSynthesizer
    backend: Guarded
    speakable: Speakable
    options: ChatOptions
    llm_status: BreakerStatus
    turn_model: TurnModel | None = None  # None: the silence rule decides when a turn ends
    echo: EchoCanceller | None = None  # None: not wanted (echo.enabled = false) or did not load

    def for_phone(self, vad: VadSettings, turn: TurnSettings) -> PhoneStages:
        """What a phone's calls share: webrtcvad and the end-of-turn model cut the caller's
        utterances."""
        return PhoneStages(
            self.transcriber,
            self.backend,
            self.synthesizer,
            lambda: VadListener(
                vad, turn, self.turn_model, self.transcriber, echo_cancelled=self.echo is not None
            ),
            self.speakable,
            self.options,
            self.echo,
            None if self.echo is not None else "no echo canceller (see echo_canceller_unavailable)",
        )

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.echo is not None:
            self.echo.close()


def system_prompt(settings: Settings, persona: Persona, declared: Declared | None = None) -> str:
    """The persona's tag or full prompt, per `llm.prompt_style` and what the model `declared`."""
    return choose(settings.llm.prompt_style, declared).system_prompt(
        persona.prompt_tag, persona.prompt
    )


class FirstPrompt:
    """The prompt the breaker primes once its probe reached the model (the model may declare
    its prompt style then); logs the chosen style and why, once, and again only if it changes."""

    def __init__(self, settings: Settings, persona: Persona, backend: Guarded) -> None:
        self.settings = settings
        self.persona = persona
        self.backend = backend
        self.logged: ChosenStyle | None = None

    def __call__(self) -> str:
        chosen = choose(self.settings.llm.prompt_style, self.backend.declared_prompt_style)
        if chosen != self.logged:
            self.logged = chosen
            log.info("prompt_style", style=chosen.style, source=chosen.source)
        return chosen.system_prompt(self.persona.prompt_tag, self.persona.prompt)


async def load_stages(settings: Settings, first_persona: Persona, voices: list[Persona]) -> Stages:
    """Load everything (raises `ModelNotFound` for a missing model); the LLM may start degraded.

    The phone's own models load here and now. Pi #2 never holds the start: an Ollama backend is
    probed and warmed up in the background while callers get the busy line.
    """
    started = time.monotonic()
    transcriber = await asyncio.to_thread(
        lambda: WhisperTranscriber(resolve_whisper(settings), settings.stt)
    )
    stt_loaded = time.monotonic()
    synthesizer = PiperSynthesizer(settings.tts, functools.partial(resolve_voice, settings))
    chunker = ChunkerConfig(first_clause_words=settings.tts.first_chunk_words)
    await synthesizer.load([persona.voice_spec for persona in voices], chunker.max_words)
    tts_loaded = time.monotonic()
    # in a thread: the first start requantizes the demo model (payphone/demo_gguf.py)
    embedded = settings.llm.backend == "embedded"
    gguf = await asyncio.to_thread(resolve_gguf, settings) if embedded else None
    backend = build_backend(settings.llm, gguf)
    remote = settings.llm.backend == "ollama"
    status = await backend.start(FirstPrompt(settings, first_persona, backend), background=remote)
    log.info(
        "stages_loaded",
        stt_ms=ms(stt_loaded - started),
        tts_ms=ms(tts_loaded - stt_loaded),
        llm_ms=ms(time.monotonic() - tts_loaded),
        llm_state=str(status.state),
        llm_cause=status.last_cause,
    )
    speakable = make_speakable(GuardConfig.from_settings(settings.llm), chunker)
    turn_model = await asyncio.to_thread(load_turn_model, settings)
    echo = load_echo_canceller(settings)
    return Stages(
        transcriber,
        synthesizer,
        backend,
        speakable,
        chat_options(settings.llm),
        status,
        turn_model,
        echo,
    )
