"""One admitted client: the only code that moves its bytes, between its socket, its protocol and the scheduler.

Three tasks per client: the reader (this class's `run`) hands messages to the protocol object and
its commands to the scheduler; the pump turns the stream's events into the protocol's messages as
they come (and publishes them to MQTT), so that a client that reads slowly never holds up the
feed; the writer sends those messages. Limits, each a setting:

- backpressure: while more than `max_backlog_s` of audio waits for the model, the client is not
  read; that time does not count as idle, and past `max_hard_backlog_s` the stream closes 1013;
- idle: `idle_timeout_s` without audio while the client is read (control messages do not count);
- length: `max_session_s` of audio, `max_session_wall_s` of wall-clock time (1008, finalised first);
- text messages: `max_text_bytes`, `max_text_per_s` (beyond: not acted on, a `rate_limited` error);
- a client that does not read: more than `max_unsent_bytes` unsent for `slow_reader_timeout_s` (1013).

A client error closes with its documented code after the finals of what was heard; an exception
that is not a ProtocolError while handling client input is that client's bad_message (1003),
logged at warning level; 1011 is for the server's own faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import struct
import termios
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from captioner.server.errors import BadRequest, MessageTooBig, Overloaded, ProtocolError, Throttled
from captioner.stream.events import Final

from .auth import Grant
from .limits import TokenBucket
from .protocols import Audio, Command, End, Flush, Protocol, Reply, close_code
from .scheduler import Done, Failed, Stream

if TYPE_CHECKING:
    from .app import App

__all__ = ["Connection", "peer_address"]

log = logging.getLogger("captioner.server")

NORMAL, GOING_AWAY, POLICY, INTERNAL, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013
TEXT_BURST_S = 2.0  # a stream may send max_text_per_s x this many text messages at once
RATE_ERROR_GAP_S = 1.0  # at most one rate_limited error message per this many seconds
BACKLOG_POLL_S = 0.05
CLOSE_TIMEOUT_S = 5.0  # a slow reader's time to read up to our close frame and answer it, before an abort


def unsent_in_kernel(transport: Any) -> int:
    """Bytes in the socket's send queue that the client has not acknowledged yet (Linux; 0 elsewhere)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (AttributeError, OSError, ValueError):
        return 0


def peer_address(transport: Any) -> str:
    """The client's IP address (the TCP peer: a proxy's, behind one)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "?"


class Connection:
    """One client's session; `await run()` serves it until its socket is closed."""

    def __init__(self, app: App, websocket: ServerConnection, protocol: Protocol, grant: Grant) -> None:
        self.app = app
        self.settings = app.settings
        self.websocket = websocket
        self.protocol = protocol
        self.grant = grant
        self.client = peer_address(websocket.transport)
        self.stream: Stream | None = None
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._idle_deadline = self._started + self.settings.idle_timeout_s
        wall = self.settings.max_session_wall_s
        self._wall_deadline = self._started + wall if wall else math.inf
        rate = self.settings.max_text_per_s
        self._text_rate = TokenBucket(rate, max(1.0, rate * TEXT_BURST_S), self._started)
        self._rate_error_at = -math.inf
        self._close: tuple[int, str] = (NORMAL, "")
        self._error: ProtocolError | None = None
        self._outcome = "ended"
        self._outgoing: deque[str] = deque()
        self._outgoing_bytes = 0
        self._last_queued = False  # every message is queued: the writer closes once they are sent
        self._wake = asyncio.Event()
        self._slow_timer: asyncio.TimerHandle | None = None
        self._slow = False  # declared a slow reader: output is dropped, the socket closed
        self._gone = False  # the socket is closed: output is dropped
        self._pump: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._write())

    @property
    def stream_id(self) -> str:
        return self.stream.id if self.stream else ""

    @property
    def ended(self) -> bool:
        return self._last_queued or (self.stream is not None and self.stream.ended)

    # -- the connection's life --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not self.protocol.lazy_open:
                self.open_stream()
            await self._receive()
        except ProtocolError as e:
            self._fail(e)
        except ConnectionClosed:
            if not self.ended:
                self._outcome = "client gone"
                self._end()  # finalise anyway: finals still reach MQTT and the logs
        except Exception:
            log.exception("connection failed", extra={"session": self.stream_id})
            self._fail(ProtocolError("internal error", "internal"))
        # The server ends the stream (drain, idle, limits, errors) while the client may still be sending: keep
        # reading, or the client's close frame would wait behind unread audio until the close times out.
        discard = asyncio.create_task(self._discard())
        try:
            await self._finish()
        finally:
            discard.cancel()
            self._cancel_slow_timer()
            audio_s = round(self.stream.received_s, 3) if self.stream else 0.0
            log.info("session end", extra={"session": self.stream_id, "client": self.client,
                                           "protocol": self.protocol.name, "audio_s": audio_s,
                                           "outcome": self._outcome,
                                           "wall_s": round(self._loop.time() - self._started, 3)})
            self.finished.set()

    async def _finish(self) -> None:
        """Wait for the last finals to be sent and the socket closed, for at most drain_timeout_s."""
        deadline = self._loop.time() + self.settings.drain_timeout_s
        while tasks := [t for t in (self._pump, self._writer) if t is not None and not t.done()]:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                self.abort()
                return
            await asyncio.wait(tasks, timeout=remaining)

    def drain(self) -> None:
        """The server is shutting down: finalise this stream and close with 1001."""
        self._finish_with(GOING_AWAY, "server shutting down", "drained")

    def abort(self) -> None:
        """Give up on this client now (past the drain timeout)."""
        for task in (self._pump, self._writer):
            if task is not None:
                task.cancel()
        self.websocket.transport.abort()

    def open_stream(self) -> Stream:
        """Open the scheduler stream (at once, or on the first audio for protocols that configure late)."""
        if self.stream is None:
            self.stream = self.app.scheduler.open(self.protocol.sample_rate, self._loop, self.protocol.silence_s)
            self._pump = asyncio.create_task(self._pump_events(self.stream))
            if self.app.publisher is not None:
                topic = self.grant.topic(self.protocol.topic, self.stream.id)
                self.app.publisher.session_started(self.stream.id, topic)
            log.info("session start", extra={"session": self.stream.id, "client": self.client,
                                             "protocol": self.protocol.name, "sample_rate": self.protocol.sample_rate})
            for message in self.protocol.opened(self.stream.id):
                self._queue(message)
        return self.stream

    # -- reading --------------------------------------------------------------------------------

    async def _receive(self) -> None:
        """Read client messages until the stream has ended (or the connection closes)."""
        while not self.ended:
            await self._wait_for_backlog()
            if self.ended:
                return
            deadline = min(self._idle_deadline, self._wall_deadline)
            try:
                message = await asyncio.wait_for(self.websocket.recv(), max(0.0, deadline - self._loop.time()))
            except TimeoutError:
                self._timed_out()
                return
            if self.ended:  # drained while waiting
                return
            self._on_message(message)

    def _timed_out(self) -> None:
        if self._loop.time() >= self._wall_deadline:
            self._finish_with(POLICY, "maximum session time", "maximum session time")
        else:
            log.info("idle timeout", extra={"session": self.stream_id})
            self._finish_with(GOING_AWAY, "idle timeout", "idle timeout")

    def _on_message(self, message: str | bytes) -> None:
        now = self._loop.time()
        if isinstance(message, str):
            if len(message) > self.settings.max_text_bytes or len(message.encode()) > self.settings.max_text_bytes:
                raise MessageTooBig(len(message.encode()), self.settings.max_text_bytes)
            allowed = self._text_rate.allow(now)
            commands = self._client_input(self.protocol.receive_text, message)
            if not allowed:
                commands = self._throttled(commands, now)
        else:
            if len(message) > self.settings.max_frame_bytes:
                raise MessageTooBig(len(message), self.settings.max_frame_bytes)
            commands = self._client_input(self.protocol.receive_binary, message)
        for command in commands:
            self._do(command)
        if self.stream is None or self.stream.ended:
            return
        if 0 < self.settings.max_session_s < self.stream.received_s:
            self._finish_with(POLICY, "maximum session length", "maximum session length")
        elif self.app.scheduler.backlog_s(self.stream) > self.settings.max_hard_backlog_s:
            raise Overloaded("audio is arriving faster than it can be transcribed", "backlog")

    def _client_input(self, handle: Callable[[Any], list[Command]], message: Any) -> list[Command]:
        """The protocol's commands for a message; any exception but ProtocolError is still the client's bad_message."""
        try:
            return handle(message)
        except ProtocolError:
            raise
        except Exception as e:
            log.warning("client message raised", extra={"session": self.stream_id, "client": self.client,
                                                        "protocol": self.protocol.name, "error": repr(e)[:200]})
            raise BadRequest("the message could not be handled", "bad_message") from None

    def _throttled(self, commands: list[Command], now: float) -> list[Command]:
        """Over the text message rate: only End is acted on; the client hears of it at most once a second."""
        kept = [c for c in commands if isinstance(c, End)]
        if len(kept) < len(commands) or not commands:
            self.app.metrics.rejections.labels("rate_limited").inc()
            if now - self._rate_error_at >= RATE_ERROR_GAP_S:
                if self._rate_error_at == -math.inf:
                    log.info("text messages rate limited", extra={"session": self.stream_id, "client": self.client})
                self._rate_error_at = now
                error = Throttled(f"more than {self.settings.max_text_per_s:g} text messages per second: "
                                  "this one was not acted on", "rate_limited")
                message = self.protocol.error_message(error)
                if message is not None:
                    self._queue(message)
        return kept

    def _do(self, command: Command) -> None:
        if isinstance(command, Audio):
            stream = self.open_stream()
            if len(command.pcm) and not stream.ended:
                self.app.scheduler.push(stream, command.pcm)
                self._idle_deadline = self._loop.time() + self.settings.idle_timeout_s
        elif isinstance(command, Flush):
            self.app.scheduler.flush(self.open_stream())
        elif isinstance(command, End):
            self.app.scheduler.end(self.open_stream())
        elif isinstance(command, Reply):
            self._queue(command.text)

    async def _wait_for_backlog(self) -> None:
        """Backpressure: stop reading while too much audio waits for the model; that time is not idle time."""
        if self.stream is None:
            return
        backlog_s = self.app.scheduler.backlog_s
        paused_at = self._loop.time()
        while backlog_s(self.stream) > self.settings.max_backlog_s and not self.ended:
            await asyncio.sleep(BACKLOG_POLL_S)
            now = self._loop.time()
            if now - paused_at > self.settings.max_hard_backlog_s:
                raise Overloaded("the server cannot keep up with this stream", "backlog")
            if now >= self._wall_deadline:
                self._finish_with(POLICY, "maximum session time", "maximum session time")
        self._idle_deadline += self._loop.time() - paused_at

    async def _discard(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in self.websocket:
                pass

    # -- ending -----------------------------------------------------------------------------------

    def _end(self) -> None:
        """Finalise the stream: its last finals, then done (or the error), then the close."""
        if self.stream is not None:
            self.app.scheduler.end(self.stream)
        else:
            self._queue_last()

    def _finish_with(self, code: int, reason: str, outcome: str) -> None:
        if self.ended:
            return
        self._close = (code, reason)
        self._outcome = outcome
        self._end()

    def _fail(self, error: ProtocolError) -> None:
        """A client's error (or ours): what was heard is finalised and sent, then the error, then the close."""
        self._outcome = error.code
        self.app.metrics.rejections.labels(error.code).inc()
        if self._error is None:
            self._error = error
            self._close = (close_code(error), error.code)  # the reason carries the code only: details in the message
        if self.stream is not None and not self.stream.ended:
            self.app.scheduler.end(self.stream)
        elif self.stream is None:
            self._queue_last()

    def _queue_last(self, audio_s: float = 0.0) -> None:
        """Queue the last messages (the error's, or the protocol's done) and have the writer close after them."""
        if self._last_queued:
            return
        if self._error is not None:
            message = self.protocol.error_message(self._error)
            messages = [message] if message is not None else []
        else:
            messages = self.protocol.done(audio_s)
        for message in messages:
            self._queue(message)
        self._last_queued = True
        self._wake.set()

    # -- writing --------------------------------------------------------------------------------

    async def _pump_events(self, stream: Stream) -> None:
        """Translate the stream's events into messages as they come, and publish them; ends at Done."""
        try:
            await self._pump_until_done(stream)
        except Exception:  # ours: the protocol failed on an event
            log.exception("sending events failed", extra={"session": stream.id})
            self._internal()

    async def _pump_until_done(self, stream: Stream) -> None:
        publisher = self.app.publisher
        while True:
            item = await stream.outbox.get()
            if isinstance(item, (Failed, Done)) and publisher is not None:
                publisher.session_ended(stream.id)
            if isinstance(item, Failed):
                log.error("the model failed on this stream", extra={"session": stream.id, "reason": item.reason})
                self._internal()
                return
            if isinstance(item, Done):
                self._queue_last(item.audio_s)
                return
            if publisher is not None:
                (publisher.final if isinstance(item, Final) else publisher.partial)(stream.id, item)
            if isinstance(item, Final) and self.settings.log_transcripts:
                log.info("final", extra={"session": stream.id, "segment": item.segment, "text": item.text})
            for message in self.protocol.event(item):
                self._queue(message)

    def _internal(self) -> None:
        """Our own fault on this stream: close 1011, the details in the log only."""
        self._error = ProtocolError("internal error", "internal")
        self._close, self._outcome = (INTERNAL, "internal"), "internal"
        self._queue_last()

    def _queue(self, message: str) -> None:
        if self._slow or self._gone or self._last_queued:
            return
        self._outgoing.append(message)
        self._outgoing_bytes += len(message)
        self._wake.set()
        self._watch_unsent()

    async def _write(self) -> None:
        """Send queued messages in order; once the last is sent, close with the code the stream ended for."""
        try:
            while True:
                while self._outgoing:
                    message = self._outgoing.popleft()
                    self._outgoing_bytes -= len(message)
                    await self.websocket.send(message)
                    self._watch_unsent()
                if self._last_queued:
                    await self.websocket.close(*self._close)
                    return
                self._wake.clear()
                await self._wake.wait()
        except ConnectionClosed:
            self._gone = True
            self._outgoing.clear()

    @property
    def unsent_bytes(self) -> int:
        """Output the client has not received: queued here, in the transport's buffer, and in the kernel's."""
        transport = self.websocket.transport
        return self._outgoing_bytes + transport.get_write_buffer_size() + unsent_in_kernel(transport)

    def _watch_unsent(self) -> None:
        """Start the slow-reader clock when unsent output passes max_unsent_bytes; stop it when it is back under."""
        unsent = self.unsent_bytes
        if unsent > self.settings.max_unsent_bytes:
            if self._slow_timer is None:
                self._slow_timer = self._loop.call_later(self.settings.slow_reader_timeout_s, self._slow_reader)
        else:
            self._cancel_slow_timer()

    def _cancel_slow_timer(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    def _slow_reader(self) -> None:
        """The client has left too much output unread for too long: drop it, finalise (for MQTT), close 1013."""
        self._slow_timer = None
        unsent = self.unsent_bytes
        if unsent <= self.settings.max_unsent_bytes or self._slow:  # it caught up meanwhile
            return
        log.warning("slow reader: closing", extra={"session": self.stream_id, "client": self.client,
                                                   "unsent_bytes": unsent,
                                                   "timeout_s": self.settings.slow_reader_timeout_s})
        error = Overloaded(f"the client left {unsent} bytes unread for {self.settings.slow_reader_timeout_s:g} s",
                           "slow_reader")
        self._fail(error)
        self._slow = True
        self._outgoing.clear()
        self._outgoing_bytes = 0
        self._writer.cancel()
        self._writer = asyncio.create_task(self._close_slow_reader(error))

    async def _close_slow_reader(self, error: ProtocolError) -> None:
        """The error message and the close go out behind what the client has not read; abort if it never does."""
        message = self.protocol.error_message(error)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if message is not None:
                    await self.websocket.send(message)
                await self.websocket.close(*self._close)
        except (TimeoutError, ConnectionClosed):
            self.websocket.transport.abort()
