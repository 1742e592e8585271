"""The service: one port for WebSocket streams (three protocols), health, readiness, metrics and the web page.

A thin asyncio shell: `Connection` moves bytes between a socket and the scheduler, the protocol
classes translate messages, and the scheduler's worker thread does all model work. Errors become
close codes here, once: BadRequest 1003, Unauthorized 1008, MessageTooBig 1009, Overloaded 1013,
anything else 1011 with the details kept out of the close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import ssl
import time
from importlib import resources
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from captioner.stream.checkpoint import load_model
from captioner.stream.config import StreamConfig
from captioner.stream.engine import Engine
from captioner.stream.errors import BadRequest, MessageTooBig, Overloaded, ProtocolError, Unauthorized
from captioner.stream.events import Final
from captioner.stream.model import Model

from .metrics import Metrics
from .protocols import PROTOCOLS, Protocol
from .protocols.base import Request
from .scheduler import Done, Failed, Scheduler, Stream
from .settings import Settings

__all__ = ["App", "Connection"]

log = logging.getLogger("captioner.server")

CLOSE_CODES: dict[type[ProtocolError], int] = {
    BadRequest: CloseCode.UNSUPPORTED_DATA,  # 1003
    Unauthorized: CloseCode.POLICY_VIOLATION,  # 1008
    MessageTooBig: CloseCode.MESSAGE_TOO_BIG,  # 1009
    Overloaded: CloseCode.TRY_AGAIN_LATER,  # 1013
}
DRAIN_CODE = CloseCode.GOING_AWAY  # 1001
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript"),
          "/worklet.js": ("worklet.js", "text/javascript")}


def close_code(error: ProtocolError) -> int:
    for kind, code in CLOSE_CODES.items():
        if isinstance(error, kind):
            return code
    return CloseCode.INTERNAL_ERROR


class App:
    """The service; `await app.start()`, then `await app.run()` (until SIGTERM/SIGINT) or `await app.stop()`."""

    def __init__(self, settings: Settings, model: Model | None = None) -> None:
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(settings.dtype or "")
        self.model = model or load_model(settings.model, settings.device, dtype)
        self.metrics = Metrics()
        self.metrics.build.info({"model": self.model.name, "checksum": self.model.checksum,
                                 "version": _version(), "device": str(self.model.device),
                                 "dtype": str(self.model.dtype).removeprefix("torch.")})
        self.engine = Engine(self.model, StreamConfig(strategy=settings.strategy))
        workers = settings.workers or (1 if self.model.device.type == "cuda" else torch.get_num_threads())
        self.scheduler = Scheduler(self.engine, self.metrics, settings.max_batch, settings.max_wait_ms,
                                   settings.greedy_after_s, workers)
        self.tokens = settings.all_tokens
        self.connections: set[Connection] = set()
        self.ready = False
        self.draining = False
        self.server: Server | None = None
        self.publisher: Any = None  # the MQTT publisher, when configured
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        ssl_context = None
        if self.settings.certfile:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(self.settings.certfile, self.settings.keyfile)
        self.server = await serve(
            self._handle, self.settings.host, self.settings.port, ssl=ssl_context,
            process_request=self._process_request, select_subprotocol=self._select_subprotocol,
            max_size=2 * self.settings.max_frame_bytes, compression=None,
        )
        self.scheduler.start()
        if self.settings.mqtt_url:
            from .mqtt import Publisher

            self.publisher = Publisher(self.settings, self.metrics)
            self.publisher.start()
        await asyncio.get_running_loop().run_in_executor(None, self._warm_up)
        self.ready = True
        log.info("listening", extra={"host": self.settings.host, "port": self.port,
                                     "tls": ssl_context is not None, "strategy": self.settings.strategy})

    def _warm_up(self) -> None:
        """One dummy pass through encoder and decoder, so that the first stream is not slow."""
        from captioner.stream.session import Session

        session = Session(self.engine)
        session.push(np.zeros(16000, dtype=np.float32))
        session.end()

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        await self._stopped.wait()

    def _on_signal(self) -> None:
        if self.draining:
            log.warning("second signal: exiting without draining")
            raise SystemExit(1)
        asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        """Drain: refuse new streams, finalise every open one (finals, then close 1001), then shut down."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        log.info("draining", extra={"sessions": len(self.connections)})
        for connection in list(self.connections):
            connection.drain()
        if self.connections:
            await asyncio.wait([asyncio.ensure_future(c.finished.wait()) for c in self.connections],
                               timeout=self.settings.drain_timeout_s)
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.stop)
        if self.publisher is not None:
            await self.publisher.stop()
        log.info("stopped")
        self._stopped.set()

    # -- HTTP and handshake -----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: HttpRequest) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        req = Request.parse(request.path, headers)
        if "websocket" not in headers.get("upgrade", "").lower():
            return self._http(connection, req.path)
        protocol_class = PROTOCOLS.get(req.path)
        if protocol_class is None:
            return _response(connection, http.HTTPStatus.NOT_FOUND, b"no such stream endpoint\n")
        if not self._origin_allowed(headers):
            self.metrics.rejections.labels("origin").inc()
            return _response(connection, http.HTTPStatus.FORBIDDEN, b"origin not allowed\n")
        if self.draining or not self.ready:
            self.metrics.rejections.labels("draining").inc()
            return _response(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, b"not ready\n")
        if len(self.connections) >= self.settings.max_sessions:  # refused before the upgrade: a balancer retries
            self.metrics.rejections.labels("overloaded").inc()
            response = _response(connection, http.HTTPStatus.SERVICE_UNAVAILABLE,
                                 f"at the limit of {self.settings.max_sessions} streams\n".encode())
            response.headers["Retry-After"] = "5"
            return response
        protocol = protocol_class(Connection(self, connection), req)
        if protocol.refuse_with_http:
            try:
                protocol.authenticate(self.tokens)
                protocol.configure()
            except ProtocolError as e:
                self.metrics.rejections.labels(e.code).inc()
                return protocol.refusal(connection, e)
        connection.captioner_protocol = protocol  # type: ignore[attr-defined]
        return None

    def _select_subprotocol(self, connection: ServerConnection, offered: list[str]) -> str | None:
        protocol: Protocol | None = getattr(connection, "captioner_protocol", None)
        return protocol.subprotocol() if protocol is not None else None

    def _origin_allowed(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None or "*" in self.settings.allowed_origins or origin in self.settings.allowed_origins:
            return True  # non-browser clients send no Origin
        host = headers.get("host", "")
        return origin.split("://", 1)[-1] == host  # the page this server serves

    def _http(self, connection: ServerConnection, path: str) -> Response:
        if path == "/healthz":
            return _response(connection, http.HTTPStatus.OK, b"ok\n")
        if path == "/readyz":
            status = self.readiness()
            code = http.HTTPStatus.OK if status["ready"] else http.HTTPStatus.SERVICE_UNAVAILABLE
            import json

            return _response(connection, code, json.dumps(status).encode() + b"\n", "application/json")
        if path == "/metrics":
            return _response(connection, http.HTTPStatus.OK, self.metrics.exposition(),
                             "text/plain; version=0.0.4; charset=utf-8")
        if path in STATIC:
            name, content_type = STATIC[path]
            body = resources.files("captioner.server").joinpath("page", name).read_bytes()
            return _response(connection, http.HTTPStatus.OK, body, content_type)
        return _response(connection, http.HTTPStatus.NOT_FOUND, b"not found\n")

    def readiness(self) -> dict[str, Any]:
        mqtt = "off" if self.publisher is None else ("ok" if self.publisher.connected else "degraded")
        return {"ready": self.ready and not self.draining, "model": self.model.name, "draining": self.draining,
                "sessions": self.scheduler.busy, "max_sessions": self.settings.max_sessions, "mqtt": mqtt}

    async def _handle(self, websocket: ServerConnection) -> None:
        protocol: Protocol = websocket.captioner_protocol  # type: ignore[attr-defined]
        connection = protocol.connection
        connection.bind(websocket, protocol)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)


def _response(connection: ServerConnection, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
    response = connection.respond(status, "")
    response.body = body
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = content_type
    response.headers["Content-Length"] = str(len(body))
    return response


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("captioner")
    except PackageNotFoundError:
        return "0+unknown"


class Connection:
    """One client: reads its messages into the scheduler and writes its stream's events back."""

    def __init__(self, app: App, websocket: ServerConnection) -> None:
        self.app = app
        self.settings = app.settings
        self.websocket = websocket
        self.protocol: Protocol | None = None
        self.stream: Stream | None = None
        self.finished = asyncio.Event()
        self.model_name = app.model.name
        self.language = app.model.tokenizer.language
        self._close: tuple[int, str] = (CloseCode.NORMAL_CLOSURE, "")
        self._error: ProtocolError | None = None
        self._sender: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    def bind(self, websocket: ServerConnection, protocol: Protocol) -> None:
        self.websocket = websocket
        self.protocol = protocol

    @property
    def stream_id(self) -> str:
        return self.stream.id if self.stream else ""

    # commands from protocols
    def push(self, pcm: np.ndarray) -> None:
        stream = self.open_stream()
        if stream.ended or not len(pcm):
            return
        self.app.scheduler.push(stream, pcm)

    def flush(self) -> None:
        self.app.scheduler.flush(self.open_stream())

    def end(self) -> None:
        self.app.scheduler.end(self.open_stream())

    async def send(self, text: str) -> None:
        await self.websocket.send(text)

    def drain(self) -> None:
        """The server is shutting down: finalise this stream and close with 1001."""
        self._close = (DRAIN_CODE, "server shutting down")
        self.end()

    # the connection's life
    async def run(self) -> None:
        protocol = self.protocol
        assert protocol is not None
        client = _address(self.websocket)
        try:
            if not protocol.refuse_with_http:
                protocol.configure()
                protocol.authenticate(self.app.tokens)
            if len(self.app.connections) > self.settings.max_sessions:  # admitted together at the handshake
                raise Overloaded(f"the server is at its limit of {self.settings.max_sessions} streams", "overloaded")
        except ProtocolError as e:
            self.app.metrics.rejections.labels(e.code).inc()
            log.info("refused", extra={"client": client, "protocol": protocol.name, "code": e.code, "reason": str(e)})
            await self._fail(e)
            self.finished.set()
            return
        if not protocol.lazy_open:
            self.open_stream()
        outcome = "ended"
        try:
            await protocol.opened()
            await self._receive()
        except ProtocolError as e:
            # what was heard is finalised and sent first; then the error, then the close
            outcome = e.code
            self.app.metrics.rejections.labels(e.code).inc()
            self._error = e
            self._close = (close_code(e), e.code)
            if self.stream is None:
                await self._fail(e)
            else:
                self.end()
        except ConnectionClosed:
            outcome = "client gone"
            if self.stream is not None:
                self.end()  # finalise anyway: finals still reach MQTT and the logs
        except Exception:
            outcome = "internal error"
            log.exception("connection failed", extra={"session": self.stream_id})
            self._error = ProtocolError("internal error", "internal")
            self._close = (CloseCode.INTERNAL_ERROR, "internal")
            if self.stream is None:
                await self._fail(self._error)
            else:
                self.end()
        # The server ends the stream (drain, idle, limits, errors) while the client may still be sending: keep
        # reading, or the client's close frame would wait behind unread audio until the close times out.
        discard = asyncio.create_task(self._discard())
        try:
            if self._sender is not None:
                await asyncio.wait_for(self._sender, timeout=self.settings.drain_timeout_s)
        except ProtocolError as e:  # the model failed on this stream
            outcome = e.code
            await self._fail(e)
        except (TimeoutError, ConnectionClosed):
            self._sender.cancel()
            with contextlib.suppress(ConnectionClosed):
                await self.websocket.close(*self._close)
        finally:
            discard.cancel()
            audio_s = round(self.stream.received_s, 3) if self.stream else 0.0
            log.info("session end", extra={"session": self.stream_id, "client": client, "protocol": protocol.name,
                                           "audio_s": audio_s, "outcome": outcome,
                                           "wall_s": round(time.monotonic() - self._started, 3)})
            self.finished.set()

    def open_stream(self) -> Stream:
        """Open the scheduler stream (at once, or on the first audio for protocols that configure late)."""
        if self.stream is None:
            assert self.protocol is not None
            self.stream = self.app.scheduler.open(self.protocol.sample_rate, asyncio.get_running_loop(),
                                                  self.protocol.silence_s)
            self._sender = asyncio.create_task(self._send_events())
            if self.app.publisher is not None:
                self.app.publisher.session_started(self.stream.id, self.protocol.topic)
            log.info("session start", extra={"session": self.stream.id, "client": _address(self.websocket),
                                             "protocol": self.protocol.name, "sample_rate": self.protocol.sample_rate})
        return self.stream

    async def _receive(self) -> None:
        """Read client messages until the stream has ended (or the connection closes)."""
        assert self.protocol is not None
        scheduler = self.app.scheduler
        while not (self.stream is not None and self.stream.ended):
            await self._wait_for_backlog()
            try:
                message = await asyncio.wait_for(self.websocket.recv(), timeout=self.settings.idle_timeout_s)
            except TimeoutError:
                log.info("idle timeout", extra={"session": self.stream_id})
                self._close = (CloseCode.GOING_AWAY, "idle timeout")
                self.end()
                return
            if self.stream is not None and self.stream.ended:  # drained while waiting
                return
            if len(message) > self.settings.max_frame_bytes:
                raise MessageTooBig(len(message), self.settings.max_frame_bytes)
            if self.stream is not None and self.stream.outbox.qsize() > self.settings.max_outbox:
                raise Overloaded("the client does not read its messages", "slow_reader")
            if isinstance(message, str):
                await self.protocol.on_text(message)
            else:
                await self.protocol.on_binary(message)
            if self.stream is None:
                continue
            if 0 < self.settings.max_session_s < self.stream.received_s:
                self._close = (CloseCode.POLICY_VIOLATION, "maximum session length")
                self.end()
            if scheduler.backlog_s(self.stream) > self.settings.max_hard_backlog_s:
                raise Overloaded("audio is arriving faster than it can be transcribed", "backlog")

    async def _discard(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in self.websocket:
                pass

    async def _wait_for_backlog(self) -> None:
        """Backpressure: stop reading while too much audio waits for the model; give up after the hard limit."""
        if self.stream is None:
            return
        scheduler = self.app.scheduler
        waited = 0.0
        while scheduler.backlog_s(self.stream) > self.settings.max_backlog_s and not self.stream.ended:
            await asyncio.sleep(0.05)
            waited += 0.05
            if waited > self.settings.max_hard_backlog_s:
                raise Overloaded("the server cannot keep up with this stream", "backlog")

    async def _send_events(self) -> None:
        """Write the stream's events; after Done, close with the code the stream ended for."""
        assert self.stream is not None and self.protocol is not None
        while True:
            item = await self.stream.outbox.get()
            if isinstance(item, (Failed, Done)) and self.app.publisher is not None:
                self.app.publisher.session_ended(self.stream.id)
            if isinstance(item, Failed):
                raise ProtocolError(item.reason, "internal")
            if isinstance(item, Done):
                with contextlib.suppress(ConnectionClosed):
                    if self._error is not None:
                        message = self.protocol.error_message(self._error)
                        if message is not None:
                            await self.websocket.send(message)
                    else:
                        await self.protocol.on_done(item.audio_s)
                    await self.websocket.close(*self._close)
                return
            if isinstance(item, Final) and self.app.publisher is not None:
                self.app.publisher.final(self.stream.id, item)
            elif self.app.publisher is not None:
                self.app.publisher.partial(self.stream.id, item)
            if isinstance(item, Final) and self.settings.log_transcripts:
                log.info("final", extra={"session": self.stream.id, "segment": item.segment, "text": item.text})
            with contextlib.suppress(ConnectionClosed):
                await self.protocol.on_event(item)

    async def _fail(self, error: ProtocolError) -> None:
        assert self.protocol is not None
        message = self.protocol.error_message(error)
        with contextlib.suppress(ConnectionClosed):
            if message is not None:
                await self.websocket.send(message)
            # the reason carries the slug only: details stay in the error message and the logs
            await self.websocket.close(close_code(error), error.code)


def _address(websocket: ServerConnection) -> str:
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
