"""The payphone itself: hook, keypads and microphone feed calls; on-hook ends a call at once.

The phone owns the long-lived streams (hook events, key presses, mic frames) and routes them to
the current call, so a call is a short-lived task with nothing to clean up but itself. The mic is
read all the time (a capture device must never back up) and ignored between calls, except for
in-band DTMF, which reads every frame the call does not mark as its own key tone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

from payphone.call.events import KeyPress
from payphone.call.session import Call
from payphone.hardware.base import AudioSink, AudioSource, HookState, HookSwitch, Keypad
from payphone.log import bind_call, get_logger, ms
from payphone.pcm import Pcm
from payphone.speech.dtmf_keypad import InbandKeypad
from payphone.speech.echo_canceller import EchoCanceller

log = get_logger("phone")

HANGUP_GRACE_S = 2.0

CallFactory = Callable[[str], Call]


class Phone:
    """Takes calls forever: `run` until cancelled."""

    def __init__(
        self,
        hook: HookSwitch,
        keypads: Sequence[Keypad],
        source: AudioSource,
        sink: AudioSink,
        make_call: CallFactory,
        echo: EchoCanceller | None = None,
    ) -> None:
        self.hook = hook
        self.keypads = list(keypads)
        self.inband = [k for k in self.keypads if isinstance(k, InbandKeypad)]
        self.source = source
        self.sink = sink
        self.make_call = make_call
        self.echo = echo
        self.call: Call | None = None
        self.calls_taken = 0
        self._call_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump_hook(), name="phone-hook")
                tg.create_task(self._pump_mic(), name="phone-mic")
                for keypad in self.keypads:
                    tg.create_task(self._pump_keys(keypad), name="phone-keys")
        finally:
            await self.end_call()

    # -- pumps ----------------------------------------------------------------------------------

    async def _pump_hook(self) -> None:
        if self.hook.state is HookState.OFF_HOOK:
            self.start_call()
        async for state in self.hook.events():
            if state is HookState.OFF_HOOK:
                self.start_call()
            else:
                await self.end_call()

    async def _pump_keys(self, keypad: Keypad) -> None:
        async for key in keypad.keys():
            if self.call is not None:
                self.call.post(KeyPress(key, time.monotonic()))
            else:
                log.debug("key_on_hook_ignored", key=key)

    async def _pump_mic(self) -> None:
        if self.echo is None:
            async for frame in self.source.frames():
                await self._take(frame)
            return
        async for frame, played in self.source.frames_with_reference():
            await self._take(frame, played)

    async def _take(self, frame: Pcm, played: Pcm | None = None) -> None:
        """One mic frame, cleaned of the earpiece's echo when the phone cancels it (both filters
        cost well under a millisecond a frame, so they run here, in frame order)."""
        await asyncio.sleep(0)  # a backlog must not starve hang-up, signals and the watchdog
        try:
            if self.echo is None:
                self._hear(frame, frame)
            else:
                self._hear(*self.echo.process(frame, played))
        except Exception as exc:  # one bad frame must not take the phone down
            log.exception("mic_frame_failed", error=repr(exc))

    def _hear(self, frame: Pcm, words: Pcm) -> None:
        """`frame` decides (keys, whether the caller speaks); `words` is what they said."""
        call = self.call
        if call is None or not call.plays_key_tone:  # our own key feedback must not dial again
            for keypad in self.inband:
                keypad.feed(frame)
        if call is not None:
            call.hear(frame, words)

    # -- calls ------------------------------------------------------------------------------------

    def start_call(self) -> None:
        if self._call_task is not None and not self._call_task.done():
            return
        call_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.calls_taken += 1
        if self.echo is not None:
            self.echo.new_call()  # before the dial tone's first frame comes back
        with bind_call(call_id=call_id):
            try:
                call = self.make_call(call_id)
            except Exception as exc:  # no call this time; the next off-hook tries again
                log.exception("call_setup_failed", error=repr(exc))
                return
            self.call = call
            # the task copies the context now, so every event it logs carries the call id
            self._call_task = asyncio.create_task(call.run(), name=f"call-{call_id}")

    async def end_call(self) -> None:
        """On-hook: silence at once, then cancel the call and wait for every task of it."""
        task, call = self._call_task, self.call
        if task is None or call is None:
            return
        started = time.monotonic()
        call.interrupt()
        self.call, self._call_task = None, None
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=HANGUP_GRACE_S)
        if not done:
            log.error("call_task_stuck", call_id=call.call_id)
        if not await call.wait_ended(HANGUP_GRACE_S):
            log.error("call_activity_stuck", call_id=call.call_id)
        log.info(
            "call_ended",
            call_id=call.call_id,
            turns=len(call.log.turns),
            hangup_ms=ms(time.monotonic() - started),
        )

    async def shut_down(self, goodbye_s: float) -> None:
        """The service is stopping: a caller on the line hears the goodbye alone, then silence."""
        call = self.call
        if call is not None:
            try:
                async with asyncio.timeout(goodbye_s):
                    await call.say_goodbye()
            except TimeoutError:
                log.warning("goodbye_cut_short")
        await self.end_call()
