"""One reply as the phone makes it: the request the phone builds, the real reply path after it.

Shared by the evaluation and `bench-persona`, so both measure what a caller hears and neither
keeps a second copy of the phone's logic: the system prompt chosen from the model's declared
prompt style (`payphone.llm.prompt_style.choose`), the persona's example exchanges only with the
full prompt (as `Call._conversation_for` does), history trimmed by `Conversation`, sampling with
the phone's `[llm]` settings, then the output guard and chunker (`make_speakable`) and the
persona's character check (`in_character`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from payphone.config import Settings
from payphone.llm.base import ChatOptions, Message
from payphone.llm.embedded import EmbeddedBackend
from payphone.llm.history import Conversation
from payphone.llm.prompt_style import Declared, choose
from payphone.personas.loader import Persona
from payphone.reply.character import in_character
from payphone.reply.chunker import ChunkerConfig
from payphone.reply.guard import GuardConfig
from payphone.reply.speakable import make_speakable
from payphone.streams import hit_limit


@dataclass(frozen=True)
class Spoken:
    """What the model wrote, what the caller heard, and llama.cpp's timings for it."""

    reply: str  # the spoken text (after guard, chunker and the character check)
    raw: str  # what the model wrote
    hit_limit: bool  # the model stream ran into `num_predict`
    ttft_ms: float | None
    generated_tokens: int
    total_ms: float
    deflected: bool = False  # out of character: the persona's deflection was said instead

    @property
    def tokens_per_s(self) -> float | None:
        """Decoding speed after the first token (None with fewer than two tokens)."""
        if self.ttft_ms is None or self.generated_tokens < 2 or self.total_ms <= self.ttft_ms:
            return None
        return (self.generated_tokens - 1) / ((self.total_ms - self.ttft_ms) / 1000)


def phone_conversation(
    persona: Persona,
    settings: Settings,
    declared: Declared | None,
    turns: Sequence[Message] = (),
    *,
    examples: bool | None = None,
) -> Conversation:
    """The history the phone keeps for `persona` with this model, holding `turns` so far.

    `examples` None: as the phone does (with the full prompt only); True/False forces them.
    """
    chosen = choose(settings.llm.prompt_style, declared)
    prompt = chosen.system_prompt(persona.prompt_tag, persona.prompt)
    if examples is None:
        examples = prompt == persona.prompt
    convo = Conversation(
        prompt, settings.llm.history_tokens, examples=persona.example_pairs if examples else ()
    )
    for turn in turns:
        if turn["role"] == "user":
            convo.add_user(turn["content"])
        elif turn["role"] == "assistant":
            convo.add_assistant(turn["content"])
    return convo


async def _replay(pieces: list[str], keep_mark: bool) -> AsyncIterator[str]:
    for piece in pieces:
        if keep_mark or not hit_limit(piece):
            yield piece


async def spoken_reply(
    model: EmbeddedBackend,
    persona: Persona,
    messages: list[Message],
    settings: Settings,
    seed: int,
    *,
    drop_half_sentence: bool = True,
) -> Spoken:
    """One sampled reply at the phone's settings, through the guard, the chunker and the
    persona's character check (`payphone.reply.character`), as `Turn` speaks it.

    `drop_half_sentence`: the phone drops the unfinished sentence of a reply cut by
    `num_predict` (False: speak it, as the phone did before it learnt to).
    """
    options = ChatOptions(
        num_predict=settings.llm.num_predict,
        temperature=settings.llm.temperature,
        num_ctx=settings.llm.num_ctx,
        seed=seed,
    )
    pieces = [p async for p in model.stream(messages, options)]
    stats = model.last_stats
    speakable = make_speakable(
        GuardConfig.from_settings(settings.llm),
        ChunkerConfig(first_clause_words=settings.tts.first_chunk_words),
    )
    broke: list[str] = []
    replayed = speakable(_replay(pieces, keep_mark=drop_half_sentence))
    chunks = [c async for c in in_character(replayed, persona, broke.extend)]
    return Spoken(
        reply=" ".join(chunks),
        raw="".join(p for p in pieces if not hit_limit(p)).strip(),
        hit_limit=any(hit_limit(p) for p in pieces),
        ttft_ms=stats.ttft_ms if stats else None,
        generated_tokens=stats.generated_tokens if stats else 0,
        total_ms=stats.total_ms if stats else 0.0,
        deflected=bool(broke),
    )
