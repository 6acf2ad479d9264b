"""`bench soak`: a Saturday night of abuse, then a count of what is left behind.

Random calls through the real call loop with the real models: hang-ups at random moments, key
storms, noise, silence, long speech, and model faults injected into the chat stream. Afterwards:
calls completed, errors logged, call tasks and threads left over, and RSS growth after warm-up.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from payphone.call.options import CallOptions
from payphone.config import CallSettings, Settings
from payphone.hardware.base import HookState
from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.log import setup_logging
from payphone.memory import freeze_after_start
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.rig import Rig, build_rig
from payphone.sim.simulate import speak_as_caller
from payphone.stages import load_stages
from payphone.streams import closing

LINES = (
    "Hello, is anybody there?",
    "Tell me a joke about a cat.",
    "What is the weather like tomorrow?",
    "Can you connect me to Grandma Mae please?",
)
WARM_UP_CALLS = 20  # arenas (onnxruntime, CTranslate2, malloc) reach their high-water mark first
FAULTS = ("refused", "stall_mid_stream", "error_line", "server_error")


class ErrorCounter(io.StringIO):
    """A log stream that counts error-level JSON lines (and keeps them for the report)."""

    def __init__(self) -> None:
        super().__init__()
        self.error_lines: list[str] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            try:
                level = json.loads(line).get("level")
            except json.JSONDecodeError:
                continue
            if level in ("error", "critical"):
                self.error_lines.append(line[:300])
        return len(text)


@dataclass
class FaultyBackend(ChatBackend):
    """The real backend, but some streams fail as a dead Pi #2 would."""

    inner: ChatBackend
    rng: random.Random
    fault_share: float = 0.2
    faults: int = 0

    def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        return self._stream(messages, options)

    async def _stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        fail_after = self.rng.randint(0, 12) if self.rng.random() < self.fault_share else None
        count = 0
        stream = self.inner.stream(messages, options)
        async with closing(stream):
            async for piece in stream:
                if fail_after is not None and count >= fail_after:
                    self.faults += 1
                    raise LlmError(self.rng.choice(FAULTS), "injected by bench soak")
                count += 1
                yield piece


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 1e6


async def _one_call(rig: Rig, rng: random.Random, speech: list[Pcm]) -> None:
    rig.lift()
    await rig.wait_hook(HookState.OFF_HOOK)
    await asyncio.sleep(rng.uniform(0.0, 3.0))  # sometimes over the dial tone, mostly after
    for _ in range(rng.randint(2, 6)):
        action = rng.choice(["speak", "speak", "long", "noise", "silence", "keys", "key"])
        if action == "speak":
            rig.mic.push(rng.choice(speech))
        elif action == "long":
            rig.mic.push(np.concatenate(speech * 2))
        elif action == "noise":
            hiss = np.random.default_rng(rng.randint(0, 9999)).standard_normal(16000) * 800
            rig.mic.push(hiss.astype(np.int16))
        elif action == "keys":
            for _ in range(rng.randint(5, 15)):
                rig.keypad.press(rng.choice("0123456789*#"))
                await asyncio.sleep(rng.uniform(0, 0.05))
        elif action == "key":
            rig.keypad.press(rng.choice("0123*#"))
        await asyncio.sleep(rng.uniform(0.2, 4.0))
    rig.replace()
    await rig.wait_hook(HookState.ON_HOOK)
    while rig.phone.call is not None:
        await asyncio.sleep(0.01)


async def _run(
    settings: Settings, calls: int, seed: int, echo: HandsetEcho | None
) -> dict[str, Any]:
    counter = ErrorCounter()
    setup_logging("warning", "json", counter)
    loop_errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: loop_errors.append(str(context.get("message")))
    )
    rng = random.Random(seed)
    book = load_personas(settings.personas.user_dir)
    stages = await load_stages(settings, book.operator, list(book))
    speech = [await speak_as_caller(stages.synthesizer, text) for text in LINES]
    freeze_after_start()  # as the service does once it has loaded
    backend = FaultyBackend(stages.backend, rng)
    call_settings = CallSettings(dial_tone_s=1.0, idle_prompt_s=3.0, idle_goodbye_s=2.0)
    rig = build_rig(
        replace(stages.for_phone(settings.vad, settings.turn), backend=backend),
        replace(CallOptions.from_settings(settings), call=call_settings),
        personas=book,
        sink_speed=4.0 if echo is None else 1.0,  # an echo needs the earpiece in real time
        keep_heard=False,  # a recording of 200 calls is not a leak of the phone's
        echo=echo,
    )
    task = await rig.start()
    started = time.monotonic()
    rss_start = 0.0
    threads_start: Counter[str] = Counter()
    turns = 0
    for number in range(1, calls + 1):
        await _one_call(rig, rng, speech)
        turns += sum(len(call.log.turns) for call in rig.calls)
        rig.calls.clear()  # the bench's own record of finished calls, not the phone's
        if number == min(WARM_UP_CALLS, calls):
            rss_start, threads_start = rss_mb(), _thread_names()
        if number % 10 == 0:
            print(
                f"{number} calls, {time.monotonic() - started:.0f} s, rss {rss_mb():.0f} MB",
                flush=True,
            )
    await asyncio.sleep(1.0)  # worker threads of the last cancelled turn finish
    leftover_tasks = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("call-")]
    threads_left = sorted((_thread_names() - threads_start).elements())
    rss_end = rss_mb()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rig.sink.aclose()
    rig.hook.close()
    await stages.aclose()
    result = {
        "calls": rig.phone.calls_taken,
        "turns": turns,
        "faults_injected": backend.faults,
        "errors": len(counter.error_lines) + len(loop_errors),
        "leftover_call_tasks": len(leftover_tasks),
        "leftover_threads": len(threads_left),
        "leftover_thread_names": threads_left,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_pct": round((rss_end - rss_start) / rss_start * 100, 2) if rss_start else 0.0,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if echo is not None:
        result |= {"echo_db": echo.db, "echo_delay_ms": echo.delay_ms}
    for line in [*counter.error_lines, *loop_errors][:10]:
        print("error:", line)
    print(
        f"{result['calls']} calls, {turns} turns, {backend.faults} faults injected, "
        f"{result['errors']} errors, {len(leftover_tasks)} call tasks and "
        f"{len(threads_left)} threads left {threads_left}, RSS {rss_start:.0f} -> {rss_end:.0f} MB "
        f"({result['rss_growth_pct']}%)"
    )
    return result


def _thread_names() -> Counter[str]:
    """Threads by name: one more at the end says which pool or worker did not finish."""
    return Counter(thread.name for thread in threading.enumerate())


def main(
    settings: Settings, trials: int = 200, seed: int = 7, echo: HandsetEcho | None = None
) -> dict[str, Any]:
    """`echo`: the earpiece leaks back into the mic (and plays in real time, not 4x)."""
    return asyncio.run(_run(settings, trials, seed, echo))
