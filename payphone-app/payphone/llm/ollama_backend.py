"""Chat with the persona model on Pi #2 through Ollama, with timeouts the client lacks.

The official `ollama.AsyncClient` has no timeout by default and reports failures in several
shapes (raw httpx exceptions on the streaming path, `ResponseError` with an HTTP status or -1 for
an error line mid-stream, `ConnectionError` on the plain path). This module gives every request
explicit deadlines (connect, first token, between tokens) and turns every failure into one
`LlmError` with a short cause, so the call loop can play the fallback at once and the logs say why.
Closing the stream (hang-up, early exit, a stall) closes the HTTP response: Ollama then stops
generating. Every request names the phone in an `X-Payphone-Phone` header (`phone_id`), so a
model host shared by several phones (or a proxy in front of it) can tell them apart.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import ollama
import pydantic

from payphone.llm.base import ChatBackend, ChatOptions, LlmError, Message
from payphone.llm.prompt_style import Declared, declared_style
from payphone.log import get_logger, ms
from payphone.streams import HIT_LIMIT

log = get_logger("payphone.llm.ollama")

# causes, for logs, stats and tests
REFUSED = "refused"
UNKNOWN_HOST = "unknown_host"
UNREACHABLE = "unreachable"
CONNECT_TIMEOUT = "connect_timeout"
MODEL_NOT_FOUND = "model_not_found"
SERVER_ERROR = "server_error"
BAD_REQUEST = "bad_request"
ERROR_LINE = "error_line"
STALL_FIRST_TOKEN = "stall_first_token"
STALL_MID_STREAM = "stall_mid_stream"
MALFORMED = "malformed"
DISCONNECTED = "disconnected"
PROBE_TIMEOUT = "probe_timeout"
UNEXPECTED = "unexpected"

PHONE_HEADER = "X-Payphone-Phone"


def keep_alive_value(setting: str) -> float | str:
    """Ollama reads a number as seconds (negative: keep loaded forever), a string as a duration.

    A bare "-1" string would fail Go's duration parser, so numbers go over as numbers.
    """
    try:
        return float(setting)
    except ValueError:
        return setting


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it was raised from or during (httpx wraps OSErrors twice)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _connect_cause(exc: BaseException) -> str:
    for inner in _chain(exc):
        if isinstance(inner, socket.gaierror):
            return UNKNOWN_HOST
        if isinstance(inner, ConnectionRefusedError):
            return REFUSED
        if isinstance(inner, OSError) and inner.errno == errno.ECONNREFUSED:
            return REFUSED
    text = str(exc).lower()
    if "name or service not known" in text or "name resolution" in text:
        return UNKNOWN_HOST
    if "connection refused" in text:
        return REFUSED
    return UNREACHABLE


def classify(exc: BaseException, *, got_text: bool = False) -> LlmError:
    """Map whatever the ollama client raised to an `LlmError` with a short cause."""
    if isinstance(exc, LlmError):
        return exc
    detail = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code
        if status == 404:
            return LlmError(MODEL_NOT_FOUND, exc.error)
        if status == -1:
            return LlmError(ERROR_LINE, exc.error)
        if status >= 500:
            return LlmError(SERVER_ERROR, f"HTTP {status}: {exc.error}")
        return LlmError(BAD_REQUEST, f"HTTP {status}: {exc.error}")
    if isinstance(exc, httpx.ConnectTimeout):
        return LlmError(CONNECT_TIMEOUT, detail)
    if isinstance(exc, httpx.ConnectError | ConnectionError):
        return LlmError(_connect_cause(exc), detail)
    if isinstance(exc, json.JSONDecodeError | pydantic.ValidationError | UnicodeDecodeError):
        return LlmError(MALFORMED, detail)
    if isinstance(exc, httpx.TimeoutException):
        return LlmError(STALL_MID_STREAM if got_text else STALL_FIRST_TOKEN, detail)
    if isinstance(exc, httpx.TransportError):
        return LlmError(DISCONNECTED, detail)
    return LlmError(UNEXPECTED, detail)


class OllamaBackend(ChatBackend):
    """Streams replies from an Ollama server with connect, first-token and between-token limits."""

    def __init__(
        self,
        host: str,
        model: str,
        *,
        keep_alive: float | str = -1,
        connect_timeout_s: float = 3.0,
        first_token_timeout_s: float = 8.0,
        token_timeout_s: float = 4.0,
        probe_timeout_s: float = 2.0,
        warm_up_timeout_s: float = 120.0,
        phone_id: str | None = None,
    ) -> None:
        self.host = host
        self.phone_id = phone_id
        self.model = model
        self.keep_alive = keep_alive
        self.first_token_timeout_s = first_token_timeout_s
        self.token_timeout_s = token_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.warm_up_timeout_s = warm_up_timeout_s
        # read=None: reads are bounded per token by asyncio.timeout below, not by httpx,
        # so a slow model load on the plain path (warm-up) is not cut at the connect limit.
        timeout = httpx.Timeout(
            connect=connect_timeout_s, read=None, write=connect_timeout_s, pool=connect_timeout_s
        )
        headers = {PHONE_HEADER: phone_id} if phone_id else None
        self._client = ollama.AsyncClient(host=host, timeout=timeout, headers=headers)
        self._declared: Declared | None = None  # asked once, at the first successful probe

    @property
    def declared_prompt_style(self) -> Declared | None:
        return self._declared

    def _options(self, options: ChatOptions) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "num_predict": options.num_predict,
            "temperature": options.temperature,
            "num_ctx": options.num_ctx,
        }
        if options.stop:
            opts["stop"] = list(options.stop)
        if options.seed is not None:
            opts["seed"] = options.seed
        return opts

    async def stream(self, messages: list[Message], options: ChatOptions) -> AsyncIterator[str]:
        """Yield reply pieces; raise `LlmError` on any failure or stall.

        The first-token limit is a deadline from the request (it includes connecting and
        prompt evaluation); after that each piece must follow the last within `token_timeout_s`.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_deadline = started + self.first_token_timeout_s
        got_text = False
        pieces = 0
        parts: AsyncIterator[ollama.ChatResponse] | None = None
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    parts = await self._client.chat(
                        model=self.model,
                        messages=[dict(m) for m in messages],
                        stream=True,
                        think=False,
                        options=self._options(options),
                        keep_alive=self.keep_alive,
                    )
            except TimeoutError:
                raise LlmError(STALL_FIRST_TOKEN, "no answer before the first token") from None
            except Exception as exc:
                raise classify(exc) from exc
            while True:
                when = (
                    asyncio.timeout(self.token_timeout_s)
                    if got_text
                    else asyncio.timeout_at(first_deadline)
                )
                try:
                    async with when:
                        part = await anext(parts)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if got_text:
                        raise LlmError(
                            STALL_MID_STREAM,
                            f"no token for {self.token_timeout_s:g} s after {pieces} pieces",
                        ) from None
                    raise LlmError(
                        STALL_FIRST_TOKEN,
                        f"no token within {self.first_token_timeout_s:g} s",
                    ) from None
                except Exception as exc:
                    raise classify(exc, got_text=got_text) from exc
                text = part.message.content or ""
                if text:
                    if not got_text:
                        ttft = ms(loop.time() - started)
                        log.debug("llm_first_token", backend="ollama", host=self.host, ttft_ms=ttft)
                    got_text = True
                    pieces += 1
                    yield text
                if part.done:
                    if part.done_reason == "length":
                        yield HIT_LIMIT  # the reply path drops the unfinished sentence
                    break
        except LlmError as exc:
            log.warning(
                "llm_failed",
                backend="ollama",
                host=self.host,
                cause=exc.cause,
                detail=exc.detail,
                after_ms=ms(loop.time() - started),
                pieces=pieces,
            )
            raise
        finally:
            if parts is not None:
                # closes the HTTP response: Ollama sees the client go and stops generating
                await parts.aclose()  # type: ignore[attr-defined]

    async def _plain(self, what: str, limit_s: float, **kwargs: Any) -> ollama.ChatResponse:
        try:
            async with asyncio.timeout(limit_s):
                response: ollama.ChatResponse = await self._client.chat(
                    model=self.model, keep_alive=self.keep_alive, think=False, **kwargs
                )
                return response
        except TimeoutError:
            raise LlmError(STALL_FIRST_TOKEN, f"{what}: no answer within {limit_s:g} s") from None
        except Exception as exc:
            raise classify(exc) from exc

    async def warm_up(self, system_prompt: str, examples: Sequence[Message] = ()) -> None:
        """Load the model (empty messages) and evaluate the system prompt and the examples into
        Ollama's cache."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._plain("preload", self.warm_up_timeout_s, messages=[])
        loaded = loop.time()
        await self._plain(
            "prime",
            self.warm_up_timeout_s,
            messages=[{"role": "system", "content": system_prompt}, *(dict(m) for m in examples)],
            options={"num_predict": 1},
        )
        log.info(
            "llm_warm",
            backend="ollama",
            model=self.model,
            load_ms=ms(loaded - started),
            prime_ms=ms(loop.time() - loaded),
        )

    async def list_models(self) -> list[str]:
        """Model names on the server (/api/tags), within the probe limit."""
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                listing = await self._client.list()
        except TimeoutError:
            raise LlmError(
                PROBE_TIMEOUT, f"/api/tags: no answer within {self.probe_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise classify(exc) from exc
        return [m.model for m in listing.models if m.model]

    async def has_model(self) -> bool:
        """Whether the configured model is on the server (`name` means `name:latest`)."""
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        return wanted in await self.list_models()

    async def probe(self) -> None:
        """Health check for the breaker and `doctor`: the server answers and has the model.

        The first time it does, ask which prompt style the model was trained on.
        """
        if not await self.has_model():
            raise LlmError(MODEL_NOT_FOUND, f"{self.model} is not on {self.host}")
        if self._declared is None:
            try:
                await self.ask_prompt_style()
            except LlmError as exc:  # the model still chats; ask again at the next probe
                log.warning("llm_prompt_style_unknown", model=self.model, cause=exc.cause)

    async def ask_prompt_style(self) -> Declared:
        """`ollama show`: its `model_info` lists the GGUF's metadata, `payphone.prompt_style`
        among it (Ollama keeps every key of the GGUF it was given)."""
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                shown = await self._client.show(self.model)
        except TimeoutError:
            raise LlmError(
                PROBE_TIMEOUT, f"/api/show: no answer within {self.probe_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise classify(exc) from exc
        self._declared = declared_style(shown.modelinfo, f"Ollama model {self.model}")
        log.info("llm_prompt_style_declared", model=self.model, style=self._declared.style)
        return self._declared

    async def aclose(self) -> None:
        await self._client.close()
