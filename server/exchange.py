"""One plain HTTP request with a body (a file upload, a JSON call) on the stream port, read with h11.

websockets reads only bodiless requests (a WebSocket upgrade, a GET), so the service's socket
(app.Socket) hands any other request over to an Exchange as soon as its method is known: the
Exchange takes the transport, reads the head and then the body, bounded in size (413) and time
(408), lets the API check the head before a byte of body is read (so that a refusal, such as a
wrong key or a full server, costs the client no upload), answers once, and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11

from .protocols.parse import Request

__all__ = ["Answer", "Exchange", "Head", "MAX_HEAD_BYTES"]

log = logging.getLogger("captioner.server")

MAX_HEAD_BYTES = 16_384  # request line and headers
WRITE_TIMEOUT_S = 30.0  # an answer not taken by the client within this after it was sent: the connection is aborted
LINGER_S = 2.0  # after an answer that came before the whole body: read and drop the rest this long, so that the
# client reads the answer rather than a connection reset (closing a socket with unread data resets it)


@dataclass(frozen=True)
class Answer:
    """An HTTP response: a body, or a stream of chunks (server-sent events) sent as they come."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    chunks: AsyncIterator[bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Head:
    """What an exchange knows before the body: the method and the parsed request."""

    method: str
    request: Request
    content_length: int | None  # None: chunked


Check = Callable[[Head], Answer | None]  # an answer ends the exchange before the body is read
Respond = Callable[[Head, bytes], Awaitable[Answer]]
Refuse = Callable[[int, str, str], Answer]  # status, code, message -> the API's error answer


class Exchange(asyncio.Protocol):
    """One request, one answer, then the connection closes (Connection: close)."""

    def __init__(self, check: Check, respond: Respond, refuse: Refuse, max_body: int, head_timeout_s: float,
                 timeout_s: float, on_done: Callable[[Exchange], None]) -> None:
        """head_timeout_s: for the request's head (as for an upgrade request); timeout_s: for the whole request."""
        self._check = check
        self._respond = respond
        self._refuse = refuse
        self._max_body = max_body
        self._head_timeout_s = head_timeout_s
        self._timeout_s = timeout_s
        self._on_done = on_done
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.head: Head | None = None  # once its head is in
        self._body = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._answered = False
        self._complete = False  # the whole request has been read
        self.finished = asyncio.Event()

    # -- asyncio's protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._started = asyncio.get_running_loop().time()
        self._timer = asyncio.get_running_loop().call_later(self._head_timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # an early answer's lingering: dropped
        self._h11.receive_data(data)
        self._read()

    def eof_received(self) -> bool:
        """A client that half-closes after its request still gets the answer (we close once it is sent)."""
        if not self._answered:
            self._h11.receive_data(b"")
            self._read()
        return self._answered

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()  # nobody to answer: the job stops
        if not self.finished.is_set():
            self.finished.set()
            self._on_done(self)

    # -- reading ----------------------------------------------------------------------------------

    def _read(self) -> None:
        while not self._answered:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint if 400 <= e.error_status_hint < 500 else 400
                self._send(self._refuse(status, "invalid_request", f"malformed HTTP request: {e}"))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body:
                    self._too_big()
            elif isinstance(event, h11.EndOfMessage):
                self._on_body()
            elif isinstance(event, h11.ConnectionClosed):
                self.abort()
                return

    def _on_head(self, event: h11.Request) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        try:
            request = Request.parse(event.target.decode("ascii", "replace"), headers)
        except Exception as e:  # BadRequest: too many query fields
            self._send(self._refuse(400, "invalid_request", str(e)))
            return
        length = request.headers.get("content-length")
        self.head = Head(event.method.decode("ascii", "replace").upper(), request,
                          int(length) if length is not None and length.isdigit() else None)
        if self.head.content_length is not None and self.head.content_length > self._max_body:
            self._too_big()
            return
        if self._timer is not None:  # the head is in: the rest of the request has until timeout_s
            self._timer.cancel()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, self._started + self._timeout_s - loop.time()), self._timed_out)
        answer = self._check(self.head)
        if answer is not None:
            self._send(answer)
        elif self._h11.client_is_waiting_for_100_continue:
            self._write(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))

    def _too_big(self) -> None:
        self._send(self._refuse(413, "request_too_large",
                                f"the request body is over the limit of {self._max_body} bytes"))

    def _on_body(self) -> None:
        assert self.head is not None
        if self._timer is not None:
            self._timer.cancel()
        self._answered = self._complete = True
        self._task = asyncio.get_running_loop().create_task(self._answer(self.head, bytes(self._body)))
        self._body = bytearray()

    def _timed_out(self) -> None:
        if not self._answered:
            limit = self._timeout_s if self.head is not None else self._head_timeout_s
            self._send(self._refuse(408, "request_timeout", f"the request did not arrive within {limit:g} s"))

    # -- answering --------------------------------------------------------------------------------

    async def _answer(self, head: Head, body: bytes) -> None:
        try:
            answer = await self._respond(head, body)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours, whatever the request
            log.exception("request failed", extra={"path": head.request.path})
            answer = self._refuse(500, "internal", "internal error: see the server log")
        await self._send_answer(answer)

    def _send(self, answer: Answer) -> None:
        """Answer at once (a refusal before or while the body comes) and close."""
        self._answered = True
        self._task = asyncio.get_running_loop().create_task(self._send_answer(answer))

    async def _send_answer(self, answer: Answer) -> None:
        head_sent = False
        try:
            headers = [("Content-Type", answer.content_type), ("Connection", "close"), *answer.headers]
            if answer.chunks is None:
                headers.append(("Content-Length", str(len(answer.body))))
            self._write(self._h11.send(h11.Response(status_code=answer.status, headers=headers)))
            head_sent = True
            if answer.chunks is None:
                if answer.body and self.head is not None and self.head.method != "HEAD":  # HEAD: the head only
                    self._write(self._h11.send(h11.Data(data=answer.body)))
            else:
                async for chunk in answer.chunks:
                    self._write(self._h11.send(h11.Data(data=chunk)))
            self._write(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 answers no request it could not parse: say it in plain HTTP/1.1
            if not head_sent:
                self._write(_plain_response(answer))
        except Exception:  # a bug of ours while a stream of chunks was going out: the status is sent, so just close
            log.exception("answer failed", extra={"path": self.head.request.path if self.head else None})
        finally:
            self._close()

    def _close(self) -> None:
        if self._transport is None:
            return
        asyncio.get_running_loop().call_later(WRITE_TIMEOUT_S, self._transport.abort)  # a client that never reads
        if self._complete:
            self._transport.close()
        else:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._transport.close)

    def _write(self, data: bytes | None) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _plain_response(answer: Answer) -> bytes:
    head = f"HTTP/1.1 {answer.status} -\r\nContent-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}" \
           "\r\nConnection: close\r\n\r\n"
    return head.encode("latin-1") + answer.body
