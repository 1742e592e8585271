"""A client's outgoing messages: a writer task sends them in order, then the close; a client that does not read is found.

Unsent output counts what is queued here, in the transport's buffer and in the kernel's send
queue. Past `max_unsent_bytes` for `slow_reader_timeout_s` the client is a slow reader: its
queued output is dropped, and the error message and the close go out behind what it has not
read (the socket is aborted if it never reads them).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .errors import Overloaded, ProtocolError
from .protocols.base import NORMAL
from .settings import Settings

__all__ = ["Outbox", "unsent_in_kernel"]

log = logging.getLogger("captioner.server")

CLOSE_TIMEOUT_S = 5.0  # a slow reader's time to read up to our close frame and answer it, before an abort


def unsent_in_kernel(transport: Any) -> int:
    """Bytes in the socket's send queue that the client has not acknowledged yet (Linux; 0 elsewhere)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (AttributeError, OSError, ValueError):
        return 0


class Outbox:
    def __init__(self, websocket: ServerConnection, settings: Settings,
                 on_slow_reader: Callable[[ProtocolError], str | None], context: Callable[[], dict[str, str]]) -> None:
        """on_slow_reader(error): the connection ends the stream for a slow reader, after which only the close
        follows; it returns the error message to send before the close (or None). context: for the log."""
        self.websocket = websocket
        self.settings = settings
        self.close_with: tuple[int, str] = (NORMAL, "")  # the close code and reason, once the last message is sent
        self.last_queued = False  # every message is queued: the writer closes once they are sent
        self.slow = False  # declared a slow reader: output is dropped, the socket closed
        self.gone = False  # the socket is closed: output is dropped
        self._on_slow_reader = on_slow_reader
        self._context = context
        self._outgoing: deque[str] = deque()
        self._outgoing_bytes = 0
        self._wake = asyncio.Event()
        self._slow_timer: asyncio.TimerHandle | None = None
        self.writer = asyncio.create_task(self._write())

    def put(self, message: str) -> None:
        if self.slow or self.gone or self.last_queued:
            return
        self._outgoing.append(message)
        self._outgoing_bytes += len(message)
        self._wake.set()
        self._watch_unsent()

    def close_after_queued(self) -> None:
        """No more messages: the writer closes (with close_with) once the queued ones are sent."""
        self.last_queued = True
        self._wake.set()

    @property
    def unsent_bytes(self) -> int:
        """Output the client has not received: queued here, in the transport's buffer, and in the kernel's."""
        transport = self.websocket.transport
        return self._outgoing_bytes + transport.get_write_buffer_size() + unsent_in_kernel(transport)

    def stop_watching(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    async def _write(self) -> None:
        try:
            while True:
                while self._outgoing:
                    message = self._outgoing.popleft()
                    self._outgoing_bytes -= len(message)
                    await self.websocket.send(message)
                    self._watch_unsent()
                if self.last_queued:
                    await self.websocket.close(*self.close_with)
                    return
                self._wake.clear()
                await self._wake.wait()
        except ConnectionClosed:
            self.gone = True
            self._outgoing.clear()

    def _watch_unsent(self) -> None:
        """Start the slow-reader clock when unsent output passes max_unsent_bytes; stop it when it is back under."""
        if self.unsent_bytes > self.settings.max_unsent_bytes:
            if self._slow_timer is None:
                loop = asyncio.get_running_loop()
                self._slow_timer = loop.call_later(self.settings.slow_reader_timeout_s, self._slow_reader)
        else:
            self.stop_watching()

    def _slow_reader(self) -> None:
        self._slow_timer = None
        unsent = self.unsent_bytes
        if unsent <= self.settings.max_unsent_bytes or self.slow:  # it caught up meanwhile
            return
        timeout_s = self.settings.slow_reader_timeout_s
        log.warning("slow reader: closing", extra={**self._context(), "unsent_bytes": unsent, "timeout_s": timeout_s})
        message = self._on_slow_reader(Overloaded(f"the client left {unsent} bytes unread for {timeout_s:g} s",
                                                  "slow_reader"))
        self.slow = True
        self._outgoing.clear()
        self._outgoing_bytes = 0
        self.writer.cancel()
        self.writer = asyncio.create_task(self._close_slow_reader(message))

    async def _close_slow_reader(self, message: str | None) -> None:
        """The error message and the close go out behind what the client has not read; abort if it never does."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if message is not None:
                    await self.websocket.send(message)
                await self.websocket.close(*self.close_with)
        except (TimeoutError, ConnectionClosed):
            self.websocket.transport.abort()
