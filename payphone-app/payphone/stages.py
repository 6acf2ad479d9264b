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
from payphone.call.turn import Speakable
from payphone.config import Settings, TurnSettings, VadSettings
from payphone.llm.base import ChatOptions
from payphone.llm.breaker import BreakerStatus, CircuitBreaker
from payphone.llm.factory import build_backend, chat_options
from payphone.llm.history import choose_system_prompt
from payphone.log import get_logger, ms
from payphone.models import resolve_gguf, resolve_voice, resolve_whisper
from payphone.personas.loader import Persona
from payphone.reply.chunker import ChunkerConfig
from payphone.reply.guard import GuardConfig
from payphone.reply.speakable import make_speakable
from payphone.speech.stt import WhisperTranscriber
from payphone.speech.tts import PiperSynthesizer
from payphone.speech.turn_model import load_turn_model

log = get_logger("stages")


@dataclass
class Stages:
    """The heavy parts of a phone, loaded and warm."""

    transcriber: WhisperTranscriber
    synthesizer: PiperSynthesizer
    backend: CircuitBreaker
    speakable: Speakable
    options: ChatOptions
    llm_status: BreakerStatus
    turn_model: TurnModel | None = None  # None: the silence rule decides when a turn ends

    def for_phone(self, vad: VadSettings, turn: TurnSettings) -> PhoneStages:
        """What a phone's calls share: webrtcvad and the end-of-turn model cut the caller's
        utterances."""
        return PhoneStages(
            self.transcriber,
            self.backend,
            self.synthesizer,
            lambda: VadListener(vad, turn, self.turn_model, self.transcriber),
            self.speakable,
            self.options,
        )

    async def aclose(self) -> None:
        await self.backend.aclose()


def system_prompt(settings: Settings, persona: Persona) -> str:
    return choose_system_prompt(settings.llm.prompt_style, persona.prompt_tag, persona.prompt)


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
    gguf = resolve_gguf(settings) if settings.llm.backend == "embedded" else None
    backend = build_backend(settings.llm, gguf)
    remote = settings.llm.backend == "ollama"
    status = await backend.start(system_prompt(settings, first_persona), background=remote)
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
    return Stages(
        transcriber,
        synthesizer,
        backend,
        speakable,
        chat_options(settings.llm),
        status,
        turn_model,
    )
