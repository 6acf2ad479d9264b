"""`payphone simulate` and `payphone demo`: a scripted call with the real models, recorded.

Loads the stages once, runs the script on a simulated phone, writes `call.wav` and
`report.json` to the output folder and prints a readable summary.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from payphone.call.lines import render_line
from payphone.call.options import CallOptions, first_persona
from payphone.config import Settings
from payphone.models import resolve_gguf, resolve_voice
from payphone.pcm import Pcm
from payphone.personas.loader import load_personas
from payphone.sim.echo_path import HandsetEcho
from payphone.sim.gaps import recording_dropouts, reply_gaps
from payphone.sim.recording import build_report, write_call_wav, write_report
from payphone.sim.runner import run_script, to_mic_rate
from payphone.sim.script import load_script
from payphone.speech.base import VoiceSpec
from payphone.stages import load_stages
from payphone.status.page import simulator_status

if TYPE_CHECKING:
    from payphone.speech.tts import PiperSynthesizer

DEMO_DIR = Path(__file__).resolve().parent / "demo"
# steady: the same caller every run, so a simulated call (the demo, the tests) can be replayed
CALLER_VOICE = VoiceSpec(length_scale=0.9, steady=True)
TABLE_REPLY_CHARS = 120  # the summary table's reply column; report.json has every word


async def speak_as_caller(synthesizer: PiperSynthesizer, text: str) -> Pcm:
    """A caller's line spoken by Piper, as the mic would hear it (16 kHz mono)."""
    pcm = await render_line(synthesizer, text, CALLER_VOICE)
    return to_mic_rate(pcm, synthesizer.sample_rate)


def answering_model(settings: Settings) -> str:
    """Which model answered: the GGUF file in-process, or the Ollama model and its host."""
    if settings.llm.backend == "ollama":
        return f"{settings.llm.ollama_model} on {settings.llm.ollama_host}"
    return resolve_gguf(settings, download=False).name


async def simulate(
    settings: Settings,
    script: Path,
    out_dir: Path,
    fast: bool,
    console: Console,
    echo: HandsetEcho | None = None,
    status: bool = False,
) -> dict[str, Any]:
    """Run one script end to end (with the earpiece leaking into the mic with `echo`); returns
    the report. `status`: serve the status page on `status.listen` during the call."""
    steps = load_script(script)
    book = load_personas(settings.personas.user_dir)
    for problem in book.errors:
        console.print(f"[yellow]persona file problem:[/yellow] {problem}")
    started = time.monotonic()
    stages = await load_stages(settings, first_persona(book, settings.call), list(book))
    console.print(
        f"models loaded in {time.monotonic() - started:.1f} s "
        f"(llm {settings.llm.backend}: {stages.llm_status.state})"
    )
    try:
        async with simulator_status(settings, stages, serve=status, say=console.print) as page:
            result = await run_script(
                steps,
                stages.for_phone(settings.vad, settings.turn),
                CallOptions.from_settings(settings),
                personas=book,
                fast=fast,
                echo=echo,
                on_call=page.on_call if page is not None else None,
                on_state=page.on_state if page is not None else None,
            )
    finally:
        await stages.aclose()
    report = {
        "model": answering_model(settings),
        **build_report(result.calls, result.rig.sink.underruns),
    }
    seconds = write_call_wav(out_dir / "call.wav", result.rig.sink, result.tape)
    report["reply_gaps_s"] = await asyncio.to_thread(reply_gaps, out_dir / "call.wav")
    report["earpiece_dropouts"] = len(
        await asyncio.to_thread(recording_dropouts, out_dir / "call.wav")
    )
    write_report(out_dir / "report.json", report)
    print_summary(report, console)
    console.print(f"model: {report['model']}")
    console.print(
        f"recording: {out_dir / 'call.wav'} ({seconds:.1f} s, left: earpiece, right: caller); "
        f"report: {out_dir / 'report.json'}"
    )
    return report


def print_summary(report: dict[str, Any], console: Console) -> None:
    table = Table("#", "persona", "caller said", "persona replied", "first audio", "note")
    for index, turn in enumerate(report["turns"], start=1):
        latency = turn["latency_ms"]
        first_audio = latency.get("first_audio")
        note = "fallback" if turn["fallback"] else ("cut off" if turn["interrupted"] else "")
        if turn.get("help_line"):
            note = f"help line ({turn['help_line']}) {note}".strip()
        table.add_row(
            str(index),
            turn["persona"],
            turn["heard"],
            _shortened(turn["reply"], TABLE_REPLY_CHARS),
            f"{first_audio:.0f} ms" if first_audio is not None else "-",
            note,
        )
    console.print(table)
    calls = len({e["call_id"] for e in report["events"]})
    console.print(f"{calls} call(s), {len(report['turns'])} turn(s)")
    if report.get("underruns") or report.get("earpiece_dropouts"):
        console.print(
            f"earpiece: {len(report.get('underruns', []))} underrun(s) (the reply could not keep "
            f"up), {report.get('earpiece_dropouts', 0)} dropout(s) in call.wav"
        )
    gaps = report.get("reply_gaps_s")
    if gaps:
        heard = ", ".join(f"{gap:.2f}" for gap in gaps)
        console.print(f"caller's last sound -> next earpiece sound, from call.wav: {heard} s")


def _shortened(text: str, limit: int) -> str:
    """`text`, or its first words up to `limit` characters and an ellipsis (the report keeps
    it all): a cut reply must not read as if the persona stopped mid-sentence."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"


def _copy_demo_script(out_dir: Path) -> tuple[Path, dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    script = out_dir / "demo_call.yaml"
    shutil.copy(DEMO_DIR / "demo_call.yaml", script)
    lines = tomllib.loads((DEMO_DIR / "demo_lines.toml").read_text(encoding="utf-8"))
    missing = {name: text for name, text in lines.items() if not (out_dir / f"{name}.wav").exists()}
    return script, missing


async def render_demo_lines(settings: Settings, out_dir: Path) -> Path:
    """Copy the demo script next to WAVs of the caller's lines, spoken by Piper."""
    from payphone.speech.tts import PiperSynthesizer

    script, missing = await asyncio.to_thread(_copy_demo_script, out_dir)
    voice = PiperSynthesizer(
        settings.tts, functools.partial(resolve_voice, settings), telephone_filter=False
    )
    for name, text in missing.items():
        pcm = await render_line(voice, str(text), CALLER_VOICE)
        await asyncio.to_thread(
            _write_mono, out_dir / f"{name}.wav", np.asarray(pcm, dtype=np.int16), voice.sample_rate
        )
    return script


def _write_mono(path: Path, pcm: np.ndarray, rate: int) -> None:
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
