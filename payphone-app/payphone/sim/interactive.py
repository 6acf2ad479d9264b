"""`payphone simulate --interactive`: drive the simulated phone from the keyboard.

Commands, one per line:  `o` lift the handset, `h` hang up, `k 2` press keys, `t 555` key tones
into the mouthpiece, `w 2` wait, `q` quit; any other line is said into the mouthpiece (spoken by
Piper). What the caller hears is recorded to `call.wav` with the report, as `simulate` does.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import soxr
from rich.console import Console

from payphone.call.listen import VadListener
from payphone.config import Settings
from payphone.personas.loader import load_personas
from payphone.sim.recording import MicTape, build_report, write_call_wav, write_report
from payphone.sim.rig import build_rig
from payphone.sim.runner import MIC_RATE, ScriptRunner
from payphone.sim.script import Step
from payphone.sim.simulate import CALLER_VOICE, print_summary
from payphone.stages import load_stages

HELP = "o=lift  h=hang up  k KEYS=press  t KEYS=tones  w SECONDS=wait  q=quit  other text=say it"


async def _lines() -> asyncio.Queue[str | None]:
    """Stdin lines on a queue, read by the loop itself (no thread left blocking on input)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            queue.put_nowait(None)
        else:
            queue.put_nowait(line.strip())

    loop.add_reader(sys.stdin.fileno(), readable)
    return queue


async def interactive(settings: Settings, out_dir: object, console: Console) -> None:
    from pathlib import Path

    out = Path(str(out_dir))
    book = load_personas(settings.personas.user_dir)
    stages = await load_stages(settings, book.operator, list(book))
    rig = build_rig(
        stages.transcriber,
        stages.backend,
        stages.synthesizer,
        lambda: VadListener(settings.vad),
        call_settings=settings.call,
        speakable=stages.speakable,
        personas=book,
        options=stages.options,
    )
    task = await rig.start()
    tape = MicTape(MIC_RATE)
    runner = ScriptRunner(rig, tape, fast=False)
    console.print(HELP)
    lines = await _lines()
    try:
        while (line := await lines.get()) is not None and line != "q":
            command, _, arg = line.partition(" ")
            if command == "o":
                await runner.step(Step("offhook", 0))
            elif command == "h":
                await runner.step(Step("onhook", 0))
            elif command in ("k", "t") and arg:
                await runner.step(Step("press" if command == "k" else "tones", 0, keys=arg))
            elif command == "w" and arg:
                await runner.step(Step("wait", 0, seconds=float(arg)))
            elif line:
                pcm = await stages.synthesizer.render(line, CALLER_VOICE)
                mono = soxr.resample(
                    pcm.astype(np.float32), stages.synthesizer.sample_rate, MIC_RATE
                )
                await runner.feed(np.clip(mono, -32768, 32767).astype(np.int16))
            call = rig.phone.call
            console.print(
                f"[dim]{call.persona.name}: {call.state.value}[/dim]"
                if call
                else "[dim]on hook[/dim]"
            )
    finally:
        if rig.phone.call is not None:
            await runner.step(Step("onhook", 0))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.sink.aclose()
        rig.hook.close()
        await stages.aclose()
    report = build_report([call.log for call in rig.calls])
    write_call_wav(out / "call.wav", rig.sink.heard, tape, rig.sink.sample_rate)
    write_report(out / "report.json", report)
    print_summary(report, console)
    console.print(f"recording: {out / 'call.wav'}; report: {out / 'report.json'}")
