"""One call, from off-hook to on-hook: a small state machine on one asyncio task.

The call's own task only dispatches events (keys, speech, timers, finished activities) from its
inbox. Anything that makes sound — dial tone, a greeting, a turn, ringback, an announcement, the
howler — is the call's single *activity* task. `interrupt()` is the one way sound stops: it
cancels the activity and silences the earpiece; starting a new activity interrupts the old one
first, and hanging up interrupts for good. A turn learns that it was cut off only through that
cancellation. Timers post events to the inbox and are disarmed by re-arming, so a stale timer
never fires into a later state.

Keys are urgent events (they interrupt whatever plays); speech is data, taken only where the
table `HEARS_SPEECH` says. Once the call says goodbye (call too long, caller silent, service
stopping) it takes no more input: only hanging up ends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from payphone.call.crisis import recognise
from payphone.call.endings import is_backchannel, only_opens, takes_the_floor
from payphone.call.events import (
    ActivityDone,
    CallEvent,
    CallState,
    Heard,
    HelpNeeded,
    KeyPress,
    ShortSpeech,
    SpeechDropped,
    SpeechStarted,
    SpeechSustained,
    Timer,
    TimerFired,
)
from payphone.call.listen import Endpointer
from payphone.call.options import CallOptions, first_persona
from payphone.call.player import play_and_wait, play_frames
from payphone.call.turn import Turn, TurnDeps, TurnRecord, sit_tones
from payphone.llm.base import LlmError, Message
from payphone.llm.history import Conversation
from payphone.llm.prompt_style import choose
from payphone.log import get_logger
from payphone.pcm import Pcm
from payphone.personas.loader import OPERATOR_KEY, Persona, PersonaBook
from payphone.speech import tones
from payphone.speech.base import Transcript

log = get_logger("call")

NUMBER_LENGTH = 7  # 555-0101 dialled as seven digits
RINGBACK_S = 1.0  # one short ring before a new persona answers
FEEDBACK_S = 0.08  # DTMF key-press feedback while dialling
TONE_FRAME_MS = 20
PREVIOUS_CLEANUP_S = 1.0  # a cancelled activity cleans up in a few loop turns; never wait longer
HELLO_WAIT_S = 3.0  # after speech over the dial tone, greet at the latest this much later
# an unclear short burst over the persona waits this long for the caller to go on ("Stop, ...":
# the pause after the first word is 0.2-0.6 s in the bench's voices; a speaker waits about that)
UNCLEAR_WAIT_S = 1.0

# The call on one screen. Each activity makes the call's state while it plays, and says what
# follows when it ends by itself (None: it plays until something replaces it).
ACTIVITIES: dict[str, tuple[CallState, bool]] = {
    # name: (state while it plays, listen when it ends)
    "dial_tone": (CallState.DIAL_TONE, False),
    "dialing": (CallState.DIALING, False),  # key feedback; the inter-digit timer moves on
    "ringback": (CallState.RINGBACK, True),  # ringback, then the new persona's greeting
    "greeting": (CallState.GREETING, True),
    "turn": (CallState.THINKING, True),  # SPEAKING from the reply's first sound
    "announcement": (CallState.ANNOUNCEMENT, True),
    "idle_prompt": (CallState.ANNOUNCEMENT, True),
    "goodbye": (CallState.GOODBYE, False),  # goodbye, then the howler until on-hook
}
# where what the caller says starts a turn: while the persona is still thinking (nothing said
# yet) the caller's next words join the turn they belong to
HEARS_SPEECH = frozenset({CallState.LISTENING, CallState.THINKING})
# where the persona's voice stops for the caller's (with barge-in): speech longer than a
# backchannel (SpeechSustained) stops it and is then heard as in LISTENING
BARGE_IN_STATES = frozenset({CallState.SPEAKING, CallState.GREETING})
# where the call takes no more input: only hanging up ends it
FINAL = frozenset({CallState.GOODBYE, CallState.HOWLER, CallState.ENDED})
# where the earpiece plays nothing the mic could take for the caller (tones are not speech)
OPEN_MIC = frozenset({CallState.DIAL_TONE, CallState.DIALING, CallState.LISTENING})


def _ready(transcript: Transcript) -> asyncio.Future[Transcript]:
    """A transcript already made, as the eager one a turn awaits."""
    done: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
    done.set_result(transcript)
    return done


def joined(earlier: Heard | None, heard: Heard) -> Heard:
    """The caller went on before hearing any answer: one turn, all of what they said. The eager
    transcript stays when it was made on exactly that audio (the listener's `context` is the
    held turn's), else Whisper hears the whole again."""
    empty = np.zeros(0, dtype=np.int16)
    if earlier is None:
        if len(heard.context) == 0:
            return heard
        return dataclasses.replace(heard, context=empty, transcript=None)  # answered meanwhile
    same = len(heard.context) == len(earlier.pcm)
    pcm = np.concatenate([earlier.pcm, heard.pcm])
    transcript = heard.transcript if same else None
    return dataclasses.replace(heard, pcm=pcm, context=empty, transcript=transcript)


def opening(heard: Heard, text: str) -> Heard:
    """ "Actually," over the persona, and the caller paused: the turn works at once but speaks
    only at the silence limit (at least `UNCLEAR_WAIT_S` after they stopped), unless they go on;
    then their words join it. A question or a whole sentence is answered at once."""
    if not only_opens(text):
        return heard
    limit_at = max(heard.limit_at, heard.speech_end + UNCLEAR_WAIT_S)
    return dataclasses.replace(heard, tentative=True, limit_at=limit_at)


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
    """Feed it events with `post` and mic frames with `hear`; run it with `run`; hang up with
    `interrupt()` and a cancel of its task."""

    def __init__(
        self,
        call_id: str,
        deps: TurnDeps,
        personas: PersonaBook,
        options: CallOptions,
        endpointer: Endpointer,
        *,
        on_state: Callable[[CallState], None] | None = None,
    ) -> None:
        self.call_id = call_id
        self.deps = deps
        self.personas = personas
        self.options = options
        self.settings = options.call
        self.log = CallLog(call_id)
        self.persona = first_persona(personas, options.call)
        self.conversation = self._conversation_for(self.persona)
        self.state = CallState.DIAL_TONE
        self._endpointer = endpointer
        endpointer.watch(self._poll)
        self._on_state = on_state
        self._inbox: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._activity: asyncio.Task[None] | None = None
        self._activity_name = ""
        self._background: set[asyncio.Task[None]] = set()
        self._warming: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._read: list[Message] = []  # the history the model was last given to read ahead
        self._tokens = itertools.count(1)
        self._activity_token = 0
        self._timers: dict[Timer, tuple[int, asyncio.TimerHandle]] = {}
        self._digits = ""
        self._greeted = False
        self._idle_stage = 0
        self._turn: Turn | None = None
        self._held: Heard | None = None  # what the caller said before going on (see turn_held)
        # short speech over the persona waiting to see if the caller goes on (_keep_unclear):
        # the burst(s), the words heard so far, and why it is ignored if nothing follows
        self._unclear: tuple[Heard, str, str] | None = None
        self._caller_talking = False  # between the VAD's start of speech and its end

    # -- inputs -------------------------------------------------------------------------------

    def post(self, event: CallEvent) -> None:
        """Deliver an event (on the loop's thread)."""
        self._inbox.put_nowait(event)

    def hear(self, frame: Pcm, words: Pcm | None = None) -> None:
        """One mic frame: the endpointer cuts utterances, gated while our own voice plays.
        `words`: the same frame as Whisper should hear it (another echo filter; None: `frame`)."""
        sounding = self.deps.sink.playing  # the dial tone, say, with the mic open
        for event in self._endpointer.feed(frame, self._gated, words, sounding):
            self.post(event)

    @property
    def _gated(self) -> bool:
        """Our own voice is in the earpiece and the mic is not open to the caller."""
        return self.deps.sink.playing and self.state not in OPEN_MIC

    def _poll(self) -> None:
        """The endpointer got an answer between frames (the turn model's verdict); after the
        hang-up nobody listens, and nothing may start (Whisper on a pause) for a gone call."""
        if self.state is CallState.ENDED:
            return
        for event in self._endpointer.poll(self._gated):
            self.post(event)

    @property
    def plays_key_tone(self) -> bool:
        """Our DTMF key feedback is in the earpiece (the in-band keypad must not dial it)."""
        return self.state is CallState.DIALING and self.deps.sink.playing

    def interrupt(self) -> None:
        """Stop whatever is making sound, at once: cancel the activity, silence the earpiece.

        Synchronous, so it is safe in cancel handlers; the cancelled activity finishes its
        clean-up on its own (tracked until `wait_ended`).
        """
        activity, self._activity = self._activity, None
        if activity is not None and not activity.done():
            activity.cancel()
            self._track(activity)
        self.deps.sink.stop()

    async def say_goodbye(self) -> None:
        """The service is stopping: end timers and activity, then the goodbye alone, to its end."""
        self._disarm_all()
        self._start("goodbye", lambda: self._announce("goodbye"))
        activity = self._activity
        if activity is not None:
            await asyncio.wait({activity})

    # -- the call's own task ------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled (on-hook): dispatch events; the activity task makes the sound."""
        self.log.event("off_hook", persona=self.persona.id, options=self.options.as_report())
        structlog.contextvars.bind_contextvars(persona=self.persona.id)  # this task's context
        log.info("call_started")
        if self._on_state is not None:
            self._on_state(self.state)
        self._arm(Timer.MAX_CALL, self.settings.max_call_s)
        self._arm(Timer.DIAL_TONE, self.settings.dial_tone_s)
        self._start("dial_tone", self._dial_tone)
        # the last call may have left another persona's prefix in the model's cache
        self._warm_up(self.conversation)
        try:
            while True:
                await self._dispatch(await self._inbox.get())
        finally:
            self._hang_up()

    def _hang_up(self) -> None:
        """Synchronous on purpose: it runs inside a cancelled task, with no awaits left."""
        self._disarm_all()
        self.interrupt()
        for task in self._background:
            task.cancel()
        self._set_state(CallState.ENDED)
        self.log.event("on_hook")

    async def wait_ended(self, timeout_s: float = 2.0) -> bool:
        """After hanging up: wait until every task of the call has really finished."""
        tasks = set(self._background)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a task of this call that is not the activity, until it ends."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _dispatch(self, event: CallEvent) -> None:
        match event:
            case ActivityDone(name=name, token=token):
                if token == self._activity_token and ACTIVITIES[name][1]:
                    self._unclear_waited()  # the persona finished: nothing left to interrupt
                    self._listen()
            case TimerFired(timer=timer, token=token):
                if self._timers.get(timer, (None,))[0] == token:
                    del self._timers[timer]
                    self._on_timer(timer)
            case _ if self.state in FINAL:
                self.log.event("input_ignored", reason=self.state.value)
            case KeyPress(key=key):
                await self._on_key(key)
            case SpeechStarted():
                await self._on_speech_started()
            case SpeechSustained():
                await self._on_speech_sustained()
            case SpeechDropped():
                self._caller_talking = False
                self._drop_unclear()  # what it might have begun was a blip too
                self._on_speech_dropped()
            case Heard():
                self._caller_talking = False
                self._on_heard(event)
            case ShortSpeech(heard=heard, transcript=transcript):
                await self._on_short_speech(heard, transcript)
            case HelpNeeded(heard=heard, transcript=transcript):
                self.log.event("help_needed_before_greeting")
                self._start_turn(dataclasses.replace(heard, transcript=_ready(transcript)))

    # -- events -------------------------------------------------------------------------------

    async def _on_key(self, key: str) -> None:
        self.log.event("key", key=key)
        self._idle_stage = 0
        self._drop_unclear()  # a key comes between: a burst before it is not part of what follows
        if key == "#":
            if self._digits:
                self._dial()
            elif self._activity_name in ("turn", "greeting"):
                self.log.event("interrupt")
                await self._stop_activity()
                self._listen()
            return
        if key == "*":
            self._digits = ""
            self._switch(self.personas.by_key(OPERATOR_KEY) or self.personas.operator)
            return
        if not key.isdigit():
            return
        persona = self.personas.by_key(key) if not self._digits else None
        if persona is not None:
            self._switch(persona)
            return
        self._digits += key
        self._disarm(Timer.DIAL_TONE)
        if len(self._digits) >= NUMBER_LENGTH:
            self._dial()
            return
        self._arm(Timer.INTER_DIGIT, self.settings.inter_digit_timeout_s)
        self._start("dialing", lambda: self._key_feedback(key))

    async def _on_speech_started(self) -> None:
        self._idle_stage = 0
        self._caller_talking = True
        if self.options.barge_in and self.state in BARGE_IN_STATES:
            # the caller speaks over the persona: fall silent at once, as a person would; more
            # than a backchannel (SpeechSustained) stops it, anything less lets it go on
            self.deps.sink.mute(True)
            self.log.event("persona_paused")
        elif self.state is CallState.THINKING and self._turn is not None:
            # the caller goes on before any answer: hold what they said, join what follows
            await self._hold(self._fold(self._turn))
        elif self.state is CallState.DIAL_TONE:
            # the caller says "hello?" over the dial tone: silence, and greet when they stop
            await self._stop_activity()
            self._set_state(CallState.LISTENING)
            self._arm(Timer.DIAL_TONE, HELLO_WAIT_S)
        elif self.state is CallState.LISTENING:
            # push the idle deadline back; a blip the VAD then drops must not stop the timer
            self._arm(Timer.IDLE, self.settings.idle_prompt_s)

    async def _on_speech_sustained(self) -> None:
        """More than a backchannel over the persona's voice (with barge-in): stop it now, as a
        person would; what the caller says becomes the next turn, and the history keeps the
        reply as far as it was heard."""
        if self.options.barge_in and self.state in BARGE_IN_STATES:
            self.log.event("barge_in", over=self._activity_name)
            log.info("barge_in", over=self._activity_name)
            await self._stop_activity()
            self._listen()

    def _on_speech_dropped(self) -> None:
        """The caller's "going on" was a cough or a knock: answer what they had said (or, over
        the persona's voice, let it go on)."""
        if self.state in BARGE_IN_STATES:
            self._resume_persona("blip")
        held, self._held = self._held, None
        if held is not None and self.state is CallState.LISTENING:
            self.log.event("turn_resumed")
            self._start_turn(held)

    def _on_heard(self, heard: Heard) -> None:
        self._idle_stage = 0
        if not self._greeted and self.state is CallState.LISTENING:
            self.log.event("hello_heard")
            self._disarm(Timer.DIAL_TONE)
            self._start("greeting", self._greet)
            self._track(asyncio.ensure_future(self._check_first_words(heard)))
            return
        if self.state not in HEARS_SPEECH:
            if self.options.barge_in and self.state in BARGE_IN_STATES:
                # shorter than a barge-in: the persona stays silent until Whisper says what it was
                self._track(asyncio.ensure_future(self._judge_short_speech(heard)))
                return
            reason = "persona speaking" if self.state in BARGE_IN_STATES else self.state.value
            self.log.event("speech_ignored", reason=reason, seconds=heard.seconds)
            log.info("speech_ignored", reason=reason, seconds=heard.seconds)
            return
        earlier, self._held = self._held, None
        if self.state is CallState.THINKING and self._turn is not None:
            earlier = self._fold(self._turn)  # both parts came before the hold could
        heard = joined(earlier, heard)
        self.log.event("turn_started", joined=earlier is not None, seconds=heard.seconds)
        self._start_turn(heard)

    async def _check_first_words(self, heard: Heard) -> None:
        """Words said over the dial tone only bring the greeting, unless they call for help
        ("I want to end it all" as the first thing said): then they are the first turn."""
        try:
            transcript = await self.deps.transcriber.transcribe(heard.pcm)
        except Exception as exc:  # the greeting goes on; nothing else depends on this
            log.warning("first_words_unheard", error=repr(exc))
            return
        if transcript.is_speech and recognise(transcript.text) is not None:
            self.post(HelpNeeded(heard, transcript))

    async def _judge_short_speech(self, heard: Heard) -> None:
        try:
            # the turn these words may join awaits the same eager run
            transcript = await heard.transcribed(self.deps.transcriber)
        except Exception as exc:  # unheard: taken for a backchannel, the persona goes on
            log.warning("short_speech_unheard", error=repr(exc))
            transcript = Transcript("", 1.0, 0.0)
        self.post(ShortSpeech(heard, transcript))

    async def _on_short_speech(self, heard: Heard, transcript: Transcript) -> None:
        text = transcript.text.strip() if transcript.is_speech else ""
        over_persona = self.state in BARGE_IN_STATES
        # over the persona, nothing heard is not a backchannel: Whisper wrote nothing for a
        # clipped "Stop," as often as for a cough; it waits like any unclear burst
        backchannel = is_backchannel(text) and bool(text or not over_persona)
        so_far = f"{self._unclear[1]} {text}" if self._unclear is not None else text
        if over_persona and (backchannel or not takes_the_floor(so_far)):
            # a listener's noise, or the first word of "Stop, I need a taxi" misheard on its own
            reason = "backchannel" if backchannel and is_backchannel(so_far) else "short_unclear"
            self._keep_unclear(heard, so_far, reason)
            if not self._caller_talking:  # they paused after it: the persona goes on meanwhile
                self._resume_persona(reason)
            return
        if backchannel:  # not over the persona (that waited above)
            self._drop_unclear()
            self._ignored("backchannel", heard.seconds, len(text.split()))
            return
        heard = dataclasses.replace(heard, transcript=_ready(transcript))
        if self.state is CallState.THINKING and self._turn is not None:
            # the words after it already made a turn before Whisper had judged this: it came
            # first, so it goes in front of them, as one turn
            self.log.event("turn_started", joined=True, seconds=heard.seconds)
            self._start_turn(joined(heard, self._fold(self._turn)))
            return
        if self.state not in BARGE_IN_STATES and self.state is not CallState.LISTENING:
            return  # a key, a switch or a goodbye came first
        held = self._caller_talking  # "Stop, ..." and they went on: one turn with what follows
        self.log.event("barge_in", over=self._activity_name, short=True, held=held)
        log.info("barge_in", over=self._activity_name, short=True, held=held)
        if not held:
            self._start_turn(opening(heard, so_far))
            return
        await self._hold(heard)

    def _keep_unclear(self, heard: Heard, text: str, reason: str) -> None:
        """Short speech over the persona that does not ask for the turn: a listener's noise
        ("mm-hm"), or the first word of "Stop, I need a taxi" that Whisper misheard on its own
        ("Oh.", "Top", nothing: the pause after "Stop," ended it). Kept for `UNCLEAR_WAIT_S`: if
        the caller goes on and that becomes a turn, this goes in front of it and Whisper hears
        both together; if nothing follows, or a blip or a key, it is forgotten
        (`speech_ignored` with `reason`)."""
        earlier = self._unclear[0] if self._unclear is not None else None
        self._unclear = (joined(earlier, heard) if earlier is not None else heard, text, reason)
        self._arm(Timer.UNCLEAR, UNCLEAR_WAIT_S)
        self.log.event("speech_kept", seconds=heard.seconds, words=len(text.split()))

    def _unclear_waited(self) -> None:
        """Nothing came of it within the wait: it was a listener's noise."""
        if not self._caller_talking:  # else what they are saying now decides
            self._drop_unclear()

    def _drop_unclear(self) -> None:
        if self._unclear is not None:
            heard, text, reason = self._unclear
            self._unclear = None
            self._ignored(reason, heard.seconds, len(text.split()))

    def _ignored(self, reason: str, seconds: float, words: int) -> None:
        self.log.event("speech_ignored", reason=reason, seconds=seconds, words=words)
        log.info("speech_ignored", reason=reason, seconds=seconds, words=words)

    async def _hold(self, heard: Heard) -> None:
        """The caller goes on: stop what the phone is doing, keep what they said for the turn
        their next words make (joined in `_on_heard`)."""
        await self._stop_activity()
        self._held = heard
        self.log.event("turn_held", seconds=heard.seconds)
        self._listen()

    def _fold(self, turn: Turn) -> Heard:
        """The turn still thinking when the caller goes on (nothing of it was heard): its words
        join what they say next, so it is no turn of its own, neither logged as one nor counted
        as cut off (the status page's turns and interruptions); returns what it heard."""
        turn.folded = True
        return turn.heard

    def _resume_persona(self, why: str) -> None:
        """Speech over the persona that was less than a barge-in: it sounds again."""
        if self.options.barge_in:
            self.deps.sink.mute(False)
            self.log.event("persona_resumed", why=why)

    def _start_turn(self, heard: Heard) -> None:
        unclear, self._unclear = self._unclear, None
        if unclear is not None:
            heard = joined(unclear[0], heard)
            self.log.event("unclear_joined", seconds=unclear[0].seconds)
        self._disarm(Timer.IDLE)
        turn = Turn(self.deps, self.persona, self.conversation, heard)
        self._turn = turn
        self._start("turn", lambda: self._run_turn(turn))

    def _on_timer(self, timer: Timer) -> None:
        self.log.event("timer", timer=timer.value)
        if timer is Timer.MAX_CALL:
            self._say_goodbye_and_howl()
        elif timer is Timer.UNCLEAR:
            self._unclear_waited()
        elif self.state in FINAL:
            return
        elif timer is Timer.DIAL_TONE and not self._greeted:
            self._start("greeting", self._greet)
        elif timer is Timer.INTER_DIGIT and self._digits:
            self._dial()
        elif timer is Timer.IDLE and self._caller_talking:
            self._arm(Timer.IDLE, self.settings.idle_prompt_s)  # a long sentence is no silence
        elif timer is Timer.IDLE and self.state is CallState.LISTENING:
            self._idle_stage += 1
            if self._idle_stage == 1:
                self._start("idle_prompt", lambda: self._announce("idle_prompt"))
            else:
                self._say_goodbye_and_howl()

    # -- what the caller hears ----------------------------------------------------------------

    def _listen(self) -> None:
        self.deps.sink.mute(False)  # a reply that ended while the caller spoke over it
        self._set_state(CallState.LISTENING)
        self._activity_name = ""
        self._read_ahead()
        wait = (
            self.settings.idle_prompt_s if self._idle_stage == 0 else self.settings.idle_goodbye_s
        )
        self._arm(Timer.IDLE, wait)

    def _switch(self, persona: Persona) -> None:
        """A new persona: persona and history change together, now; then ringback, greeting.

        The conversation is a new object, so a cut-off turn still finishing its clean-up writes
        into the old persona's history, never into the new one.
        """
        self.log.event("persona", persona=persona.id)
        log.info("persona_switch", persona=persona.id)
        self._disarm(Timer.DIAL_TONE)
        self._disarm(Timer.INTER_DIGIT)
        self._digits = ""
        self.persona = persona
        self.conversation = self._conversation_for(persona)
        self._turn = None
        structlog.contextvars.bind_contextvars(persona=persona.id)
        self._warm_up(self.conversation)
        self._start("ringback", lambda: self._ring_then_greet(persona))

    def _dial(self) -> None:
        digits, self._digits = self._digits, ""
        self._disarm(Timer.INTER_DIGIT)
        self.log.event("dialed", number=digits)
        persona = self.personas.by_number(digits)
        if persona is not None:
            self._switch(persona)
        else:
            log.info("not_in_service", number=digits)
            self._start("announcement", self._not_in_service)

    def _say_goodbye_and_howl(self) -> None:
        self._disarm_all()
        self._start("goodbye", self._goodbye_then_howl)

    async def _dial_tone(self) -> None:
        await play_frames(self.deps.sink, self._tone_stream(tones.DIAL))

    async def _greet(self) -> None:
        self._greeted = True
        await play_and_wait(self.deps.sink, await self.deps.lines.line(self.persona, "greeting"))

    async def _ring_then_greet(self, persona: Persona) -> None:
        """While the line rings and the persona greets, the model reads the new prompt."""
        rate = self.deps.sink.sample_rate
        await play_and_wait(self.deps.sink, tones.render(tones.RINGBACK, rate, RINGBACK_S))
        self._set_state(CallState.GREETING)
        await self._greet()

    def _warm_up(self, conversation: Conversation) -> None:
        """Prime the model with a persona's fixed prefix (system prompt and examples); a newer
        switch cancels an older warm-up."""
        if self._warming is not None:
            self._warming.cancel()
        self._warming = asyncio.ensure_future(self._warm(conversation))
        self._track(self._warming)

    async def _warm(self, conversation: Conversation) -> None:
        try:
            await self.deps.backend.warm_up(conversation.system_prompt, conversation.examples)
        except LlmError as exc:  # the breaker has it; the first turn gets the fallback if needed
            log.info("warm_up_failed", cause=exc.cause)

    def _read_ahead(self) -> None:
        """After a turn (answered, cut off, or held): the model reads the history as it now
        stands, while the caller thinks or speaks, so the next turn evaluates only the caller's
        new words. A reply cut off or trimmed is stored as heard, not as the model wrote it:
        without this every next turn read its end again (~10 tokens, ~70 ms on two cores)."""
        messages = self.conversation.read_ahead()
        if messages is None or messages == self._read:
            return
        self._read = messages
        if self._reading is not None:
            self._reading.cancel()
        self._reading = asyncio.ensure_future(self._read_history(messages))
        self._track(self._reading)

    async def _read_history(self, messages: list[Message]) -> None:
        try:
            await self.deps.backend.read_ahead(messages)
        except LlmError as exc:  # the next turn finds out, and says so
            log.debug("read_ahead_failed", cause=exc.cause)

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
        structlog.contextvars.bind_contextvars(turn=len(self.log.turns) + 1)  # activity's context
        token = self._activity_token

        def audible() -> None:
            if token == self._activity_token:  # not a turn that was just replaced
                self._endpointer.answered()
                self._set_state(CallState.SPEAKING)

        turn.on_audible = audible
        try:
            record = await turn.run()
        except asyncio.CancelledError:
            if turn.record.heard and not turn.folded:  # cut off (hang-up, `#`, a key)
                self._log_turn(turn.record)  # still a turn of the call
            raise
        if record is not None:
            self._log_turn(record)

    def _log_turn(self, record: TurnRecord) -> None:
        self.log.turns.append(record)
        self.log.event(
            "turn", heard=record.heard, fallback=record.fallback, interrupted=record.interrupted
        )

    # -- the activity task ----------------------------------------------------------------------

    def _start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Replace the current activity with a new one (the old one is interrupted first)."""
        previous = self._activity
        self.interrupt()  # its stop() also ends a mute: the new activity is heard
        if previous is not None and previous.done():
            previous = None
        if name != "turn":
            self._held = None  # a key, a prompt or a goodbye came between: no join across it
            self._drop_unclear()
            self._endpointer.answered()
        self._disarm(Timer.IDLE)
        self._activity_token = token = next(self._tokens)
        self._activity_name = name
        self._set_state(ACTIVITIES[name][0])
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
        """Interrupt the activity and wait for its clean-up (a cut turn writes its history)."""
        previous = self._activity
        self.interrupt()
        self._activity_token = next(self._tokens)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)

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

    def _disarm_all(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _set_state(self, state: CallState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    def _tone_stream(self, plan: tones.TonePlan) -> tones.ToneStream:
        rate = self.deps.sink.sample_rate
        return tones.ToneStream(plan, rate, frame_samples=rate * TONE_FRAME_MS // 1000)

    def _conversation_for(self, persona: Persona) -> Conversation:
        """The persona's memory; its example exchanges only with the full prompt (a model tuned
        on the tag learned the voice from its data and never saw examples in its prompts)."""
        chosen = choose(self.options.prompt_style, self.deps.backend.declared_prompt_style)
        prompt = chosen.system_prompt(persona.prompt_tag, persona.prompt)
        examples = persona.example_pairs if prompt == persona.prompt else ()
        return Conversation(prompt, self.options.history_tokens, examples=examples)
