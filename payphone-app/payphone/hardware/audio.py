"""The real microphone and earpiece through PyAudio (PortAudio -> ALSA), kept off the event loop.

One thread per direction does the blocking PortAudio calls, so the device paces the audio and the
asyncio loop only sees finished frames (capture) or hands over buffers (playback). Sample rates
are converted with soxr's streaming resampler, which keeps its filter state across buffers.

A device that is missing or goes away (a USB sound card unplugged) raises OSError in PortAudio:
the thread logs it, closes everything, and opens the device again with exponential back-off up
to `audio.retry_max_s`. PortAudio lists devices only when it initialises, so each attempt starts
a fresh PyAudio instance and a re-plugged card is found again.

The echo canceller's reference: the sink hands every buffer it wrote to its `PlayedTap` with the
moment it starts to sound, and a source given that tap pairs each mic frame with what sounded over
the frame's own instants (`frames_with_reference`). Both moments come from the device's buffer
fill measured right after each read or write (`_Device.output_starts_at`, `input_starts_at`).
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
from payphone.hardware.played_tap import PlayedTap, StreamClock
from payphone.log import get_logger, ms
from payphone.pcm import Pcm

log = get_logger("payphone.hardware.audio")

Direction = Literal["input", "output"]
FIRST_RETRY_S = 0.25
BACKLOG_WARN_FRAMES = 32
# The reference must lead the echo: AEC3 finds and follows an echo that comes some ms after its
# reference, never one that comes before it. So each frame is paired with what sounded from this
# much AFTER the frame's own start. Every timing error left is on the leading side already (the
# DAC's and ADC's own delays, invisible to PortAudio, and the acoustic path all make the echo
# later); the lead covers what is not: a fill reading that is a little off, a driver that moves
# its pointer in jumps. Reading later instants works while the earpiece's output buffer reaches
# further ahead than the lead: its audio is in the tap that long before it sounds (~40 ms with the
# default 20 ms buffers; with `audio.buffer_ms` under ~10 a frame's reference ends in zeros).
REFERENCE_LEAD_MS = 15.0
# The capture stream runs for days: its start is the lowest estimate of the last ~5 s of reads, so
# the device's clock drifting from the system's (~0.5 ms per 5 s at 100 ppm) or an overrun shows.
CAPTURE_CLOCK_READS = 250


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
        self.buffer_frames = 0  # the output buffer's size, measured when it is opened empty

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
            if self.direction == "output":
                latency = float(self.stream.get_output_latency())
                self.buffer_frames = int(self.stream.get_write_available()) or (
                    round(latency * self.settings.device_rate) + self.block
                )
            else:
                latency = float(self.stream.get_input_latency())
            log.info(
                f"audio_{self.direction}_open",
                device=name or "default",
                device_rate=self.settings.device_rate,
                buffer_ms=self.settings.buffer_ms,
                latency_ms=ms(latency),
            )
        except BaseException:
            self._close()
            raise

    def close(self) -> None:
        with _PORTAUDIO:
            self._close()

    def output_starts_at(self, frames: int) -> float:
        """When the first of the `frames` a blocking write just handed over starts to sound.

        After the write the device buffer holds `buffer_frames` minus what is writable, the new
        frames last, so they start once the rest ahead of them has played: PortAudio's output
        latency (buffer size less one period, for ALSA) corrected by the buffer's real fill.
        The fill is read before the clock, so every error makes the estimate late, never early
        (a pause between the two; a driver that moves its pointer a period at a time): the tap
        keeps the earliest. Not counted: the DAC's own delay (the sound is later still).
        """
        writable = int(self.stream.get_write_available())
        now = time.monotonic()
        if writable < 0:  # a PortAudio error code: take the buffer as empty, the early side (a
            writable = self.buffer_frames  # tap that is early only makes the reference lead)
        queued = max(0, self.buffer_frames - writable)
        return now + (queued - frames) / self.settings.device_rate

    def input_starts_at(self, frames: int) -> float:
        """When the first of the `frames` a blocking read just returned was captured.

        The frames readable now were captured after them, so the read's newest frame is that
        much older than now. PortAudio's input latency is what the buffer can hold, not what it
        holds; the fill is measured instead, before the clock, so every error makes the estimate
        late, never early (the source keeps the earliest). Not counted: the ADC's own delay.
        """
        later = int(self.stream.get_read_available())
        now = time.monotonic()
        if later < 0:  # a PortAudio error code: take nothing as waiting, the late side (a frame
            later = 0  # dated late only makes its reference lead)
        return now - (later + frames) / self.settings.device_rate

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

    With a `tap` (the earpiece's `PyAudioSink.tap`), each frame comes with the reference for the
    echo canceller: what the earpiece sounded over the frame's instants, `reference_lead_ms`
    later (so the reference leads the echo; see REFERENCE_LEAD_MS). A frame's instants are
    counted from its stream's start on the monotonic clock (`StreamClock` over every read), so
    they never jitter from frame to frame.
    """

    def __init__(
        self,
        settings: AudioSettings,
        sample_rate: int = 16000,
        frame_ms: int = 30,
        tap: PlayedTap | None = None,
        reference_lead_ms: float = REFERENCE_LEAD_MS,
    ) -> None:
        if tap is not None and tap.sample_rate != sample_rate:
            raise ValueError(f"the tap's rate {tap.sample_rate} is not the mic's {sample_rate}")
        self.settings = settings
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.tap = tap
        self.reference_lead_s = reference_lead_ms / 1000.0
        self._queue: asyncio.Queue[tuple[Pcm, Pcm | None]] = asyncio.Queue()
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
            frame, _ = await self._queue.get()
            yield frame

    async def frames_with_reference(self) -> AsyncIterator[tuple[Pcm, Pcm | None]]:
        """Each frame with what the earpiece sounded meanwhile (None without a tap).

        Frames and pairs come from one queue: read either this or `frames()`, not both.
        """
        self.start()
        while True:
            yield await self._queue.get()

    @property
    def backlog(self) -> int:
        """Frames captured but not yet taken by the consumer."""
        return self._queue.qsize()

    def _deliver(self, frames: list[tuple[Pcm, Pcm | None]]) -> None:
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

    def _reference(self, stream_start: float, index: int) -> Pcm | None:
        """The tap's span for the frame starting at output sample `index` of the stream."""
        if self.tap is None:
            return None
        at = stream_start + index / self.sample_rate + self.reference_lead_s
        return self.tap.span(at, self.frame_samples)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        device = _Device(self.settings, "input")
        rate = self.settings.device_rate
        while device.open_with_retry(self._stop):
            resampler = (
                soxr.ResampleStream(rate, self.sample_rate, 1, dtype="int16")
                if rate != self.sample_rate
                else None
            )
            # a new stream: its samples are timed from its own start (a partial frame of the
            # previous one, < 1 frame after a lost device, is dropped with it)
            pending = np.zeros(0, dtype=np.int16)
            clock = StreamClock(window=CAPTURE_CLOCK_READS)
            stream_start = 0.0
            read = 0  # device samples read from this stream
            cut = 0  # output samples of this stream already cut into frames
            try:
                while not self._stop.is_set():
                    raw = device.stream.read(device.block, exception_on_overflow=False)
                    samples = np.frombuffer(raw, dtype=np.int16)
                    if self.tap is not None:
                        began = device.input_starts_at(len(samples))
                        stream_start = clock.update(began - read / rate)
                    read += len(samples)
                    if resampler is not None:
                        samples = resampler.resample_chunk(samples)
                    pending = np.concatenate([pending, samples])
                    whole = len(pending) - len(pending) % self.frame_samples
                    if whole:
                        frames = [
                            (
                                pending[i : i + self.frame_samples].copy(),
                                self._reference(stream_start, cut + i),
                            )
                            for i in range(0, whole, self.frame_samples)
                        ]
                        pending = pending[whole:]
                        cut += whole
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

    `tap` records what the device really took and when it sounds, at `reference_rate` (the
    mic's): give it to the `PyAudioSource` as the echo canceller's reference. After `stop()` it
    holds only what the device still had (the buffer in flight and the device's own buffer, which
    do sound), then silence; a closed or lost device cuts it at once.
    """

    def __init__(
        self,
        settings: AudioSettings,
        sample_rate: int = 22050,
        max_queued_ms: int = 200,
        reference_rate: int = 16000,
    ) -> None:
        self.settings = settings
        # a gap shorter than two periods is within the timing estimates' noise: not a gap
        self.tap = PlayedTap(
            settings.device_rate, reference_rate, gap_ms=max(40.0, 2.0 * settings.buffer_ms)
        )
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
                        self.tap.played(sound, device.output_starts_at(len(sound)))  # as heard
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
                self.tap.cut(time.monotonic())  # what the device still held never sounds

    async def aclose(self) -> None:
        self.stop()
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
