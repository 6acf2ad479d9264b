"""One turn: caller's words -> transcript -> model stream -> speakable chunks -> PCM -> earpiece.

The stages are tasks joined by bounded queues, so the first sentence plays while the model is
still writing. Every stage closes its upstream generator when it stops (`aclosing`), so a hang-up
closes the model stream and the backend stops generating. A failing model becomes the persona's
busy line (with SIT tones) or, mid-reply, its graceful stall line; any other failure becomes the
persona's apology, and so does a reply with nothing speakable in it (`*smiles*`, or nothing).
Only a cancel (hang-up, `#`, a new persona, barge-in) ends a turn without a sound: the call
interrupts the turn by cancelling it, and a cancel always wins over a failure that came with it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from payphone.call.crisis import HelpLine, help_for, render_help
from payphone.call.endings import asks, only_greets, reads_complete, sounds_unfinished
from payphone.call.events import Heard
from payphone.call.lines import LineBook
from payphone.call.player import play_and_wait
from payphone.config import HelpSettings
from payphone.cores import FIRST_AUDIO, working
from payphone.hardware.base import AudioSink
from payphone.llm.base import ChatBackend, ChatOptions, LlmError
from payphone.llm.history import Conversation
from payphone.log import get_logger, ms
from payphone.pcm import Pcm
from payphone.personas.loader import Persona
from payphone.reply.character import in_character
from payphone.reply.speakable import Speakable
from payphone.speech import tones
from payphone.speech.base import Synthesizer, Transcriber
from payphone.streams import closing, hit_limit

log = get_logger("turn")

MARKS = ("transcript_ready", "first_token", "first_chunk", "first_audio", "reply_done")
NOTHING_SPOKEN = "nothing_speakable"


class NothingSpoken(Exception):
    """The model's reply held nothing the phone could say (e.g. only `*smiles*`)."""


async def run_together(*stages: Coroutine[Any, Any, None]) -> None:
    """Run the stages as tasks until all finish; the first failure cancels the rest and is raised.

    Unlike a TaskGroup on Python 3.11, a cancel of the caller always surfaces as CancelledError,
    even when a stage failed at the same moment: the turn learns of a hang-up by its cancel alone.
    """
    tasks = [asyncio.ensure_future(stage) for stage in stages]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # every stage has closed its streams before we go on
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@dataclass
class TurnRecord:
    """What happened in a turn, with latencies in ms from the end of the caller's speech."""

    persona: str
    speech_end: float
    heard: str = ""
    reply: str = ""
    fallback: bool = False
    cause: str | None = None
    interrupted: bool = False
    filler: bool = False
    help_line: str | None = None  # "crisis" / "emergency": the phone's help line, not the model
    deflected: bool = False  # the reply broke character: the persona's deflection took over
    latency_ms: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.latency_ms.setdefault(name, ms(time.monotonic() - self.speech_end))

    def as_report(self) -> dict[str, object]:
        return {
            "persona": self.persona,
            "heard": self.heard,
            "reply": self.reply,
            "fallback": self.fallback,
            "interrupted": self.interrupted,
            "help_line": self.help_line,
            "deflected": self.deflected,
            "latency_ms": {name: self.latency_ms.get(name) for name in MARKS},
        }


@dataclass
class TurnDeps:
    """Everything a turn uses; the call loop builds it once per call."""

    transcriber: Transcriber
    backend: ChatBackend
    synthesizer: Synthesizer
    sink: AudioSink
    lines: LineBook
    speakable: Speakable
    options: ChatOptions = field(default_factory=ChatOptions)
    help: HelpSettings = field(default_factory=HelpSettings)
    filler_after_s: float = 1.2
    log_transcripts: bool = False  # what the caller said is personal data: see `words`
    chunk_queue: int = 4
    pcm_queue: int = 32


def sit_tones(rate: int) -> Pcm:
    """The three rising "no circuit" tones that precede a busy announcement."""
    return tones.render(tones.SIT_NO_CIRCUIT, rate, 1.2)


class Turn:
    """Runs one turn; `run` returns the record, or None when the audio held no speech."""

    def __init__(
        self, deps: TurnDeps, persona: Persona, conversation: Conversation, heard: Heard
    ) -> None:
        self.deps = deps
        self.persona = persona
        self.conversation = conversation
        self.heard = heard
        self.record = TurnRecord(persona=persona.id, speech_end=heard.speech_end)
        self._reply: list[str] = []
        self._guarded = False  # the output guard ended the reply early (blocklist, length)
        self._spoken: list[str] = []
        self._audible = asyncio.Event()
        self._settled = asyncio.Event()  # the answer is audible, or there will be none
        self._not_before = 0.0  # no sound before this (monotonic): see _speak_not_before
        self.on_audible: Callable[[], None] | None = None
        # its words went into the caller's next turn before it made a sound (Call._fold)
        self.folded = False

    async def run(self) -> TurnRecord | None:
        rec = self.record
        try:
            # Whisper started at the pause that ended the turn, or starts now
            transcript = await self.heard.transcribed(self.deps.transcriber)
            rec.mark("transcript_ready")
            if not transcript.is_speech:
                log.info("no_speech", **{"stt_ms": rec.latency_ms["transcript_ready"]})
                return None
            rec.heard = transcript.text.strip()
            self._speak_not_before(rec.heard)
            self.conversation.add_user(rec.heard)
            if (help_line := help_for(rec.heard, self.persona, self.deps.help)) is not None:
                await self._give_help(help_line)
            else:
                await self._reply_with_fallbacks()
        except asyncio.CancelledError:
            self._cut_off()
            raise
        except NothingSpoken:
            log.warning("nothing_speakable", **self._words(reply="".join(self._reply)[:200]))
            await self._apologize(NOTHING_SPOKEN)
        except Exception as exc:  # a broken stage ends the turn, never the call
            log.exception("turn_failed", error=repr(exc))
            await self._apologize(f"error:{type(exc).__name__}")
        rec.mark("reply_done")
        log.info(
            "turn_done",
            **self._words(
                heard=rec.heard if rec.help_line is None else "(withheld: help line)",
                reply=rec.reply,
            ),
            fallback=rec.fallback,
            cause=rec.cause,
            deflected=rec.deflected,
            **{f"{k}_ms": v for k, v in rec.latency_ms.items()},
        )
        return rec

    def _speak_not_before(self, text: str) -> None:
        """Cut before the silence limit but maybe unfinished (the turn model was unsure and the
        words are no question, the words trail off: "My name is", or they only greet: "Hello?",
        as callers do before they say what they want): work now, speak at the
        limit, or a little sooner when the words are a complete statement. If the caller goes on
        meanwhile, the call cancels this turn and their words join it."""
        heard = self.heard
        unsure = (
            sounds_unfinished(text) or only_greets(text) or (heard.tentative and not asks(text))
        )
        if unsure and heard.limit_at > time.monotonic():
            self._not_before = heard.limit_at
            if heard.tentative and heard.complete_at and reads_complete(text):
                self._not_before = min(heard.limit_at, heard.complete_at)
            wait_ms = ms(self._not_before - time.monotonic())
            log.info(
                "turn_speaks_later",
                **self._words(heard=text),
                tentative=self.heard.tentative,
                wait_ms=wait_ms,
            )

    def _words(self, **texts: str) -> dict[str, str | int]:
        """Transcripts for a log line only with `status.transcripts = "journal"`; else their
        word counts (a stranger's words are personal data; the status page keeps them in memory).
        """
        if self.deps.log_transcripts:
            return dict(texts)
        return {f"{name}_words": len(text.split()) for name, text in texts.items()}

    async def _apologize(self, cause: str) -> None:
        """A failed turn: the persona's apology, and nothing of it in the history."""
        rec = self.record
        rec.fallback, rec.cause, rec.reply = True, cause, ""
        self.conversation.discard_unanswered()
        await self._say(await self.deps.lines.line(self.persona, "apology"))

    async def _give_help(self, help_line: HelpLine) -> None:
        """A caller in crisis: the persona's fixed help line, never the model's words. It goes
        into the history like a reply, so the model goes on knowing what was said; the log
        names the kind of line, never the caller's words."""
        rec = self.record
        rec.help_line = help_line.kind
        log.info("help_line_given", kind=help_line.kind, persona=self.persona.id)
        pcm = await render_help(self.deps.lines, self.persona, help_line)
        await asyncio.sleep(max(0.0, self._not_before - time.monotonic()))
        self._spoken.append(help_line.text)  # cut off from here on: kept as heard, interrupted
        rec.mark("first_audio")
        if self.on_audible is not None:
            self.on_audible()
        await self._say(pcm)
        rec.reply = help_line.text
        self.conversation.add_assistant(rec.reply)

    async def _reply_with_fallbacks(self) -> None:
        try:
            await self._pipeline()
        except LlmError as failure:
            await self._fall_back(failure)
            return
        if not self._spoken:
            raise NothingSpoken
        if self._guarded or self.record.deflected or any(map(hit_limit, self._reply)):
            # cut by the token limit, the guard, or out of character: remember what was said,
            # not the half sentence dropped, nor what the model wrote past the cap, a blocked
            # phrase or a break
            self.record.reply = " ".join(self._spoken)
        else:
            self.record.reply = "".join(self._reply).strip()
        self.conversation.add_assistant(self.record.reply)

    async def _fall_back(self, error: LlmError) -> None:
        """SIT and the busy line when nothing was said; the stall line to close a cut reply."""
        rec = self.record
        rec.fallback, rec.cause = True, error.cause
        log.warning(
            "llm_fallback", cause=error.cause, detail=error.detail, spoken=len(self._spoken)
        )
        await self.deps.sink.drain()
        if self._spoken:
            rec.reply = " ".join(self._spoken)
            self.conversation.add_assistant(rec.reply)
            await self._say(await self.deps.lines.line(self.persona, "stall_line"))
        else:
            self.conversation.discard_unanswered()
            await self._say(sit_tones(self.deps.sink.sample_rate))
            await self._say(await self.deps.lines.line(self.persona, "busy_line"))

    async def _pipeline(self) -> None:
        chunks: asyncio.Queue[str | None] = asyncio.Queue(self.deps.chunk_queue)
        pcm: asyncio.Queue[tuple[str | None, Pcm] | None] = asyncio.Queue(self.deps.pcm_queue)
        await run_together(
            self._write(chunks), self._synthesize(chunks, pcm), self._speak(pcm), self._filler()
        )
        await self.deps.sink.drain()

    async def _tokens(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        async with closing(stream):  # a stage that stops downstream stops the model at once
            async for piece in stream:
                self.record.mark("first_token")
                self._reply.append(piece)
                yield piece

    async def _write(self, out: asyncio.Queue[str | None]) -> None:
        messages = self.conversation.messages()
        raw = self.deps.backend.stream(messages, self.deps.options)
        tokens = self._tokens(raw)
        chunks = in_character(
            self.deps.speakable(tokens, self._guard_ended), self.persona, self._deflect
        )
        async with closing(raw), closing(tokens), closing(chunks):
            async for chunk in chunks:
                self.record.mark("first_chunk")
                await out.put(chunk)
        await out.put(None)

    def _guard_ended(self, reason: str) -> None:
        self._guarded = True

    def _deflect(self, reasons: list[str]) -> None:
        """The model broke character: its chunk is not spoken, the persona's deflection is."""
        self.record.deflected = True
        log.warning("reply_out_of_character", persona=self.persona.id, reasons=reasons)

    async def _synthesize(
        self, chunks: asyncio.Queue[str | None], out: asyncio.Queue[tuple[str | None, Pcm] | None]
    ) -> None:
        first = await chunks.get()
        if first is not None:
            with working(FIRST_AUDIO):  # the model waits while the first words render
                await self._render(first, out)
            while (chunk := await chunks.get()) is not None:
                await self._render(chunk, out)
        await out.put(None)

    async def _render(self, chunk: str, out: asyncio.Queue[tuple[str | None, Pcm] | None]) -> None:
        """One chunk through Piper; its text goes with its first piece of sound."""
        label: str | None = chunk
        stream = self.deps.synthesizer.synthesize(chunk, self.persona.voice_spec)
        async with closing(stream):
            async for pcm in stream:
                await out.put((label, pcm))
                label = None

    async def _speak(self, pcm: asyncio.Queue[tuple[str | None, Pcm] | None]) -> None:
        try:
            await self._speak_all(pcm)
        finally:
            self._settled.set()  # no filler after the model has finished (or failed)

    async def _speak_all(self, pcm: asyncio.Queue[tuple[str | None, Pcm] | None]) -> None:
        while (item := await pcm.get()) is not None:
            label, audio = item
            if not self._audible.is_set():
                await asyncio.sleep(max(0.0, self._not_before - time.monotonic()))
                self._audible.set()
                self._settled.set()
                if self.record.filler:
                    self.deps.sink.stop()  # the real answer takes over from the filler at once
                self.record.mark("first_audio")
                if self.on_audible is not None:
                    self.on_audible()
            if label is not None:
                self._spoken.append(label)
            await self.deps.sink.play(audio)

    async def _filler(self) -> None:
        """A short persona filler if nothing is audible soon after the caller stopped.

        Played a buffer at a time, so it stops feeding the earpiece the moment the answer is
        ready; a filler that fails to render is skipped, never the answer.
        """
        if not self.persona.fillers:
            return
        due = (
            max(self.heard.speech_end + self.deps.filler_after_s, self._not_before)
            - time.monotonic()
        )
        try:
            async with asyncio.timeout(max(due, 0.0)):
                await self._settled.wait()
                return
        except TimeoutError:
            pass
        try:
            audio = await self.deps.lines.render(self.persona, random.choice(self.persona.fillers))
        except Exception as exc:
            log.warning("filler_failed", error=repr(exc))
            return
        step = max(1, self.deps.sink.sample_rate // 50)
        for start in range(0, len(audio), step):
            if self._settled.is_set():
                return
            self.record.filler = True
            await self.deps.sink.play(audio[start : start + step])

    async def _say(self, pcm: Pcm) -> None:
        await play_and_wait(self.deps.sink, pcm)

    def _cut_off(self) -> None:
        """Cancelled: keep only what the caller heard, marked as interrupted. No awaits here.

        The earpiece was silenced by whoever cancelled (`Call.interrupt`).
        """
        rec = self.record
        if rec.heard and not rec.reply:
            rec.interrupted = True
            rec.reply = " ".join(self._spoken)
            if self._spoken:
                self.conversation.add_interrupted(rec.reply)
            else:
                self.conversation.discard_unanswered()
