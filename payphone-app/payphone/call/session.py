"""One call, from off-hook to on-hook: a small state machine on one asyncio task.

The call's own task only dispatches events (keys, speech, timers, finished activities) from its
inbox. Anything that makes sound — dial tone, a greeting, a turn, ringback, an announcement, the
howler — is the call's single *activity* task; starting a new one cancels the old one first, so
a key or a hang-up silences whatever is playing at once. Timers post events to the inbox and are
disarmed by re-arming, so a stale timer never fires into a later state.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from payphone.call.events import (
    ActivityDone,
    CallEvent,
    CallState,
    Heard,
    KeyPress,
    SpeechStarted,
    Timer,
    TimerFired,
)
from payphone.call.player import play_and_wait, play_frames
from payphone.call.turn import Turn, TurnDeps, TurnRecord, sit_tones
from payphone.config import CallSettings
from payphone.llm.base import LlmError
from payphone.llm.history import Conversation, choose_system_prompt
from payphone.log import get_logger
from payphone.personas.loader import OPERATOR_KEY, Persona, PersonaBook
from payphone.speech import tones

log = get_logger("call")

NUMBER_LENGTH = 7  # 555-0101 dialled as seven digits
RINGBACK_S = 1.0  # one short ring before a new persona answers
FEEDBACK_S = 0.08  # DTMF key-press feedback while dialling
TONE_FRAME_MS = 20
PREVIOUS_CLEANUP_S = 1.0  # a cancelled activity cleans up in a few loop turns; never wait longer
HELLO_WAIT_S = 3.0  # after speech over the dial tone, greet at the latest this much later


@dataclass
class CallLog:
    """What the call did, for the simulator's report and for tests."""

    call_id: str
    started: float = field(default_factory=time.monotonic)
    turns: list[TurnRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, kind: str, **details: Any) -> None:
        self.events.append(
            {"t_ms": round((time.monotonic() - self.started) * 1000), "event": kind, **details}
        )


class Call:
    """Feed it events with `post`; run it with `run`; cancel its task to hang up."""

    def __init__(
        self,
        call_id: str,
        deps: TurnDeps,
        personas: PersonaBook,
        settings: CallSettings,
        *,
        prompt_style: Literal["tag", "full"] = "full",
        history_tokens: int = 1024,
        barge_in: bool = False,
        on_state: Callable[[CallState], None] | None = None,
    ) -> None:
        self.call_id = call_id
        self.deps = deps
        self.personas = personas
        self.settings = settings
        self.prompt_style = prompt_style
        self.barge_in = barge_in
        self.log = CallLog(call_id)
        self.persona = personas.by_key(settings.default_persona_key) or personas.operator
        self.conversation = Conversation(self._system_prompt(self.persona), history_tokens)
        self.state = CallState.DIAL_TONE
        self._on_state = on_state
        self._inbox: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._activity: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._activity_name = ""
        self._tokens = itertools.count(1)
        self._activity_token = 0
        self._timers: dict[Timer, tuple[int, asyncio.TimerHandle]] = {}
        self._digits = ""
        self._greeted = False
        self._idle_stage = 0
        self._turn: Turn | None = None

    # -- inputs -------------------------------------------------------------------------------

    @property
    def our_voice_playing(self) -> bool:
        """Whether what the earpiece plays is speech the mic must not take for the caller's.

        Dial tone and key feedback are not: a caller talking over the dial tone must be heard.
        """
        return self.state not in (CallState.DIAL_TONE, CallState.DIALING, CallState.LISTENING)

    def post(self, event: CallEvent) -> None:
        """Deliver an event (on the loop's thread)."""
        self._inbox.put_nowait(event)

    # -- the call's own task ------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled (on-hook): dispatch events; the activity task makes the sound."""
        self.log.event("off_hook")
        structlog.contextvars.bind_contextvars(persona=self.persona.id)  # this task's context
        log.info("call_started")
        if self._on_state is not None:
            self._on_state(self.state)
        self._arm(Timer.MAX_CALL, self.settings.max_call_s)
        self._arm(Timer.DIAL_TONE, self.settings.dial_tone_s)
        self._start("dial_tone", CallState.DIAL_TONE, self._dial_tone)
        try:
            while True:
                await self._dispatch(await self._inbox.get())
        finally:
            self._hang_up()

    def _hang_up(self) -> None:
        """Synchronous on purpose: it runs inside a cancelled task, with no awaits left."""
        self.deps.sink.stop()
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._cancel(self._activity)
        for task in self._background:
            task.cancel()
        self._set_state(CallState.ENDED)
        self.log.event("on_hook")

    async def wait_activity_ended(self, timeout_s: float = 2.0) -> bool:
        """After cancelling `run`: wait until every task of the call has really finished."""
        tasks = {t for t in (self._activity, *self._background) if t is not None}
        for task in tasks:
            self._cancel(task)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    def _cancel(self, task: asyncio.Task[None] | None) -> None:
        """Cancel an activity; a turn in it learns first that the cancel is the call's doing."""
        if task is None:
            return
        if self._turn is not None:
            self._turn.stopping = True
        task.cancel()

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a task of this call that is no longer the activity, until it ends."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _background_task(self, work: Awaitable[None]) -> None:
        self._track(asyncio.ensure_future(work))

    async def _dispatch(self, event: CallEvent) -> None:
        match event:
            case KeyPress(key=key):
                await self._on_key(key)
            case SpeechStarted():
                await self._on_speech_started()
            case Heard():
                await self._on_heard(event)
            case TimerFired(timer=timer, token=token):
                if self._timers.get(timer, (None,))[0] == token:
                    del self._timers[timer]
                    await self._on_timer(timer)
            case ActivityDone(name=name, token=token):
                if token == self._activity_token:
                    self._on_activity_done(name)

    # -- events -------------------------------------------------------------------------------

    async def _on_key(self, key: str) -> None:
        self.log.event("key", key=key)
        self._idle_stage = 0
        if self.state is CallState.HOWLER:
            return  # only hanging up ends the howler
        if key == "#":
            if self._digits:
                await self._dial()
            elif self._activity_name in ("turn", "greeting"):
                self.log.event("interrupt")
                await self._stop_activity()
                self._listen()
            return
        if key == "*":
            self._digits = ""
            await self._switch(self.personas.by_key(OPERATOR_KEY) or self.personas.operator)
            return
        if not key.isdigit():
            return
        persona = self.personas.by_key(key) if not self._digits else None
        if persona is not None:
            await self._switch(persona)
            return
        self._digits += key
        self._disarm(Timer.DIAL_TONE)
        if len(self._digits) >= NUMBER_LENGTH:
            await self._dial()
            return
        self._arm(Timer.INTER_DIGIT, self.settings.inter_digit_timeout_s)
        self._start("dialing", CallState.DIALING, lambda: self._key_feedback(key))

    async def _on_speech_started(self) -> None:
        self._idle_stage = 0
        if self.state is CallState.DIAL_TONE:
            # the caller says "hello?" over the dial tone: silence, and greet when they stop
            await self._stop_activity()
            self._set_state(CallState.LISTENING)
            self._arm(Timer.DIAL_TONE, HELLO_WAIT_S)
        elif self.state is CallState.LISTENING:
            # push the idle deadline back; a blip the VAD then drops must not stop the timer
            self._arm(Timer.IDLE, self.settings.idle_prompt_s)

    async def _on_heard(self, heard: Heard) -> None:
        self._idle_stage = 0
        if not self._greeted and self.state is CallState.LISTENING:
            self.log.event("hello_heard")
            self._disarm(Timer.DIAL_TONE)
            self._start("greeting", CallState.GREETING, self._greet)
            return
        if self.state in (CallState.THINKING, CallState.SPEAKING) and not self.barge_in:
            self.log.event("speech_ignored", reason="persona speaking")
            return
        if self.state not in (CallState.LISTENING, CallState.THINKING, CallState.SPEAKING):
            self.log.event("speech_ignored", reason=self.state.value)
            return
        self._disarm(Timer.IDLE)
        turn = Turn(self.deps, self.persona, self.conversation, heard)
        self._start("turn", CallState.THINKING, lambda: self._run_turn(turn))
        self._turn = turn  # after the start: cancelling the old activity marks only old turns

    async def _on_timer(self, timer: Timer) -> None:
        self.log.event("timer", timer=timer.value)
        if timer is Timer.DIAL_TONE and not self._greeted:
            self._start("greeting", CallState.GREETING, self._greet)
        elif timer is Timer.INTER_DIGIT and self._digits:
            await self._dial()
        elif timer is Timer.IDLE and self.state is CallState.LISTENING:
            self._idle_stage += 1
            if self._idle_stage == 1:
                self._start(
                    "idle_prompt", CallState.ANNOUNCEMENT, lambda: self._announce("idle_prompt")
                )
            else:
                self._start("goodbye", CallState.ANNOUNCEMENT, self._goodbye_then_howl)
        elif timer is Timer.MAX_CALL:
            self._start("goodbye", CallState.ANNOUNCEMENT, self._goodbye_then_howl)

    def _on_activity_done(self, name: str) -> None:
        if name in ("greeting", "turn", "idle_prompt", "interrupted", "announcement"):
            self._listen()

    # -- what the caller hears ----------------------------------------------------------------

    def _listen(self) -> None:
        self._set_state(CallState.LISTENING)
        self._activity_name = ""
        wait = (
            self.settings.idle_prompt_s if self._idle_stage == 0 else self.settings.idle_goodbye_s
        )
        self._arm(Timer.IDLE, wait)

    async def _switch(self, persona: Persona) -> None:
        """A new persona: short ringback, its greeting, fresh history."""
        self.log.event("persona", persona=persona.id)
        log.info("persona_switch", persona=persona.id)
        self._disarm(Timer.DIAL_TONE)
        self._disarm(Timer.INTER_DIGIT)
        self._digits = ""
        self.persona = persona
        structlog.contextvars.bind_contextvars(persona=persona.id)
        self._start("greeting", CallState.RINGBACK, lambda: self._ring_then_greet(persona))

    async def _dial(self) -> None:
        digits, self._digits = self._digits, ""
        self._disarm(Timer.INTER_DIGIT)
        self.log.event("dialed", number=digits)
        persona = self.personas.by_number(digits)
        if persona is not None:
            await self._switch(persona)
        else:
            log.info("not_in_service", number=digits)
            self._start("announcement", CallState.ANNOUNCEMENT, self._not_in_service)

    async def _dial_tone(self) -> None:
        await play_frames(self.deps.sink, self._tone_stream(tones.DIAL))

    async def _greet(self) -> None:
        self._greeted = True
        await play_and_wait(self.deps.sink, await self.deps.lines.line(self.persona, "greeting"))

    async def _ring_then_greet(self, persona: Persona) -> None:
        """Fresh history; while the line rings and the persona greets, the model reads its prompt.

        Runs after the replaced activity has finished its clean-up, so a cut-off turn writes
        into the old history, never into the new persona's.
        """
        self.conversation.reset(self._system_prompt(persona))
        self._background_task(self._warm_up(self.conversation.system_prompt))
        rate = self.deps.sink.sample_rate
        await play_and_wait(self.deps.sink, tones.render(tones.RINGBACK, rate, RINGBACK_S))
        self._set_state(CallState.GREETING)
        await self._greet()

    async def _warm_up(self, system_prompt: str) -> None:
        try:
            await self.deps.backend.warm_up(system_prompt)
        except LlmError as exc:  # the breaker has it; the first turn gets the fallback if needed
            log.info("warm_up_failed", cause=exc.cause)

    async def _key_feedback(self, key: str) -> None:
        await play_and_wait(self.deps.sink, tones.dtmf(key, self.deps.sink.sample_rate, FEEDBACK_S))

    async def _announce(self, line: str) -> None:
        await play_and_wait(self.deps.sink, await self.deps.lines.line(self.persona, line))

    async def _not_in_service(self) -> None:
        rate = self.deps.sink.sample_rate
        await play_and_wait(self.deps.sink, sit_tones(rate))
        await play_and_wait(
            self.deps.sink, await self.deps.lines.line(self.personas.operator, "not_in_service")
        )

    async def _goodbye_then_howl(self) -> None:
        await self._announce("goodbye")
        self._set_state(CallState.HOWLER)
        self.log.event("howler")
        await play_frames(self.deps.sink, self._tone_stream(tones.HOWLER))

    async def _run_turn(self, turn: Turn) -> None:
        self._set_state(CallState.THINKING)
        structlog.contextvars.bind_contextvars(turn=len(self.log.turns) + 1)  # activity's context
        token = self._activity_token

        def audible() -> None:
            if token == self._activity_token:  # not a turn that was just replaced
                self._set_state(CallState.SPEAKING)

        turn.on_audible = audible
        try:
            record = await turn.run()
        except asyncio.CancelledError:
            if turn.record.heard:  # cut off (hang-up, `#`, a key): still a turn of the call
                self._log_turn(turn.record)
            raise
        if record is not None:
            self._log_turn(record)

    def _log_turn(self, record: TurnRecord) -> None:
        self.log.turns.append(record)
        self.log.event(
            "turn", heard=record.heard, fallback=record.fallback, interrupted=record.interrupted
        )

    # -- the activity task ----------------------------------------------------------------------

    def _start(self, name: str, state: CallState, work: Callable[[], Awaitable[None]]) -> None:
        """Replace the current activity with a new one (the old one is cancelled first)."""
        previous = self._activity
        if previous is not None and not previous.done():
            self._cancel(previous)
            self.deps.sink.stop()
            self._track(previous)
        else:
            previous = None
        self._disarm(Timer.IDLE)
        self._activity_token = token = next(self._tokens)
        self._activity_name = name
        self._set_state(state)
        self._activity = asyncio.create_task(
            self._guarded(name, token, work, previous), name=f"call-{name}"
        )

    async def _guarded(
        self,
        name: str,
        token: int,
        work: Callable[[], Awaitable[None]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            if previous is not None:  # let the old activity finish its clean-up first
                await asyncio.wait({previous}, timeout=PREVIOUS_CLEANUP_S)
                self.deps.sink.stop()
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an activity failing never ends the call
            log.exception("activity_failed", activity=name, error=repr(exc))
            try:
                await play_and_wait(
                    self.deps.sink, await self.deps.lines.line(self.persona, "apology")
                )
            except Exception:
                log.exception("apology_failed")
        self._inbox.put_nowait(ActivityDone(name, token))

    async def _stop_activity(self) -> None:
        if self._activity is not None and not self._activity.done():
            self._cancel(self._activity)
            self.deps.sink.stop()
            await asyncio.gather(self._activity, return_exceptions=True)
        self._activity_token = next(self._tokens)

    # -- helpers ------------------------------------------------------------------------------

    def _arm(self, timer: Timer, delay_s: float) -> None:
        self._disarm(timer)
        token = next(self._tokens)
        handle = asyncio.get_running_loop().call_later(
            delay_s, self._inbox.put_nowait, TimerFired(timer, token)
        )
        self._timers[timer] = (token, handle)

    def _disarm(self, timer: Timer) -> None:
        entry = self._timers.pop(timer, None)
        if entry is not None:
            entry[1].cancel()

    def _set_state(self, state: CallState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    def _tone_stream(self, plan: tones.TonePlan) -> tones.ToneStream:
        rate = self.deps.sink.sample_rate
        return tones.ToneStream(plan, rate, frame_samples=rate * TONE_FRAME_MS // 1000)

    def _system_prompt(self, persona: Persona) -> str:
        return choose_system_prompt(self.prompt_style, persona.prompt_tag, persona.prompt)
