"""A local server that speaks Ollama's HTTP protocol, for the real `ollama` client to talk to.

Endpoints: POST /api/chat (NDJSON stream, or one JSON object with `"stream": false`, including
the empty-messages preload), GET /api/tags, GET /api/version, POST /api/show, and model
management as `ollama create` from another machine uses it: HEAD/POST /api/blobs/sha256:DIGEST
(the upload is checked against its digest), POST /api/create (`files` naming uploaded blobs,
`template`, `system`, `parameters`; NDJSON statuses or one object), POST /api/copy, DELETE
/api/delete. Each model has a manifest (`server.manifests`), and /api/tags reports its digest as
Ollama does: the sha256 of the manifest, so a copy has the digest of its source.
Replies come from a script (fixed pieces at a fixed pace) or from a real model (any async
`reply(messages, options)` generator, e.g. `embedded_reply(EmbeddedBackend)`).
/api/show answers with a model's `model_info` the way Ollama builds it from the model's GGUF
(`gguf_model_info(path)`: every metadata key but `general.name` and `tokenizer.chat_template`,
arrays longer than 5 emptied), set per model with `model_info={name: ...}`.

Capacity like Ollama's: `parallel` requests generate at once (OLLAMA_NUM_PARALLEL), more wait
in a queue of at most `max_queue` (OLLAMA_MAX_QUEUE); past that the server answers 503 "server
busy" at once, as Ollama does. Each request's headers are kept (`server.headers`, and per chat),
so a test can see which phone sent it (`X-Payphone-Phone`).

Faults for /api/chat, set with `server.fault = Fault(...)`: an HTTP status (404 model, 5xx), a
request accepted and never answered (`hang`, plain requests too), a stall before the first
piece, a stall after N pieces, an error line after N pieces, a malformed line after N pieces.
Each chat is logged (`server.chats`) with when the fault began and whether the client closed the
connection, so a test can assert that the server stopped generating after the client hung up.
A refused connection is simply a port nobody listens on (`free_port()`).

HTTP parsing is h11's (it ships with httpx); the server runs on asyncio streams, in the test's
event loop or, from the command line, in its own process (e.g. inside a network namespace):
`python -m tests.support.ollama_server --host 10.0.0.2 --port 11434`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import h11

from payphone.llm.base import ChatBackend, ChatOptions, Message
from payphone.streams import hit_limit

DEFAULT_MODEL = "payphone-persona:latest"
VERSION = "0.12.0-test"
FOREVER_S = 3600.0

Reply = Callable[[list[Message], dict[str, Any]], AsyncIterator[str]]
FaultKind = Literal["none", "status", "hang", "stall_first", "stall_mid", "error_line", "malformed"]


@dataclass(frozen=True)
class Fault:
    """How /api/chat misbehaves. `after`: pieces sent before a mid-stream fault."""

    kind: FaultKind = "none"
    status: int = 500
    after: int = 3
    stall_s: float = FOREVER_S


@dataclass
class ChatLog:
    """One /api/chat request as the server saw it (times from `time.perf_counter`)."""

    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any]
    stream: bool
    keep_alive: Any
    think: Any
    started: float
    headers: dict[str, str] = field(default_factory=dict)
    pieces_sent: int = 0
    fault_at: float | None = None
    client_closed: bool = False
    client_closed_at: float | None = None
    finished: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def scripted_reply(
    pieces: Sequence[str], interval_s: float = 0.01, first_s: float | None = None
) -> Reply:
    """Always the same pieces, one every `interval_s` (the first after `first_s`: the prompt's
    evaluation, `interval_s` unless given)."""

    async def reply(messages: list[Message], options: dict[str, Any]) -> AsyncIterator[str]:
        limit = int(options.get("num_predict") or len(pieces))
        for i, piece in enumerate(list(pieces)[:limit]):
            await asyncio.sleep(first_s if i == 0 and first_s is not None else interval_s)
            yield piece

    return reply


def embedded_reply(backend: ChatBackend) -> Reply:
    """Replies from a real model, e.g. `EmbeddedBackend` with the demo GGUF."""

    def reply(messages: list[Message], options: dict[str, Any]) -> AsyncIterator[str]:
        opts = ChatOptions(
            num_predict=int(options.get("num_predict", 96)),
            temperature=float(options.get("temperature", 0.7)),
            num_ctx=int(options.get("num_ctx", 2048)),
            stop=tuple(options.get("stop") or ()),
        )
        return backend.stream(messages, opts)

    return reply


def gguf_model_info(path: Path) -> dict[str, Any]:
    """`model_info` as Ollama's show handler makes it from a GGUF (server/routes.go
    GetModelInfo + getModelData, non-verbose): all key-value pairs, arrays of more than 5 items
    as [], without `general.name` and `tokenizer.chat_template`."""
    import gguf

    info: dict[str, Any] = {}
    for name, fld in gguf.GGUFReader(path).fields.items():
        if name.startswith("GGUF.") or name in ("general.name", "tokenizer.chat_template"):
            continue
        is_array = fld.types and fld.types[0] == gguf.GGUFValueType.ARRAY
        info[name] = [] if is_array and len(fld.data) > 5 else fld.contents()
    return info


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class ClientGone(Exception):
    """The client closed the connection."""


class OllamaProtocolServer:
    """An Ollama look-alike on a TCP port; `async with` starts and stops it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = (DEFAULT_MODEL,),
        reply: Reply | None = None,
        fault: Fault | None = None,
        model_info: dict[str, dict[str, Any]] | None = None,
        parallel: int = 0,
        max_queue: int = 512,
    ) -> None:
        self.host = host
        self.port = port
        self.models = [m if ":" in m else f"{m}:latest" for m in models]
        # name -> what it was made of; its digest is the sha256 of this, as Ollama's manifests
        self.manifests: dict[str, dict[str, Any]] = {m: {"model": m} for m in self.models}
        self.blobs: dict[str, bytes] = {}  # "sha256:HEX" -> content
        self.created: list[dict[str, Any]] = []  # the /api/create requests, in order
        self.model_info = {self._name(k): v for k, v in (model_info or {}).items()}
        self.reply = reply or scripted_reply(["Hello", " there", ",", " caller", "."])
        self.fault = fault or Fault()
        self.chats: list[ChatLog] = []
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.parallel = parallel  # 0: no limit
        self.max_queue = max_queue
        self.rejected = 0  # 503s for a full queue
        self._slots = asyncio.Semaphore(parallel) if parallel else None
        self._waiting = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> OllamaProtocolServer:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop open connections (like a Pi #2 that reboots)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._handlers.values()):
                writer.transport.abort()  # each handler sees its client go and ends by itself
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=5)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> OllamaProtocolServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connection handling -------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        conn = h11.Connection(h11.SERVER)
        try:
            request, body = await self._read_request(conn, reader)
            if request is not None:
                await self._route(conn, reader, writer, request, body)
        except (ClientGone, ConnectionError, h11.ProtocolError):
            pass
        finally:
            self._handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:  # ConnectionClosed
                return None, b""

    async def _send(self, writer: asyncio.StreamWriter, data: bytes | None) -> None:
        if not data:
            return
        if writer.is_closing():
            raise ClientGone
        writer.write(data)
        await writer.drain()

    async def _respond_json(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, obj: dict[str, Any]
    ) -> None:
        payload = json.dumps(obj).encode()
        headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", str(len(payload))),
            ("connection", "close"),
        ]
        await self._send(writer, conn.send(h11.Response(status_code=status, headers=headers)))
        await self._send(writer, conn.send(h11.Data(data=payload)))
        await self._send(writer, conn.send(h11.EndOfMessage()))

    async def _route(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
    ) -> None:
        path = request.target.decode().split("?")[0]
        self.requests.append(path)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.headers.append(headers)
        if path.startswith("/api/blobs/"):
            await self._blob(conn, writer, request.method.decode(), path, body)
        elif path in ("/api/create", "/api/copy", "/api/delete"):
            status, reply = self._manage(path, json.loads(body or b"{}"))
            if reply is None:  # copy and delete answer with an empty 200
                await self._respond_empty(conn, writer, status)
            else:
                await self._respond_json(conn, writer, status, reply)
        elif path == "/api/version":
            await self._respond_json(conn, writer, 200, {"version": VERSION})
        elif path == "/api/tags":
            await self._respond_json(
                conn, writer, 200, {"models": [self._tag(m) for m in self.models]}
            )
        elif path == "/api/show":
            name = self._name(json.loads(body or b"{}").get("model", ""))
            if name in self.models:
                await self._respond_json(conn, writer, 200, self._show(name))
            else:
                await self._respond_json(conn, writer, 404, {"error": f"model '{name}' not found"})
        elif path == "/api/chat":
            await self._chat(conn, reader, writer, json.loads(body or b"{}"), headers)
        else:
            await self._respond_json(conn, writer, 404, {"error": "404 page not found"})

    async def _respond_empty(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int
    ) -> None:
        headers = [("content-length", "0"), ("connection", "close")]
        await self._send(writer, conn.send(h11.Response(status_code=status, headers=headers)))
        await self._send(writer, conn.send(h11.EndOfMessage()))

    async def _blob(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: bytes,
    ) -> None:
        """HEAD: 200 if the blob is here, else 404; POST: 201 if the content has that digest."""
        digest = path.removeprefix("/api/blobs/").replace("-", ":", 1)
        if method == "HEAD":
            await self._respond_empty(conn, writer, 200 if digest in self.blobs else 404)
            return
        if f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
            await self._respond_json(conn, writer, 400, {"error": "digest mismatch"})
            return
        self.blobs[digest] = body
        await self._respond_empty(conn, writer, 201)

    def digest(self, name: str) -> str:
        """The model's digest in /api/tags: the sha256 of its manifest."""
        name = self._name(name)
        manifest = json.dumps(self.manifests.get(name, {"model": name}), sort_keys=True)
        return hashlib.sha256(manifest.encode()).hexdigest()

    def _manage(self, path: str, req: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """/api/create, /api/copy, /api/delete: (status, JSON reply or None for an empty 200)."""
        if path == "/api/copy":
            source, dest = self._name(req.get("source", "")), self._name(req.get("destination", ""))
            if source not in self.models:
                return 404, {"error": f"model '{source}' not found"}
            self._put(dest, self.manifests.get(source, {"model": source}))
            return 200, None
        if path == "/api/delete":
            name = self._name(req.get("model", ""))
            if name not in self.models:
                return 404, {"error": f"model '{name}' not found"}
            self.manifests.pop(name, None)
            self.models.remove(name)
            return 200, None
        self.created.append(req)
        name = self._name(req.get("model", ""))
        files = dict(req.get("files") or {})
        missing = [d for d in files.values() if d not in self.blobs]
        if not files or missing:
            return 400, {"error": f"neither 'from' nor 'files' was specified or blobs {missing}"}
        manifest = {k: req.get(k) for k in ("files", "template", "system", "parameters")}
        self._put(name, manifest)
        return 200, {"status": "success"}

    def _put(self, name: str, manifest: dict[str, Any]) -> None:
        self.manifests[name] = dict(manifest)
        if name not in self.models:
            self.models.append(name)

    @staticmethod
    def _name(model: str) -> str:
        return model if ":" in model else f"{model}:latest"

    @staticmethod
    def _details() -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "135M",
            "quantization_level": "Q4_1",
        }

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": _now(),
            "size": 100_000_000,
            "digest": self.digest(name),
            "details": self._details(),
        }

    def _show(self, name: str) -> dict[str, Any]:
        # a model made from files: FROM its GGUF's blob, as `ollama show` prints it
        files = self.manifests.get(name, {}).get("files") or {"": name}
        source = next(iter(files.values()))
        blob = f"/usr/share/ollama/.ollama/models/blobs/{source.replace(':', '-')}"
        return {
            "modelfile": f"FROM {blob if source.startswith('sha256:') else source}\n",
            "parameters": "num_ctx 2048",
            "template": "{{ .Prompt }}",
            "details": self._details(),
            "model_info": self.model_info.get(name, {"general.architecture": "llama"}),
            "capabilities": ["completion"],
            "modified_at": _now(),
        }

    # --- /api/chat -----------------------------------------------------------------------

    async def _chat(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        if self._slots is None:
            await self._chat_now(conn, reader, writer, req, headers or {})
            return
        if self._slots.locked() and self._waiting >= self.max_queue:
            self.rejected += 1
            busy = {"error": "server busy, please try again.  maximum pending requests exceeded"}
            await self._respond_json(conn, writer, 503, busy)
            return
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            await self._chat_now(conn, reader, writer, req, headers or {})
        finally:
            self._slots.release()

    async def _chat_now(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        fault = self.fault
        name = self._name(str(req.get("model", "")))
        log = ChatLog(
            model=name,
            messages=list(req.get("messages") or []),
            options=dict(req.get("options") or {}),
            stream=bool(req.get("stream", True)),
            keep_alive=req.get("keep_alive"),
            think=req.get("think"),
            started=time.perf_counter(),
            headers=headers,
        )
        self.chats.append(log)
        try:
            if fault.kind == "hang":  # accepts the request, never answers (plain or streamed)
                log.fault_at = time.perf_counter()
                await asyncio.sleep(fault.stall_s)
                return
            if fault.kind == "status" or name not in self.models:
                status = fault.status if fault.kind == "status" else 404
                log.fault_at = time.perf_counter()
                error = f"model '{name}' not found" if status == 404 else "llama runner crashed"
                await self._respond_json(conn, writer, status, {"error": error})
                return
            if not log.stream:
                await self._chat_plain(conn, writer, log, name)
                return
            headers = [
                ("content-type", "application/x-ndjson"),
                ("transfer-encoding", "chunked"),
                ("connection", "close"),
            ]
            await self._send(writer, conn.send(h11.Response(status_code=200, headers=headers)))
            generate = asyncio.ensure_future(self._stream_pieces(conn, writer, log, name, fault))
            hangup = asyncio.ensure_future(reader.read(1))  # b"" when the client closes
            try:
                await asyncio.wait({generate, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if not generate.done():
                    log.client_closed = True
                    log.client_closed_at = time.perf_counter()
                    generate.cancel()  # stop generating, as Ollama does
                    with contextlib.suppress(asyncio.CancelledError, ClientGone, ConnectionError):
                        await generate
                elif generate.exception() is not None:
                    exc = generate.exception()
                    if isinstance(exc, ClientGone | ConnectionError):
                        log.client_closed = True
                        log.client_closed_at = time.perf_counter()
                    else:
                        raise exc  # type: ignore[misc]
            finally:
                for task in (generate, hangup):
                    task.cancel()
                await asyncio.gather(generate, hangup, return_exceptions=True)
        finally:
            log.done.set()

    async def _chat_plain(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, log: ChatLog, name: str
    ) -> None:
        """`"stream": false`: the preload (no messages) or a whole reply in one object."""
        text = ""
        reason = "load"
        if log.messages:
            reason = "stop"
            async for piece in self.reply(log.messages, log.options):  # type: ignore[arg-type]
                text += piece
                log.pieces_sent += 1
        log.finished = True
        await self._respond_json(conn, writer, 200, self._final(name, reason, log, text))

    def _final(self, name: str, reason: str, log: ChatLog, text: str = "") -> dict[str, Any]:
        took = int((time.perf_counter() - log.started) * 1e9)
        return {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": text},
            "done_reason": reason,
            "done": True,
            "total_duration": took,
            "load_duration": 0,
            "prompt_eval_count": len(json.dumps(log.messages)) // 4,
            "prompt_eval_duration": 0,
            "eval_count": log.pieces_sent,
            "eval_duration": took,
        }

    async def _stream_pieces(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        log: ChatLog,
        name: str,
        fault: Fault,
    ) -> None:
        async def fault_now() -> bool:
            """Apply a mid-stream fault; True when the stream must end here."""
            log.fault_at = time.perf_counter()
            if fault.kind in ("stall_first", "stall_mid"):
                await asyncio.sleep(fault.stall_s)
                return False
            if fault.kind == "error_line":
                await self._send(
                    writer, conn.send(h11.Data(data=_line({"error": "out of memory"})))
                )
            else:  # malformed
                await self._send(writer, conn.send(h11.Data(data=b'{"model": "x", "message": {\n')))
            await self._send(writer, conn.send(h11.EndOfMessage()))
            log.finished = True
            return True

        faulted = False

        async def fault_due() -> bool:
            """Fault before the next piece once `after` pieces went out; True: stream ends."""
            nonlocal faulted
            if faulted or fault.kind not in ("stall_mid", "error_line", "malformed"):
                return False
            if log.pieces_sent < fault.after:
                return False
            faulted = True
            return await fault_now()

        if fault.kind == "stall_first":
            await fault_now()
        reply = self.reply(log.messages, log.options)  # type: ignore[arg-type]
        reason = "stop"
        async with contextlib.aclosing(reply) as pieces:  # type: ignore[type-var]
            while True:
                if await fault_due():
                    return
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                if hit_limit(piece):  # a real model (embedded_reply) stopped at num_predict
                    reason = "length"
                    continue
                chunk = {
                    "model": name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
                await self._send(writer, conn.send(h11.Data(data=_line(chunk))))
                log.pieces_sent += 1
        if await fault_due():
            return
        limit = log.options.get("num_predict")
        if limit and log.pieces_sent >= int(limit):  # a scripted reply cut at num_predict
            reason = "length"
        await self._send(writer, conn.send(h11.Data(data=_line(self._final(name, reason, log)))))
        await self._send(writer, conn.send(h11.EndOfMessage()))
        log.finished = True


async def _serve(args: argparse.Namespace) -> None:
    words = [f" word{i}" for i in range(args.pieces)]
    server = OllamaProtocolServer(
        host=args.host, port=args.port, reply=scripted_reply(words, args.interval)
    )
    async with server:
        print(f"READY {server.port}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    """Serve a scripted reply until killed (for a server in another process or netns)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pieces", type=int, default=500, help="pieces per reply")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between pieces")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
