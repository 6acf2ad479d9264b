"""The real microphone and earpiece through PyAudio (PortAudio -> ALSA), kept off the event loop.

One thread per direction does the blocking PortAudio calls, so the device paces the audio and the
asyncio loop only sees finished frames (capture) or hands over buffers (playback). Sample rates
are converted with soxr's streaming resampler, which keeps its filter state across buffers.

A device that is missing or goes away (a USB sound card unplugged) raises OSError in PortAudio:
the thread logs it, closes everything, and opens the device again with exponential back-off up
to `audio.retry_max_s`. PortAudio lists devices only when it initialises, so each attempt starts
a fresh PyAudio instance and a re-plugged card is found again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np
import pyaudio
import soxr

from payphone.config import AudioSettings
from payphone.hardware.base import AudioSink, AudioSource
from payphone.log import get_logger, ms
from payphone.pcm import Pcm

log = get_logger("payphone.hardware.audio")

Direction = Literal["input", "output"]
FIRST_RETRY_S = 0.25
BACKLOG_WARN_FRAMES = 32


class DeviceNotFound(OSError):
    """No PortAudio device matches the configured name or index (yet)."""


def find_device(pa: Any, selector: str | int | None, direction: Direction) -> int | None:
    """The PortAudio index for a name substring or index; None means the system default."""
    if selector is None or selector == "":
        return None
    channels = "maxInputChannels" if direction == "input" else "maxOutputChannels"
    devices = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
    usable = [d for d in devices if int(d[channels]) > 0]
    if isinstance(selector, int) or selector.isdigit():
        index = int(selector)
        if any(int(d["index"]) == index for d in usable):
            return index
    else:
        for device in usable:
            if selector.lower() in str(device["name"]).lower():
                return int(device["index"])
    names = ", ".join(f"{d['index']}: {d['name']}" for d in usable) or "none"
    raise DeviceNotFound(f"no {direction} device matching {selector!r} (have {names})")


class Backoff:
    """Exponential retry delays: FIRST_RETRY_S, doubled each failure, capped at `max_s`."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.delay = min(FIRST_RETRY_S, max_s)

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2.0, self.max_s)
        return delay

    def reset(self) -> None:
        self.delay = min(FIRST_RETRY_S, self.max_s)


# Pa_Initialize / Pa_Terminate and device enumeration are not thread-safe: the capture and the
# playback threads opening at the same moment aborted the process (seen under the service test).
_PORTAUDIO = threading.Lock()


class _Device:
    """Opens one PortAudio stream (and its own PyAudio instance); closes both."""

    def __init__(self, settings: AudioSettings, direction: Direction) -> None:
        self.settings = settings
        self.direction = direction
        self.block = settings.device_rate * settings.buffer_ms // 1000
        self.pa: Any = None
        self.stream: Any = None

    def open(self) -> None:
        with _PORTAUDIO:
            self._open()

    def _open(self) -> None:
        self.pa = pyaudio.PyAudio()
        try:
            selector = (
                self.settings.input_device
                if self.direction == "input"
                else self.settings.output_device
            )
            index = find_device(self.pa, selector, self.direction)
            self.stream = self.pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self.settings.device_rate,
                frames_per_buffer=self.block,
                **{self.direction: True, f"{self.direction}_device_index": index},
            )
            name = self.pa.get_device_info_by_index(index)["name"] if index is not None else None
            log.info(
                f"audio_{self.direction}_open",
                device=name or "default",
                device_rate=self.settings.device_rate,
                buffer_ms=self.settings.buffer_ms,
            )
        except BaseException:
            self._close()
            raise

    def close(self) -> None:
        with _PORTAUDIO:
            self._close()

    def _close(self) -> None:
        stream, pa = self.stream, self.pa
        self.stream = self.pa = None
        if stream is not None:
            try:
                stream.close()
            except OSError as exc:
                log.debug(f"audio_{self.direction}_close_failed", error=str(exc))
        if pa is not None:
            pa.terminate()

    def open_with_retry(
        self, stop: threading.Event, on_fail: Callable[[], None] = lambda: None
    ) -> bool:
        """Open, retrying with back-off until it works (True) or `stop` is set (False)."""
        backoff = Backoff(self.settings.retry_max_s)
        while not stop.is_set():
            try:
                self.open()
                return True
            except OSError as exc:
                delay = backoff.next()
                log.warning(
                    f"audio_{self.direction}_unavailable", error=str(exc), retry_ms=ms(delay)
                )
                on_fail()
                stop.wait(delay)
        return False


class PyAudioSource(AudioSource):
    """The handset microphone: device-rate PCM resampled to `sample_rate`, cut into frames.

    Frames go to the loop with `call_soon_threadsafe` into an unbounded queue: none is dropped.
    If the consumer falls behind, the backlog grows and is logged (at each doubling).
    """

    def __init__(
        self, settings: AudioSettings, sample_rate: int = 16000, frame_ms: int = 30
    ) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._queue: asyncio.Queue[Pcm] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warn_at = BACKLOG_WARN_FRAMES
        self.frames_captured = 0

    def start(self) -> None:
        """Start capturing now (frames() also starts it); call from the event loop."""
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, args=(loop,), name="audio-capture", daemon=True
            )
            self._thread.start()

    async def frames(self) -> AsyncIterator[Pcm]:
        self.start()
        while True:
            yield await self._queue.get()

    @property
    def backlog(self) -> int:
        """Frames captured but not yet taken by the consumer."""
        return self._queue.qsize()

    def _deliver(self, frames: list[Pcm]) -> None:
        for frame in frames:
            self._queue.put_nowait(frame)
        size = self._queue.qsize()
        if size >= self._warn_at:
            log.warning(
                "audio_input_backlog",
                frames=size,
                backlog_ms=size * 1000 * self.frame_samples // self.sample_rate,
            )
            self._warn_at *= 2
        elif size < BACKLOG_WARN_FRAMES:
            self._warn_at = BACKLOG_WARN_FRAMES

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        device = _Device(self.settings, "input")
        pending = np.zeros(0, dtype=np.int16)
        while device.open_with_retry(self._stop):
            resampler = (
                soxr.ResampleStream(self.settings.device_rate, self.sample_rate, 1, dtype="int16")
                if self.settings.device_rate != self.sample_rate
                else None
            )
            try:
                while not self._stop.is_set():
                    raw = device.stream.read(device.block, exception_on_overflow=False)
                    samples = np.frombuffer(raw, dtype=np.int16)
                    if resampler is not None:
                        samples = resampler.resample_chunk(samples)
                    pending = np.concatenate([pending, samples])
                    whole = len(pending) - len(pending) % self.frame_samples
                    if whole:
                        frames = [
                            pending[i : i + self.frame_samples].copy()
                            for i in range(0, whole, self.frame_samples)
                        ]
                        pending = pending[whole:]
                        self.frames_captured += len(frames)
                        try:
                            loop.call_soon_threadsafe(self._deliver, frames)
                        except RuntimeError:  # the loop is gone: nobody is listening any more
                            return
            except OSError as exc:
                log.warning("audio_input_lost", error=str(exc))
            finally:
                device.close()

    async def aclose(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None


class PyAudioSink(AudioSink):
    """The earpiece: PCM at `sample_rate` resampled to the device rate and written buffer by buffer.

    `play` waits while more than `max_queued_ms` is queued (back-pressure), `stop` empties the
    queue at once, so only the buffer being written still sounds. While the device is missing,
    audio is dropped (and logged) at the pace it would have played, so callers never hang on a
    dead earpiece and never spin on it either.
    """

    def __init__(
        self, settings: AudioSettings, sample_rate: int = 22050, max_queued_ms: int = 200
    ) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self.block = settings.device_rate * settings.buffer_ms // 1000
        self.max_queued = settings.device_rate * max_queued_ms // 1000
        self._queue: collections.deque[Pcm] = collections.deque()
        self._queued = 0
        self._writing = False
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._changed = asyncio.Event()
        self._order = asyncio.Lock()
        self._resampler = self._new_resampler()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._down = False
        self._muted = False  # read by the playback thread: zeros go out instead of the audio
        self.frames_written = 0

    def _new_resampler(self) -> Any:
        if self.sample_rate == self.settings.device_rate:
            return None
        return soxr.ResampleStream(self.sample_rate, self.settings.device_rate, 1, dtype="int16")

    @property
    def playing(self) -> bool:
        return self._queued > 0 or self._writing

    @property
    def device_ok(self) -> bool:
        """False from a failed open or a lost device until the device is open again."""
        return not self._down

    def _start(self) -> None:
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, args=(loop,), name="audio-playback", daemon=True
            )
            self._thread.start()

    def _to_device(self, pcm: Pcm, last: bool) -> Pcm:
        data = np.asarray(pcm, dtype=np.int16)
        if self._resampler is None:
            return data
        return np.asarray(self._resampler.resample_chunk(data, last=last), dtype=np.int16)

    async def play(self, pcm: Pcm) -> None:
        self._start()
        if self._down:
            await self._play_into_nothing(pcm)
            return
        generation = self._generation
        async with self._order:
            data = await asyncio.to_thread(self._to_device, pcm, False)
            await self._enqueue(data, generation)

    async def _play_into_nothing(self, pcm: Pcm) -> None:
        """No earpiece right now: the audio is lost, but it takes its time as if played.

        Returning at once would let an endless tone (dial tone, howler) spin the event loop:
        hang-up, SIGTERM and the watchdog would all wait for the device to come back.
        """
        seconds = len(pcm) / self.sample_rate
        log.debug("audio_output_down_dropped", dropped_ms=ms(seconds))
        await asyncio.sleep(seconds)

    async def _enqueue(self, data: Pcm, generation: int) -> None:
        for start in range(0, len(data), self.block):
            while self._queued >= self.max_queued and generation == self._generation:
                self._changed.clear()
                await self._changed.wait()
            if generation != self._generation or self._down:  # stopped, or the device went
                return
            piece = data[start : start + self.block]
            with self._cond:
                self._queue.append(piece)
                self._queued += len(piece)
                self._cond.notify()

    async def drain(self) -> None:
        async with self._order:
            if self._resampler is not None:  # the resampler's last few ms, then a fresh one
                generation = self._generation
                tail = await asyncio.to_thread(self._to_device, np.zeros(0, np.int16), True)
                await self._enqueue(tail, generation)
                self._resampler = self._new_resampler()
        while self.playing:
            self._changed.clear()
            await self._changed.wait()

    def mute(self, muted: bool) -> None:
        """Write silence instead of the queued audio (which keeps its pace), or sound again."""
        self._muted = muted

    def stop(self) -> None:
        self._muted = False
        with self._cond:
            self._generation += 1
            self._queue.clear()
            self._queued = 0
        self._resampler = self._new_resampler()
        self._changed.set()

    def _notify(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed
            loop.call_soon_threadsafe(self._changed.set)

    def _drop_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        self._down = True
        with self._cond:
            dropped = self._queued
            self._queue.clear()
            self._queued = 0
        if dropped:
            log.warning(
                "audio_output_dropped", dropped_ms=dropped * 1000 // self.settings.device_rate
            )
        self._notify(loop)

    def _next_block(self) -> Pcm | None:
        with self._cond:
            while not self._queue and not self._closing.is_set():
                self._cond.wait(0.5)
            if not self._queue:
                return None
            piece = self._queue.popleft()
            self._queued -= len(piece)
            self._writing = True
            return piece

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        device = _Device(self.settings, "output")
        while device.open_with_retry(self._closing, on_fail=lambda: self._drop_queued(loop)):
            self._down = False
            try:
                while True:
                    piece = self._next_block()
                    if piece is None:
                        return
                    self._notify(loop)
                    started = time.monotonic()
                    try:
                        sound = np.zeros_like(piece) if self._muted else piece
                        device.stream.write(sound.tobytes(), exception_on_underflow=False)
                    finally:
                        self._writing = False
                    self.frames_written += len(piece)
                    self._notify(loop)
                    if time.monotonic() - started > 1.0:
                        log.warning(
                            "audio_output_slow_write", write_ms=ms(time.monotonic() - started)
                        )
            except OSError as exc:
                log.warning("audio_output_lost", error=str(exc))
                self._drop_queued(loop)
            finally:
                device.close()

    async def aclose(self) -> None:
        self.stop()
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
