"""`payphone simulate --interactive`: drive the simulated phone from the keyboard.

Commands, one per line:  `o` lift the handset, `h` hang up, `k 2` press keys, `t 555` key tones
into the mouthpiece, `w 2` wait, `q` quit. With a microphone the caller talks into it; without
one, any other line is said into the mouthpiece by Piper. Replies play on the speakers when there
are any, and are always recorded to `call.wav` with the report, as `simulate` does.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from rich.console import Console

from payphone.call.options import CallOptions, first_persona
from payphone.config import Settings
from payphone.personas.loader import load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.recording import MicTape, build_report, write_call_wav, write_report
from payphone.sim.rig import Rig, build_rig
from payphone.sim.runner import MIC_RATE, ScriptRunner
from payphone.sim.script import Step
from payphone.sim.simulate import print_summary, speak_as_caller
from payphone.stages import load_stages

if TYPE_CHECKING:
    from payphone.hardware.audio import PyAudioSink

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


def has_device(direction: str) -> bool:
    """Whether PortAudio has a default input or output device here."""
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        if direction == "input":
            pa.get_default_input_device_info()
        else:
            pa.get_default_output_device_info()
    except OSError:
        return False
    finally:
        pa.terminate()
    return True


async def _microphone(
    settings: Settings, rig: Rig, tape: MicTape, speakers: PyAudioSink | None
) -> None:
    """The computer's mic into the phone, each frame with what the speakers really played over
    it (their `PlayedTap`), so the echo canceller hears the room's echo with its reference."""
    from payphone.hardware.audio import PyAudioSource

    tap = speakers.tap if speakers is not None else None
    source = PyAudioSource(settings.audio, MIC_RATE, settings.vad.frame_ms, tap=tap)
    try:
        async for frame, reference in source.frames_with_reference():
            tape.record(frame)
            rig.mic.push(frame, reference)
    finally:
        await source.aclose()


async def _speakers(speakers: PyAudioSink, rig: Rig) -> None:
    """Forward what the simulated earpiece plays to the computer's speakers, as it plays."""
    played = 0
    try:
        while True:
            while played < len(rig.sink.heard):
                await speakers.play(rig.sink.heard[played].pcm)
                played += 1
            await asyncio.sleep(0.01)
    finally:
        speakers.stop()
        await speakers.aclose()


async def interactive(
    settings: Settings, out_dir: object, console: Console, echo: HandsetEcho | None = None
) -> None:
    """Run the keyboard loop; `echo`: the earpiece leaks back into the mouthpiece."""
    from pathlib import Path

    out = Path(str(out_dir))
    book = load_personas(settings.personas.user_dir)
    mic, speakers = (
        await asyncio.to_thread(has_device, "input"),
        await asyncio.to_thread(has_device, "output"),
    )
    stages = await load_stages(settings, first_persona(book, settings.call), list(book))
    rig = build_rig(
        stages.for_phone(settings.vad, settings.turn),
        CallOptions.from_settings(settings),
        personas=book,
        live_mic=mic,
        mic_frame_ms=settings.vad.frame_ms,  # the real mic's frames, each with its reference
        echo=echo,
    )
    task = await rig.start()
    tape = MicTape(MIC_RATE)
    runner = ScriptRunner(rig, tape, fast=False)
    sink = None
    if speakers:
        from payphone.hardware.audio import PyAudioSink

        sink = PyAudioSink(settings.audio, rig.sink.sample_rate)
    helpers = [asyncio.create_task(_microphone(settings, rig, tape, sink))] if mic else []
    if sink is not None:
        helpers.append(asyncio.create_task(_speakers(sink, rig)))
    console.print(HELP)
    console.print(
        f"microphone: {'yes' if mic else 'none, type what the caller says'}; "
        f"speakers: {'yes' if speakers else 'none (listen to call.wav afterwards)'}"
    )
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
            elif line and not mic:
                await runner.feed(await speak_as_caller(stages.synthesizer, line))
            call = rig.phone.call
            console.print(
                f"[dim]{call.persona.name}: {call.state.value}[/dim]"
                if call
                else "[dim]on hook[/dim]"
            )
    finally:
        if rig.phone.call is not None:
            await runner.step(Step("onhook", 0))
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.sink.aclose()
        rig.hook.close()
        await stages.aclose()
    report = build_report([call.log for call in rig.calls], rig.sink.underruns)
    write_call_wav(out / "call.wav", rig.sink, tape)
    write_report(out / "report.json", report)
    print_summary(report, console)
    console.print(f"recording: {out / 'call.wav'}; report: {out / 'report.json'}")
