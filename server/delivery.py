"""A stream's output: its events as the protocol's messages, to the client (through its outbox) and to its topic's
feed (feeds.py: viewers, MQTT, subtitles, YouTube), then the last messages (the protocol's done, or the error) and
the close."""

from __future__ import annotations

import asyncio
import logging
import time

from captioner.server.errors import ProtocolError
from captioner.stream.events import Final

from .feeds import Feeds
from .outbox import Outbox
from .protocols import Protocol
from .scheduler import Done, Failed, Stream

__all__ = ["Delivery"]

log = logging.getLogger("captioner.server")



class Delivery:
    def __init__(self, protocol: Protocol, outbox: Outbox, feeds: Feeds, log_transcripts: bool) -> None:
        self.protocol = protocol
        self.outbox = outbox
        self.feeds = feeds
        self.log_transcripts = log_transcripts
        self.error: ProtocolError | None = None  # the first error: its message goes last, its code closes
        self.outcome = "ended"  # why the stream ended, for the log
        self.pump: asyncio.Task[None] | None = None

    def start(self, stream: Stream, topic: str) -> None:
        """The stream has opened (publishing under `topic`): deliver its events as they come, until it is done."""
        self.feeds.started(stream.id, topic)
        for message in self.protocol.opened(stream.id):
            self.queue(message)
        self.pump = asyncio.create_task(self._pump_events(stream))

    def queue(self, message: str) -> None:
        self.outbox.put(message)

    def tell(self, error: ProtocolError) -> None:
        """Tell the client of an error that does not end the stream."""
        message = self.protocol.error_message(error)
        if message is not None:
            self.queue(message)

    def fail(self, error: ProtocolError) -> None:
        """Record an error: the first one's message goes last and its code closes the connection."""
        self.outcome = error.code
        if self.error is None:
            self.error = error
            # the reason: the code only; details in the message
            self.outbox.close_with = (self.protocol.close_code(error), error.code)

    def last(self, audio_s: float = 0.0) -> None:
        """Queue the last messages (the error's, or the protocol's done) and have the writer close after them."""
        if self.outbox.last_queued:
            return
        if self.error is not None:
            message = self.protocol.error_message(self.error)
            messages = [message] if message is not None else []
        else:
            messages = self.protocol.done(audio_s)
        for message in messages:
            self.queue(message)
        self.outbox.close_after_queued()

    async def finish(self, timeout_s: float) -> None:
        """Wait for the last messages to be sent and the socket closed; past `timeout_s`, abort."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while tasks := [t for t in (self.pump, self.outbox.writer) if t is not None and not t.done()]:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                self.abort()
                return
            await asyncio.wait(tasks, timeout=remaining)

    def abort(self) -> None:
        """Give up on this client now: stop sending and drop the connection."""
        for task in (self.pump, self.outbox.writer):
            if task is not None:
                task.cancel()
        self.outbox.websocket.transport.abort()

    def internal(self) -> None:
        """Our own fault on this stream: close 1011 (or the protocol's own code), the details in the log only."""
        self.error = ProtocolError("internal error", "internal")
        self.outbox.close_with, self.outcome = (self.protocol.close_code(self.error), "internal"), "internal"
        self.last()

    async def _pump_events(self, stream: Stream) -> None:
        try:
            await self._pump_until_done(stream)
        except Exception:  # ours: the protocol failed on an event
            log.exception("sending events failed", extra={"session": stream.id})
            self.internal()

    async def _pump_until_done(self, stream: Stream) -> None:
        feeds, origin = self.feeds, None
        while True:
            item = await stream.outbox.get()
            if isinstance(item, (Failed, Done)):
                feeds.ended(stream.id, clean=isinstance(item, Done) and self.error is None and self.outcome == "ended")
            if isinstance(item, Failed):
                log.error("the model failed on this stream", extra={"session": stream.id, "reason": item.reason})
                self.internal()
                return
            if isinstance(item, Done):
                self.last(item.audio_s)
                return
            if isinstance(item, Final) and self.log_transcripts:
                log.info("final", extra={"session": stream.id, "segment": item.segment, "text": item.text})
            for message in self.protocol.event(item):
                self.queue(message)
            if origin is None:  # the Unix time of the stream's first audio
                loop = asyncio.get_running_loop()
                origin = time.time() - (loop.time() - (stream.started or loop.time()))
            feeds.event(stream.id, item, origin)  # after the speaker's own messages
