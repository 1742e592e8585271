"""The service: WebSocket streams (five protocols), the HTTP API (api.py), health, readiness, metrics and the page.

The edge, in the order a request meets it (docs/security.md):

1. a connection counts as a pending handshake until its upgrade request is in (`max_pending_*`,
   `handshake_timeout_s`); over the limits it gets a bare HTTP 503 and is closed;
2. the Host header must be one this listener serves (403 `forbidden_host`);
3. plain HTTP goes to the API, the page and the operations endpoints (a request with a body is handed
   over to exchange.py as soon as its method shows, and the API refuses it before its body is read);
   an upgrade to an unknown path is 404;
4. a browser's Origin must be allowed (403 `forbidden_origin`);
5. the protocol object decides: token (401), parameters (400), topic rules (403);
6. admission: starting or draining (503), `max_sessions` (503 with Retry-After), per address and
   per token (429);

so that every refusal comes before the upgrade and no refused socket ever counts as a session.
Admitted clients are served by `Connection` (connection.py); errors become codes in one place,
protocols/base.py. An exception that is not a ProtocolError is a bug of the server, whoever's
request met it: it is logged with its traceback and answered with HTTP 500 (close 1011 after the
upgrade), never passed off as the client's bad request.

The app runs its streams' model work on an engine (captioner.stream.session.JobRunner): an Engine
over the Whisper checkpoint that `captioner serve` loads, or a fake one in tests; `ModelInfo`
names the model for the metrics, the logs and /readyz.
"""

from __future__ import annotations

import asyncio
import gc
import http
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from captioner.model.errors import ModelError
from captioner.model.loading import DTYPES, load_model
from captioner.model.whisper import Model
from captioner.server.errors import BadRequest, Forbidden, Overloaded, Throttled
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.engine import Engine
from captioner.stream.jobs import AUTO
from captioner.stream.session import JobRunner, Session

from .api import Api
from .auth import Grant, TokenTable
from .capacity import Capacity
from .connection import Connection, peer_address
from .feeds import Feeds
from .hosts import HostPolicy
from .limits import Admission, Handshakes, Ticket
from .memory import MemoryTrimmer
from .metrics import Metrics
from .protocols import PROTOCOLS, Options, Protocol, Refusal, Request
from .protocols.base import plain_refusal
from .scheduler import Scheduler
from .settings import Settings
from .viewers import FEEDS, Viewers, WsViewer
from .web import Web, plain, response

__all__ = ["App", "ModelInfo", "run_service"]

log = logging.getLogger("captioner.server")

RETRY_AFTER_S = 5  # what a client refused for capacity or a drain is told to wait
MAX_METHOD_BYTES = 16  # a request whose first bytes hold no space by then is not a GET: HTTP answers it
CLOSE_TIMEOUT_S = 5.0  # a client's answer to our close frame
PING_INTERVAL_S = 20.0  # keepalive pings, for proxies and NATs; a missing pong closes nothing (see start)
_BUSY = b"too_many_handshakes: try again in a moment\n"
TOO_MANY_HANDSHAKES = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_BUSY), _BUSY))


class Socket(ServerConnection):
    """A websockets connection that holds what its client holds: a pending-handshake ticket from connect
    until its request is in, and an admission ticket once admitted; both released when it is lost.

    websockets reads only requests without a body: a request of any other method than GET is handed over,
    transport and all, to an HTTP exchange (exchange.py) as soon as its method shows."""

    def __init__(self, app: App, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        self.pending: Ticket | None = None
        self.admitted: Ticket | None = None
        self.admitted_as: tuple[Protocol, Grant] | None = None
        self.watching: tuple[str, str | None] | None = None  # a caption viewer's topic and resume point, once admitted
        self._first = b""  # what came before the method was known
        self._routed = False
        self._handed_over: asyncio.Future[None] = self.loop.create_future()

    def data_received(self, data: bytes) -> None:
        if not self._routed:
            self._first += data
            method, space, _ = self._first.partition(b" ")
            if not space and len(self._first) < MAX_METHOD_BYTES:
                return
            self._routed = True
            data, self._first = self._first, b""
            if method != b"GET":
                self._hand_over(data)
                return
        super().data_received(data)

    def _hand_over(self, data: bytes) -> None:
        exchange = self.app.api.exchange(self.pending)
        self.pending = None  # the exchange releases it once the request is in
        self._give(exchange)
        exchange.data_received(data)

    def take_over(self, protocol: asyncio.Protocol) -> asyncio.Future[Response]:
        """Hand the socket, its request read, to a protocol that answers it (a caption feed's server-sent events,
        an answer that never ends): process_request returns what this returns, which never resolves, and the
        handshake returns as handed over."""
        self._give(protocol)
        return self.loop.create_future()

    def _give(self, protocol: asyncio.Protocol) -> None:
        transport = self.transport
        self.transport = _Detached()  # type: ignore[assignment]  # websockets' own closing must not reach it now
        transport.set_protocol(protocol)
        try:
            protocol.connection_made(transport)
        finally:  # the handshake returns, whatever the protocol did
            self._handed_over.set_result(None)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """websockets' opening handshake, unless the request was handed over to an HTTP exchange."""
        handshake = asyncio.ensure_future(super().handshake(*args, **kwargs))
        await asyncio.wait([handshake, self._handed_over], return_when=asyncio.FIRST_COMPLETED)
        if self._handed_over.done():
            handshake.cancel()
            return
        await handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pending = self.app.handshakes.enter(peer_address(transport))
        if self.pending is None:  # refused before reading a byte: the request would only cost us more
            self.app.metrics.rejections.labels("too_many_handshakes").inc()
            transport.write(TOO_MANY_HANDSHAKES)  # type: ignore[attr-defined]
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for ticket in (self.pending, self.admitted):
            if ticket is not None:
                ticket.release()


class _Detached:
    """The transport a Socket keeps once it has handed its own over: closing it does nothing."""

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@dataclass(frozen=True)
class ModelInfo:
    """Which model the engine runs: for the build metric, every log record and /readyz."""

    name: str  # tiny.en, base, or the checkpoint's name
    checksum: str  # a prefix of its weights' SHA-256: the model's version
    device: str  # cpu, cuda, cuda:0, ...
    dtype: str  # float32, bfloat16 or float16
    int8: str = ""  # the parts whose linear layers run in int8: "decoder", "decoder,encoder" or ""

    @classmethod
    def of(cls, model: Model) -> ModelInfo:
        return cls(model.name, model.checksum, str(model.device), str(model.dtype).removeprefix("torch."),
                   ",".join(model.int8))


class App:
    """The service; `await app.start()`, then `await app.run()` (until SIGTERM/SIGINT) or `await app.stop()`."""

    def __init__(self, settings: Settings, model: Model | None = None, *, engine: JobRunner | None = None,
                 model_info: ModelInfo | None = None, protocols: Mapping[str, type[Protocol]] = PROTOCOLS) -> None:
        """The service over `engine`, whose model `model_info` names (a fake engine, in tests), or else over an
        Engine of `model` (by default settings.model, loaded here). protocols: the stream endpoints by path.
        Raises ModelError for a checkpoint that cannot be loaded or a settings.language it does not know."""
        if (engine is None) != (model_info is None) or (engine is not None and model is not None):
            raise ValueError("App takes a model, or an engine with its model_info, not both")
        self.settings = settings
        self.memory = MemoryTrimmer(settings.trim_memory)  # before the model's first matmul: it bounds caches
        if engine is None or model_info is None:
            engine, model_info = _engine_for(settings, model)
        self.engine, self.model_info = engine, model_info
        self.metrics = Metrics()
        self.metrics.build.info({"model": model_info.name, "checksum": model_info.checksum, "version": _version(),
                                 "device": model_info.device, "dtype": model_info.dtype, "int8": model_info.int8})
        workers = settings.workers or (1 if engine.on_gpu else torch.get_num_threads())
        capacity = Capacity(workers, settings.max_load, settings.load_window_s, settings.max_late_s)
        self.scheduler = Scheduler(engine, self.metrics, settings.max_wait_ms, workers, capacity)
        self.tokens = TokenTable.load(settings.tokens, settings.tokens_file, settings.viewer_tokens_file)
        self.protocols, self.options = protocols, _options(settings, model_info.name, engine.tokenizer)
        self.handshakes = Handshakes(settings.max_pending_handshakes, settings.max_pending_per_address)
        self.admission = Admission(settings.max_sessions, settings.max_sessions_per_address,
                                   settings.max_sessions_per_token, self.scheduler.room, settings.when_full)
        self.hosts = HostPolicy(settings.host, bool(settings.certfile), settings.allowed_hosts, settings.allowed_origins)
        self.connections: set[Connection] = set()
        self.ready = self.draining = False
        self.server: Server | None = None
        self.admin: Server | None = None
        self._stopped = asyncio.Event()
        self.web = Web(settings, self.metrics, self.readiness)
        serving = lambda: "draining" if self.draining else None if self.ready else "starting"  # noqa: E731
        self.api = Api(settings, self.options, self.tokens, self.hosts, self.scheduler, self.metrics, serving)
        self.feeds = Feeds(settings, self.metrics)
        self.viewers = Viewers(settings, self.tokens, self.feeds, serving)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def admin_port(self) -> int | None:
        return self.admin.sockets[0].getsockname()[1] if self.admin is not None else None

    async def start(self) -> None:
        ssl_context = _tls_context(self.settings)
        # ping_timeout=None: a client that does not answer pings is one that does not read, which the
        # slow-reader rule closes with its documented code (1013), not websockets' 1011.
        self.server = await serve(
            self._handle, self.settings.host, self.settings.port, ssl=ssl_context,
            process_request=self._process_request, select_subprotocol=self._select_subprotocol,
            create_connection=lambda *args, **kwargs: Socket(self, *args, **kwargs),  # type: ignore[arg-type]
            max_size=2 * self.settings.max_frame_bytes, compression=None,
            open_timeout=self.settings.handshake_timeout_s, close_timeout=CLOSE_TIMEOUT_S,
            ping_interval=PING_INTERVAL_S, ping_timeout=None,
        )
        if self.settings.admin_port is not None:
            self.admin = await serve(self.web.never_upgraded, self.settings.admin_host, self.settings.admin_port,
                                     process_request=self.web.admin_request,
                                     open_timeout=self.settings.handshake_timeout_s)
        self.scheduler.start()
        self.feeds.start()
        await asyncio.get_running_loop().run_in_executor(None, _warm_up, self.engine)
        self.ready = True
        log.info("listening", extra={"host": self.settings.host, "port": self.port, "admin_port": self.admin_port,
                                     "tls": ssl_context is not None, "strategy": self.settings.stream.strategy})

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain; a second signal exits at once."""
        self.handle_signals()
        await self._stopped.wait()

    def handle_signals(self) -> None:
        """From now on SIGTERM and SIGINT drain the server (call before saying that it serves)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if self.draining:
            log.warning("second signal: exiting without draining")
            raise SystemExit(1)
        # the listeners stay open until the process exits: a balancer gets 503 until then, never a refused connection
        asyncio.get_running_loop().create_task(self.stop(close_listeners=False))

    async def stop(self, close_listeners: bool = True) -> None:
        """Drain: refuse new streams (503, the listener stays open), finalise every open one (finals, then
        close 1001), stop the model and the MQTT feed, and close the listeners last (unless the process is
        about to exit anyway)."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        log.info("draining", extra={"sessions": len(self.connections)})
        for connection in list(self.connections):
            connection.drain()
        waiting = [c.finished for c in self.connections] + [e.finished for e in self.api.exchanges]
        if waiting:  # streams finalise; files being transcribed finish
            await asyncio.wait([asyncio.ensure_future(f.wait()) for f in waiting],
                               timeout=self.settings.drain_timeout_s)
        for connection in list(self.connections):  # past the drain timeout
            connection.delivery.abort()
        self.api.abort()
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.stop)
        await self.feeds.stop()
        for server in (self.server, self.admin) if close_listeners else ():
            if server is not None:
                server.close()
                await server.wait_closed()
        log.info("stopped")
        self._stopped.set()

    # -- the edge: everything before the upgrade ---------------------------------------------------

    def _process_request(self, socket: Socket, request: HttpRequest) -> Response | Awaitable[Response] | None:
        if socket.pending is not None:
            socket.pending.release()  # the request is in: no longer a pending handshake
        try:
            return self._decide(socket, request)
        except Exception:  # a bug of ours, whatever the request: details stay in the log
            log.exception("request failed", extra={"client": peer_address(socket.transport), "path": request.path})
            self.metrics.rejections.labels("internal").inc()
            return plain(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal: see the server log\n")

    def _decide(self, socket: Socket, request: HttpRequest) -> Response | Awaitable[Response] | None:
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or not self.hosts.allows_host(hosts[0]):
            return self._refuse(socket, "http", plain_refusal(Forbidden("this server does not serve that Host",
                                                                         "forbidden_host")))
        try:
            req = Request.parse(request.path, list(request.headers.raw_items()))
        except BadRequest as e:
            return self._refuse(socket, "http", plain_refusal(e))
        upgrade = "websocket" in req.headers.get("upgrade", "").lower()
        if req.path.startswith(FEEDS):  # the caption feeds: any Origin may read them (viewers.py)
            return self.viewers.answer(req, upgrade, socket)
        if not upgrade:
            answer = self.api.get(req)
            if answer is not None:
                return response(answer.status, answer.body, answer.content_type, answer.headers)
            return self.web.serve(req.path, operations=self.admin is None)
        protocol_class = self.protocols.get(req.path)
        if protocol_class is None:
            return plain(http.HTTPStatus.NOT_FOUND, "no such stream endpoint\n")
        if not self.hosts.allows_origin(req.headers.get("origin"), hosts[0]):
            return self._refuse(socket, "http", plain_refusal(Forbidden("browser origin not allowed",
                                                                         "forbidden_origin")))
        protocol = protocol_class(req, self.options)
        outcome = protocol.handshake(self.tokens)  # a client's error is a Refusal; anything raised is our bug (500)
        if isinstance(outcome, Refusal):
            return self._refuse(socket, protocol.name, outcome)
        try:
            if self.draining or not self.ready:
                raise Overloaded("the server is shutting down" if self.draining else "the server is starting",
                                 "draining" if self.draining else "starting", RETRY_AFTER_S)
            socket.admitted = self.admission.admit(peer_address(socket.transport), outcome.grant.token)
        except (Overloaded, Throttled) as e:
            return self._refuse(socket, protocol.name, protocol.refuse(e))
        protocol.finals_only = not socket.admitted.partials
        socket.admitted_as = (protocol, outcome.grant)
        return None

    def _refuse(self, socket: Socket, protocol: str, refusal: Refusal) -> Response:
        self.metrics.rejections.labels(refusal.error.code).inc()
        log.info("refused", extra={"client": peer_address(socket.transport), "protocol": protocol,
                                   "status": refusal.status, "code": refusal.error.code})
        return response(refusal.status, refusal.body, refusal.content_type, refusal.headers)

    def _select_subprotocol(self, socket: Socket, offered: list[str]) -> str | None:
        if socket.admitted_as is None:
            return None
        return socket.admitted_as[0].subprotocol()

    def readiness(self) -> dict[str, Any]:
        publisher = self.feeds.publisher
        mqtt = "off" if publisher is None else ("ok" if publisher.connected else "degraded")
        state = self.admission.state()
        ready = self.ready and not self.draining and not state["full"]
        return {"ready": ready, "model": self.model_info.name, "draining": self.draining, **state, "mqtt": mqtt}

    # -- admitted streams -------------------------------------------------------------------------

    async def _handle(self, socket: Socket) -> None:
        if socket.watching is not None:
            return await WsViewer(socket).serve(self.feeds, *socket.watching)
        assert socket.admitted_as is not None and socket.admitted is not None
        protocol, grant = socket.admitted_as
        connection = Connection(socket, protocol, grant, self.settings, self.scheduler, self.metrics, self.feeds)
        self.connections.add(connection)
        self.metrics.connections.labels(protocol.name).inc()
        try:
            await connection.run()
        finally:
            self.metrics.connections.labels(protocol.name).dec()
            self.connections.discard(connection)
            socket.admitted.release()
            self.memory.session_ended()


def _engine_for(settings: Settings, model: Model | None) -> tuple[Engine, ModelInfo]:
    """An Engine over `model`, or else over settings.model loaded on settings.device (after settings.threads)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = model or load_model(settings.model, settings.device, DTYPES.get(settings.dtype or ""), int8=settings.int8)
    return Engine(model, settings.stream), ModelInfo.of(model)


def _options(settings: Settings, model_name: str, tokenizer: Any) -> Options:
    """What the protocols know of the server. Raises ModelError for a settings.language the model does not know."""
    if settings.language != AUTO and settings.language not in tokenizer.languages:
        raise ModelError(f"--language {settings.language}: model {model_name} does not know it")
    return Options(model_name, settings.language, tokenizer.languages, settings.vosk_sample_rate,
                   settings.max_json_depth, settings.max_keywords, settings.max_keyword_tokens,
                   lambda text: len(tokenizer.encode(text)), settings.max_session_wall_s)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(settings.certfile, settings.keyfile)
    return context


def _warm_up(engine: JobRunner) -> None:
    """One dummy pass through encoder and decoder, so that the first stream is not slow; then what start-up made
    leaves the garbage collector's sight."""
    session = Session.for_engine(engine)
    session.push(np.zeros(SAMPLE_RATE, dtype=np.float32))
    session.end()
    # The model's modules and the tokenizer's tables live as long as the process. Frozen, they no longer make
    # each full collection, which holds every thread and the event loop, take 40 ms or more.
    gc.collect()
    gc.freeze()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("captioner")
    except PackageNotFoundError:
        return "0+unknown"


def run_service(settings: Settings) -> NoReturn:
    """`captioner serve`: run the service until SIGTERM or SIGINT, drain, and exit."""
    from .logs import configure_logging

    async def main() -> None:
        app = App(settings)
        configure_logging(settings.log_format, app.model_info.name, app.model_info.checksum)
        await app.start()
        app.handle_signals()
        scheme = "wss" if settings.certfile else "ws"
        print(f"captioner: serving {app.model_info.name} at {scheme}://{settings.host}:{app.port}/v1/stream "
              f"(page: {'https' if settings.certfile else 'http'}://{settings.host}:{app.port}/)", file=sys.stderr,
              flush=True)
        await app.run()

    asyncio.run(main())
    # Drained and stopped. The listener has stayed open (draining answers 503, never a refused connection):
    # exit now rather than after the second or so the interpreter takes to tear torch down, during which
    # a connection would be accepted by the kernel and never answered.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
