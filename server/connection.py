"""One admitted client: the only code that moves its bytes, between its socket, its protocol and the scheduler.

Three tasks per client: the reader (this class's `run`) hands messages to the protocol object and
its commands to the scheduler; the pump turns the stream's events into the protocol's messages as
they come (and hands them to the topic's feed), so that a client that reads slowly never holds up the
feed; the writer sends those messages. Limits, each a setting:

- backpressure: while more than `max_backlog_s` of audio waits for the model, the client is not
  read; that time does not count as idle, and past `max_hard_backlog_s` the stream closes 1013;
- idle: `idle_timeout_s` without audio while the client is read (control messages do not count);
- length: `max_session_s` of audio, `max_session_wall_s` of wall-clock time (1008, finalised first);
- text messages: `max_text_bytes`, `max_text_per_s` (beyond: not acted on, a `rate_limited` error), except
  those that carry audio (Protocol.audio_message), bounded as binary frames are (`max_frame_bytes` of audio
  as base64, backpressure);
- a client that does not read: more than `max_unsent_bytes` unsent for `slow_reader_timeout_s` (1013).

A client error (a ProtocolError) closes with its documented code after the finals of what was heard.
Any other exception, in the protocol object or here, is a bug of the server whatever the client sent:
it is logged with its traceback, and the stream is finalised and closed with 1011 `internal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import replace
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from captioner.server.errors import MessageTooBig, Overloaded, ProtocolError

from .auth import Grant
from .delivery import Delivery
from .feeds import Feeds
from .limits import TextRate
from .metrics import Metrics
from .outbox import Outbox
from .protocols import Audio, Command, End, Flush, Protocol, Reply
from .protocols.base import GOING_AWAY, POLICY
from .scheduler import Scheduler, Stream
from .settings import Settings

__all__ = ["Connection", "peer_address"]

log = logging.getLogger("captioner.server")

BACKLOG_POLL_S = 0.05
AUDIO_JSON_BYTES = 4096  # what a text message that carries audio may hold besides the audio's base64


def peer_address(transport: Any) -> str:
    """The client's IP address (the TCP peer: a proxy's, behind one)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "?"


class Connection:
    """One client's session; `await run()` serves it until its socket is closed."""

    def __init__(self, websocket: ServerConnection, protocol: Protocol, grant: Grant, settings: Settings,
                 scheduler: Scheduler, metrics: Metrics, feeds: Feeds) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.metrics = metrics
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
        self._text_rate = TextRate(self.settings.max_text_per_s, self._started)
        self._rate_limited_logged = False
        self.outbox = Outbox(websocket, self.settings, self._slow_reader, lambda: self._context)
        self.delivery = Delivery(protocol, self.outbox, feeds, settings.log_transcripts)

    @property
    def stream_id(self) -> str:
        return self.stream.id if self.stream else ""

    @property
    def _context(self) -> dict[str, str]:
        return {"session": self.stream_id, "client": self.client, "protocol": self.protocol.name}

    @property
    def ended(self) -> bool:
        return self.outbox.last_queued or (self.stream is not None and self.stream.ended)

    # -- the connection's life --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            for message in self.protocol.greeting():
                self.outbox.put(message)
            if not self.protocol.lazy_open:
                self.open_stream()
            await self._receive()
        except ProtocolError as e:
            self._fail(e)
        except ConnectionClosed:
            if not self.ended:
                self.delivery.outcome = "client gone"
                self._end()  # finalise anyway: finals still reach MQTT and the logs
        except Exception:  # a bug of ours, whatever the client sent: 1011, the details in the log only
            log.exception("connection failed", extra=self._context)
            self._fail(ProtocolError("internal error", "internal"))
        # The server ends the stream (drain, idle, limits, errors) while the client may still be sending: keep
        # reading, or the client's close frame would wait behind unread audio until the close times out.
        discard = asyncio.create_task(_discard(self.websocket))
        try:
            await self.delivery.finish(self.settings.drain_timeout_s)
        finally:
            discard.cancel()
            self.outbox.stop_watching()
            audio_s = round(self.stream.received_s, 3) if self.stream else 0.0
            log.info("session end", extra={"session": self.stream_id, "client": self.client,
                                           "protocol": self.protocol.name, "audio_s": audio_s,
                                           "outcome": self.delivery.outcome,
                                           "wall_s": round(self._loop.time() - self._started, 3)})
            self.finished.set()

    def drain(self) -> None:
        """The server is shutting down: finalise this stream and close with 1001."""
        self._finish_with(GOING_AWAY, "server shutting down", "drained")

    def open_stream(self) -> Stream:
        """Open the scheduler stream (at once, or on the first audio for protocols that configure late)."""
        if self.stream is None:
            if self.protocol.finals_only:
                self.protocol.speech = replace(self.protocol.speech, partials=False)
            self.stream = self.scheduler.open(self.protocol.sample_rate, self._loop, self.protocol.silence_s,
                                              self.protocol.speech)
            log.info("session start", extra={"session": self.stream.id, "client": self.client,
                                             "protocol": self.protocol.name, "sample_rate": self.protocol.sample_rate,
                                             "partials": self.protocol.speech.partials})
            self.delivery.start(self.stream, self.grant.topic(self.protocol.topic, self.stream.id))
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
            allowed = _audio_in_text(message, self.protocol, self.settings) or self._text_rate.allow(now)
            commands = self.protocol.receive_text(message, throttled=not allowed)
            if not allowed:
                commands = self._throttled(commands, now)
        else:
            if len(message) > self.settings.max_frame_bytes:
                raise MessageTooBig(len(message), self.settings.max_frame_bytes)
            commands = self.protocol.receive_binary(message)
        for command in commands:
            self._do(command)
        if self.stream is None or self.stream.ended:
            return
        if 0 < self.settings.max_session_s < self.stream.received_s:
            self._finish_with(POLICY, "maximum session length", "maximum session length")
        elif self.stream.backlog_s > self.settings.max_hard_backlog_s:
            raise Overloaded("audio is arriving faster than it can be transcribed", "backlog")

    def _throttled(self, commands: list[Command], now: float) -> list[Command]:
        """Over the text message rate: only End is acted on (limits.TextRate)."""
        kept, error, refused = self._text_rate.throttle(commands, now)
        if refused:
            self.metrics.rejections.labels("rate_limited").inc()
        if error is not None:
            if not self._rate_limited_logged:
                log.info("text messages rate limited", extra={"session": self.stream_id, "client": self.client})
                self._rate_limited_logged = True
            self.delivery.tell(error)
        return kept

    def _do(self, command: Command) -> None:
        if isinstance(command, Audio):
            stream = self.open_stream()
            if len(command.pcm) and not stream.ended:
                self.scheduler.push(stream, command.pcm)
                self._idle_deadline = self._loop.time() + self.settings.idle_timeout_s
        elif isinstance(command, Flush):
            self.scheduler.flush(self.open_stream())
        elif isinstance(command, End):
            self.scheduler.end(self.open_stream())
        elif isinstance(command, Reply):
            self.outbox.put(command.text)

    async def _wait_for_backlog(self) -> None:
        """Backpressure: stop reading while too much audio waits for the model; that time is not idle time."""
        if self.stream is None:
            return
        paused_at = self._loop.time()
        while self.stream.backlog_s > self.settings.max_backlog_s and not self.ended:
            await asyncio.sleep(BACKLOG_POLL_S)
            now = self._loop.time()
            if now - paused_at > self.settings.max_hard_backlog_s:
                raise Overloaded("the server cannot keep up with this stream", "backlog")
            if now >= self._wall_deadline:
                self._finish_with(POLICY, "maximum session time", "maximum session time")
        self._idle_deadline += self._loop.time() - paused_at

    # -- ending -----------------------------------------------------------------------------------

    def _end(self) -> None:
        """Finalise the stream: its last finals, then done (or the error), then the close."""
        if self.stream is not None:
            self.scheduler.end(self.stream)
        else:
            self.delivery.last()

    def _finish_with(self, code: int, reason: str, outcome: str) -> None:
        if self.ended:
            return
        self.outbox.close_with = (code, reason)
        self.delivery.outcome = outcome
        self._end()

    def _fail(self, error: ProtocolError) -> None:
        """A client's error (or ours): what was heard is finalised and sent, then the error, then the close."""
        self.metrics.rejections.labels(error.code).inc()
        self.delivery.fail(error)
        if self.stream is not None and not self.stream.ended:
            self.scheduler.end(self.stream)
        elif self.stream is None:
            self.delivery.last()

    def _slow_reader(self, error: ProtocolError) -> str | None:
        """The client has left too much output unread for too long (outbox.py): finalise (for MQTT) and close."""
        self._fail(error)
        return self.protocol.error_message(error)


def _audio_in_text(message: str, protocol: Protocol, settings: Settings) -> bool:
    """Whether a text message carries audio (OpenAI's base64 appends): bounded as binary frames are, by
    max_frame_bytes (as base64) and backpressure, not by max_text_bytes and the text message rate.
    Raises MessageTooBig for a message over its limit."""
    audio_limit = settings.max_frame_bytes * 4 // 3 + AUDIO_JSON_BYTES
    audio = len(message) <= audio_limit and protocol.audio_message(message)
    limit = audio_limit if audio else settings.max_text_bytes
    size = len(message) if len(message) > limit else len(message.encode())
    if size > limit:
        raise MessageTooBig(size, limit)
    return audio


async def _discard(websocket: ServerConnection) -> None:
    """Read and drop what a client still sends, so that its close frame is not stuck behind it."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in websocket:
            pass
