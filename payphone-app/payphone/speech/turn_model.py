"""End of turn from the sound of the caller's voice: Smart Turn v3 (Pipecat's ONNX model).

The model hears the last 8 s of the caller's utterance (16 kHz, zero-padded at the start when
shorter) as a Whisper-style 80-bin log-mel spectrogram and answers with the probability that the
caller has finished their turn: falling intonation and a complete phrase score high, "I was
wondering if you could..." scores low. The phone asks it after a short pause (`turn.pause_ms`)
and keeps listening when it says "not yet"; the silence rule (`turn.max_silence_ms`) still ends
every turn. Without the model (`turn.model = ""`, a missing file, a file that does not load)
`load_turn_model` says why once and returns None: the silence rule alone decides.

Features: the waveform is normalised to zero mean and unit variance over the whole 8 s window
(the model was trained with Whisper's feature extractor at `do_normalize=True`), then
faster-whisper's numpy `FeatureExtractor` computes the log-mel spectrogram (the same filterbank,
window, log floor and scaling as Whisper's).

`SmartTurn.predict` is blocking CPU work (about 10-65 ms, depending on the machine and threads):
call it from a worker thread (`asyncio.to_thread`), never on the event loop. One session may be
used from several threads at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
from faster_whisper.feature_extractor import FeatureExtractor

from payphone.config import Settings
from payphone.download import DownloadError
from payphone.log import get_logger, ms
from payphone.models import ModelNotFound, resolve_turn_model
from payphone.pcm import Pcm

log = get_logger("payphone.speech.turn_model")

SAMPLE_RATE = 16000
WINDOW_S = 8
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_S
N_MELS = 80
HOP = 160
N_FFT = 400  # Whisper's STFT window
N_FRAMES = WINDOW_SAMPLES // HOP  # 800
INPUT_NAME = "input_features"
VARIANCE_FLOOR = 1e-7  # Whisper's extractor adds this before the square root

Features = npt.NDArray[np.float32]


class TurnModelError(Exception):
    """The file loads in onnxruntime but is not a Smart Turn model (wrong input or output)."""


def window(pcm: Pcm) -> npt.NDArray[np.float32]:
    """The last 8 s of `pcm` as float in [-1, 1), zero-padded at the start to exactly 8 s."""
    audio = np.asarray(pcm[-WINDOW_SAMPLES:], dtype=np.float32) / 32768.0
    if len(audio) < WINDOW_SAMPLES:
        audio = np.concatenate([np.zeros(WINDOW_SAMPLES - len(audio), np.float32), audio])
    return audio


class TurnFeatures:
    """Whisper log-mel features of an 8 s window, as the model was trained on them."""

    def __init__(self) -> None:
        self._extractor = FeatureExtractor(
            feature_size=N_MELS, sampling_rate=SAMPLE_RATE, hop_length=HOP, chunk_length=WINDOW_S
        )

    def __call__(self, pcm: Pcm) -> Features:
        """(80, 800) float32 features of the last 8 s of 16 kHz `pcm`."""
        audio = window(pcm)
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + VARIANCE_FLOOR)
        padded = WINDOW_SAMPLES - min(len(pcm), WINDOW_SAMPLES)
        # the zero padding before a short utterance is one constant value after normalising:
        # its frames are all alike, so only the utterance (and a frame's worth of that constant
        # before it, on the same frame grid) goes through the STFT. 2 s of speech: a quarter of
        # the work, the same features (tests/unit/test_turn_features.py)
        start = max(0, (padded - N_FFT) // HOP * HOP)
        if start == 0:
            return self.log_mel(audio)
        part = self._log_spec(audio[start:])
        constant = self._log_spec(np.full(N_FFT * 2, audio[0], dtype=np.float32))[:, :1]
        if constant.max() > part.max():  # never with speech; exact all the same
            return self.log_mel(audio)
        frames = np.concatenate([np.repeat(constant, start // HOP, axis=1), part], axis=1)
        return _scaled(frames)

    def log_mel(self, audio: npt.NDArray[np.float32]) -> Features:
        """The whole window through the extractor (what the model was trained on)."""
        # padding=0: the window already has its length; the extractor drops the last frame
        return np.asarray(self._extractor(audio, padding=0), dtype=np.float32)

    def _log_spec(self, audio: npt.NDArray[np.float32]) -> Features:
        """log10 mel power before Whisper's clamp and scaling (undone from the extractor's
        output: exact while no frame is 8 decades under the loudest, as within one clip of a
        constant or of speech with its own padding)."""
        return self.log_mel(audio) * 4.0 - 4.0


def _scaled(log_spec: Features) -> Features:
    """Whisper's clamp (8 decades under the loudest frame) and scaling, over the whole window."""
    clamped = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((clamped + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """The Smart Turn v3 ONNX model, loaded once; `predict` answers P(the turn is complete).

    `predict` blocks for tens of milliseconds: run it in a worker thread.
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        options = onnxruntime.SessionOptions()
        # onnxruntime's arena: the input is always the same 8 s window, so it fills on the first
        # check and stays that size. Without it the large tensors come from fresh mmaps on every
        # check (payphone/memory.py's fixed threshold): 35 ms instead of 20 on two threads.
        options.enable_cpu_mem_arena = True
        options.intra_op_num_threads = threads
        # its threads spin while a check runs and stop the moment it returns: asleep between
        # its ~150 operators they took 44 ms a check here after the idle of a call, spinning 30;
        # spinning on after the check they would take the cores from Whisper (45 ms of CPU per
        # 300 ms idle; 0.1 ms with the stop)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if (
            len(inputs) != 1
            or inputs[0].name != INPUT_NAME
            or list(inputs[0].shape[1:]) != [N_MELS, N_FRAMES]
            or len(outputs) != 1
        ):
            got = ", ".join(f"{i.name}{i.shape}" for i in inputs)
            raise TurnModelError(
                f"{path} is not a Smart Turn v3 model: inputs {got}, "
                f"want {INPUT_NAME}[batch, {N_MELS}, {N_FRAMES}] and one output"
            )
        self._features = TurnFeatures()

    def features(self, pcm: Pcm) -> Features:
        """The model's input for `pcm` (without the batch axis)."""
        return self._features(pcm)

    def predict(self, pcm: Pcm) -> float:
        """P(turn complete) for the caller's utterance so far: 16 kHz int16 mono.

        Only the last 8 s count. Blocking CPU work (tens of ms): call it in a worker thread.
        """
        batch = self._features(pcm)[np.newaxis]
        (probabilities,) = self._session.run(None, {INPUT_NAME: batch})
        return float(np.asarray(probabilities).reshape(-1)[0])


def load_turn_model(settings: Settings) -> SmartTurn | None:
    """The configured end-of-turn model, or None (logged once, with the reason) when there is
    none to use: `turn.model` empty, the file missing, or onnxruntime unable to load it."""
    value = settings.turn.model
    try:
        path = resolve_turn_model(settings)
    except (ModelNotFound, DownloadError, OSError) as exc:
        _fallback(value, str(exc))
        return None
    if path is None:
        _fallback(value, "turn.model is empty")
        return None
    started = time.monotonic()
    try:
        model = SmartTurn(path, settings.turn.threads)
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail...) share no base
        _fallback(value, f"{path} does not load: {type(exc).__name__}: {exc}")
        return None
    log.info("turn_model_loaded", path=str(path), load_ms=ms(time.monotonic() - started))
    return model


def _fallback(value: str, reason: str) -> None:
    log.warning("turn_model_unavailable", model=value, reason=reason, fallback="silence rule only")
