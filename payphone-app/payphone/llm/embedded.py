"""The persona GGUF in-process (one-Pi mode, laptops, the demo) with llama-cpp-python.

The model is loaded once and used by one generation at a time. Generation runs in a worker
thread (llama.cpp holds the CPU for whole tokens) and hands pieces to the event loop through the
one thread bridge (`payphone.bridge.ThreadStream`). Cancelling the stream sets a stop flag: the
worker checks it between tokens, and llama.cpp's abort callback checks it between the graph
nodes of a prompt evaluation, so a hang-up 50 ms into a long prompt stops the evaluation within
milliseconds instead of holding the model for seconds. Whatever the worker produces late is
dropped. The next generation waits for the previous worker on a thread lock, so the model is
never used by two threads at once.

Prompt caching: `Llama.generate` keeps the KV cache of the last prompt and re-evaluates only the
tokens after the longest common prefix. `warm_up` evaluates the fixed prefix (system prompt and
example exchanges) once, so the first reply pays only for the caller's words
(`last_stats.prompt_tokens` shows how many were evaluated).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payphone.bridge import ThreadStream
from payphone.cores import others_working, usable_cores, yield_to_first_audio
from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.llm.prompt_style import Declared, declared_style
from payphone.log import get_logger, ms
from payphone.streams import HIT_LIMIT

log = get_logger("payphone.llm.embedded")

LOAD_FAILED = "load_failed"
GENERATION_FAILED = "generation_failed"


@dataclass(frozen=True)
class GenerationStats:
    """llama.cpp's own counters for one generation (from `llama_perf_context`)."""

    prompt_tokens: int  # prompt tokens evaluated (the cached prefix is not counted)
    generated_tokens: int
    ttft_ms: float | None
    total_ms: float


_LLAMA_LOG: Any = None  # the ctypes callback, kept alive while llama.cpp holds it


def _route_llama_logs(llama_cpp: Any) -> None:
    """llama.cpp's own messages into the structured log instead of raw lines on stderr (an
    aborted prompt evaluation reports itself there: expected, not an error of the phone's)."""
    global _LLAMA_LOG
    if _LLAMA_LOG is not None:
        return

    def route(level: int, text: bytes, _data: Any) -> None:
        line = text.decode("utf-8", errors="replace").strip()
        if line:
            log.debug("llama_cpp_log", level=level, text=line)

    _LLAMA_LOG = llama_cpp.llama_log_callback(route)
    llama_cpp.llama_log_set(_LLAMA_LOG, None)


def _free_sampler(llm: Any) -> None:
    """Free the sampler llama-cpp-python made for the generation that just ended.

    It sits in a reference cycle (its free callback closes over it), so its native memory waits
    for Python's full collection: in `bench soak` RSS rose ~0.6 MB per reply in a sawtooth of up
    to 25 MB. `generate` makes a fresh one each time, so nothing else uses it.
    """
    sampler = getattr(llm, "_sampler", None)
    if sampler is not None:
        llm._sampler = None
        sampler.close()


class EmbeddedBackend(ChatBackend):
    """llama.cpp with the GGUF's own chat template, streaming from a worker thread."""

    def __init__(
        self, model_path: Path, *, n_ctx: int = 2048, n_threads: int = 0, alone_threads: int = 0
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        # while Whisper, Piper or the turn model work (0: half the cores): llama.cpp's threads
        # wait for each other at every step, so beside other busy threads more of them are
        # slower, not faster (all cores beside other work once took a first token 0.19 -> 5-7 s)
        cores = usable_cores()
        self.n_threads = n_threads or max(1, cores // 2)
        # while none of them does (0: every core this process may use): the prompt and the first
        # sentence, mostly (see payphone/cores.py); never fewer than the shared count
        self.alone_threads = max(alone_threads or cores, self.n_threads)
        self._llm: Any = None
        self._load_lock = threading.Lock()  # a thread lock: usable from any event loop
        self._model_lock = threading.Lock()  # one generation at a time, across threads
        self._worker: concurrent.futures.Future[None] | None = None  # the last worker's end
        self._stop: threading.Event | None = None  # the running generation's stop flag
        self._abort_callback: Any = None  # kept alive while llama.cpp holds it
        self.last_stats: GenerationStats | None = None
        self._declared: Declared | None = None  # read from the GGUF's metadata at load

    @property
    def declared_prompt_style(self) -> Declared | None:
        return self._declared

    async def load(self) -> None:
        """Load the GGUF once (in a thread; ~0.1 s for the demo model, seconds for a persona)."""
        if self._llm is not None:
            return
        try:
            await asyncio.to_thread(self._load_sync)
        except (OSError, ValueError, RuntimeError) as exc:
            raise LlmError(LOAD_FAILED, f"{self.model_path}: {exc}") from exc

    def _load_sync(self) -> None:
        import llama_cpp

        with self._load_lock:
            if self._llm is not None:
                return
            started = time.perf_counter()
            self._llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
            _route_llama_logs(llama_cpp)
            self._abort_callback = llama_cpp.ggml_abort_callback(self._should_abort)
            llama_cpp.llama_set_abort_callback(self._llm._ctx.ctx, self._abort_callback, None)
            self._declared = declared_style(self._llm.metadata, f"GGUF {self.model_path.name}")
            log.info(
                "llm_loaded",
                backend="embedded",
                model=self.model_path.name,
                chat_format=self._llm.chat_format,
                prompt_style=self._declared.style,
                load_ms=ms(time.perf_counter() - started),
            )

    def _should_abort(self, _data: Any) -> bool:
        """llama.cpp asks this between graph nodes: stop evaluating for a cancelled stream."""
        stop = self._stop
        return stop is not None and stop.is_set()

    async def probe(self) -> None:
        """Health for the breaker: the model loads."""
        await self.load()

    def count_tokens(self, text: str) -> int:
        """The model's own token count, for `Conversation` budgets (needs `load()` first)."""
        if self._llm is None:
            raise RuntimeError("load() the model first")
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        """Yield reply pieces as the worker thread produces them; cancel stops the worker."""
        await self.load()
        kwargs: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "max_tokens": options.num_predict,
            "temperature": options.temperature,
            "repeat_penalty": options.repeat_penalty,
            "stop": list(options.stop),
            "stream": True,
        }
        if options.seed is not None:
            kwargs["seed"] = options.seed
        reply = ThreadStream(functools.partial(self._generate, kwargs), name="llm-embedded")
        self._worker = reply.finished
        try:
            async for piece in reply:
                yield piece
        except Exception as exc:
            raise LlmError(GENERATION_FAILED, f"{type(exc).__name__}: {exc}") from exc
        finally:
            # the worker stops after the token it is on (or mid-prompt, by the abort callback);
            # its late output is dropped and nobody waits for it here
            reply.stop.set()

    async def read_ahead(self, messages: list[Message]) -> None:
        """The history so far into the KV cache (a reply cut off or trimmed is stored as the
        caller heard it, not as the model wrote it)."""
        async for _ in self.stream(messages, ChatOptions(num_predict=1)):
            pass
        stats = self.last_stats
        log.debug("llm_read_ahead", prompt_tokens=stats.prompt_tokens if stats else None)

    async def warm_up(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        """Evaluate the system prompt and examples so they stay in the KV cache."""
        await self.load()
        started = time.perf_counter()
        system: Message = {"role": "system", "content": system_prompt}
        async for _ in self.stream([system, *examples], ChatOptions(num_predict=1)):
            pass
        stats = self.last_stats
        log.info(
            "llm_warm",
            backend="embedded",
            prompt_tokens=stats.prompt_tokens if stats else None,
            prime_ms=ms(time.perf_counter() - started),
        )

    def _generate(self, kwargs: dict[str, Any], stop: threading.Event) -> Iterator[str]:
        """Runs in the worker thread, holding the model: llama.cpp's pieces as it writes them."""
        import llama_cpp

        with self._model_lock:
            self._stop = stop
            try:
                if stop.is_set():
                    return
                llm = self._llm
                llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
                started = time.perf_counter()
                first: float | None = None
                finish: str | None = None
                self._fit_threads(llama_cpp, llm)
                chunks = llm.create_chat_completion(**kwargs)
                try:
                    for chunk in chunks:
                        if stop.is_set():
                            break
                        choice = chunk["choices"][0]
                        text = choice["delta"].get("content")
                        finish = choice.get("finish_reason") or finish
                        if text:
                            first = first or time.perf_counter()
                            yield text
                        # before the next token: the caller waits for the first words' sound
                        yield_to_first_audio()
                        if stop.is_set():
                            break
                        self._fit_threads(llama_cpp, llm)
                    if finish == "length" and not stop.is_set():
                        yield HIT_LIMIT  # the reply path drops the unfinished sentence
                finally:  # also when the stream is closed mid-reply (a hang-up)
                    chunks.close()
                    _free_sampler(llm)
                    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
                    self.last_stats = GenerationStats(
                        prompt_tokens=int(perf.n_p_eval),
                        generated_tokens=int(perf.n_eval),
                        ttft_ms=None if first is None else ms(first - started),
                        total_ms=ms(time.perf_counter() - started),
                    )
                    log.debug("llm_generated", **dataclasses.asdict(self.last_stats))
            finally:
                self._stop = None

    def _fit_threads(self, llama_cpp: Any, llm: Any) -> None:
        """In the worker, between evaluations: every core while no speech stage works."""
        wanted = self.n_threads if others_working() else self.alone_threads
        if wanted != llama_cpp.llama_n_threads(llm._ctx.ctx):  # the context's own count
            llama_cpp.llama_set_n_threads(llm._ctx.ctx, wanted, wanted)

    async def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait for the last worker thread to finish; False if it is still running."""
        worker = self._worker
        if worker is None:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(asyncio.wrap_future(worker))
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop using the model: wait for the worker, then free llama.cpp's memory."""
        await self.wait_idle()
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)
