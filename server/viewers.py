"""The audience's side of the caption feeds (feeds.py), under /v1/captions/{topic}:

- `GET /v1/captions/{topic}`: the feed as server-sent events, or as WebSocket messages on an upgrade;
  `?after=ID` or `Last-Event-ID` resumes after a final;
- `GET .../subtitles.m3u8` and `.../subtitles/{n}.vtt`: live HLS WebVTT subtitles (subtitles.py);
- `GET .../transcript.txt|srt|vtt`: the finals kept so far;
- `GET .../secret?expires_in_seconds=N[&scope=prefix]`: a read-only secret for this topic (or every topic
  under this prefix), minted with a long-lived token, for a link handed to an audience.

Every one takes a token that may read the topic (auth.TokenTable.reader: `?token=` or `Authorization:
Bearer`), none of them can send audio, and their answers may be read by a page of any origin: a viewer's
rights come from its token only, never from a cookie. A server-sent event viewer's socket is taken from
websockets once its request is in (app.Socket.take_over), as that answer never ends.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Protocol as Interface
from urllib.parse import quote, unquote

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from captioner.server.errors import BadRequest, Forbidden, Overloaded, ProtocolError, Unauthorized

from .auth import READ_PREFIX, SECRET_PREFIX, TokenTable, topic_name
from .feeds import Feeds, Item, live_subtitles
from .protocols.base import GOING_AWAY, POLICY, TRY_AGAIN_LATER, authorization_key, close_code, http_status
from .protocols.parse import Request, parse_number
from .settings import Settings
from .transcripts import cues_of, cues_to_srt, cues_to_text, cues_to_vtt
from .web import response

__all__ = ["FEEDS", "Viewers", "SseViewer", "WsViewer"]

log = logging.getLogger("captioner.server")

FEEDS = "/v1/captions/"
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\n\r\nretry: 1000\n\n")
CORS = (("Access-Control-Allow-Origin", "*"),)
TRANSCRIPTS = {"transcript.txt": "text/plain; charset=utf-8", "transcript.srt": "application/x-subrip",
               "transcript.vtt": "text/vtt; charset=utf-8"}
SEGMENT = re.compile(r"subtitles/([0-9]{1,12})\.vtt")
DEFAULT_SECRET_TTL_S = 3600
RETRY_AFTER_S = 5


class SseViewer(asyncio.Protocol):
    """A viewer reading server-sent events: the answer's head, then every message as an event, until it goes."""

    def __init__(self, feeds: Feeds, topic: str, after: str | None) -> None:
        self.feeds = feeds
        self.topic = topic
        self.after = after
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(SSE_HEAD)  # type: ignore[union-attr]
        try:
            self.feeds.join(self.topic, self, self.after)
        except Overloaded:  # full since its request was checked: the stream ends at once, EventSource retries
            self.transport.close()  # type: ignore[union-attr]
        except Exception:  # a bug of ours: its head is sent, so the feed is cut
            log.exception("feed failed", extra={"topic": self.topic})
            self.transport.abort()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        """A viewer sends nothing after its request: whatever comes is dropped."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.feeds.leave(self.topic, self)

    def send(self, item: Item) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(item.sse)

    @property
    def unsent_bytes(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def keep_alive(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b": keep-alive\n\n")


class WsViewer:
    """A viewer on a WebSocket: every message as a text message; it may send nothing (1008 read_only)."""

    def __init__(self, websocket: ServerConnection) -> None:
        self.websocket = websocket
        self._closing: asyncio.Task[None] | None = None  # held: the loop keeps only weak references to tasks

    def send(self, item: Item) -> None:
        broadcast([self.websocket], item.text)  # written now, in order, without waiting on the socket

    @property
    def unsent_bytes(self) -> int:
        return self.websocket.transport.get_write_buffer_size()

    def drop(self) -> None:
        """Closed behind what it has not read; websockets aborts it if it does not answer within its close timeout."""
        self._closing = asyncio.get_running_loop().create_task(self.websocket.close(TRY_AGAIN_LATER, "slow_reader"))

    def close(self) -> None:
        self._closing = asyncio.get_running_loop().create_task(self.websocket.close(GOING_AWAY, "server shutting down"))

    def keep_alive(self) -> None:
        """websockets' pings keep it alive."""

    async def serve(self, feeds: Feeds, topic: str, after: str | None) -> None:
        try:
            feeds.join(topic, self, after)
        except Overloaded as e:  # full since its request was checked
            await self.websocket.close(close_code(e), e.code or "")
            return
        try:
            async for _ in self.websocket:
                error = {"type": "error", "code": "read_only", "message": "a viewer sends nothing"}
                broadcast([self.websocket], json.dumps(error))
                await self.websocket.close(POLICY, "read_only")
        except ConnectionClosed:
            pass
        finally:
            feeds.leave(topic, self)


class Socket(Interface):
    """What a viewer's request comes on (app.Socket)."""

    watching: tuple[str, str | None] | None  # a WebSocket viewer's topic and resume point, once admitted

    def take_over(self, protocol: asyncio.Protocol) -> Awaitable[Response]: ...


class Viewers:
    """The /v1/captions/ endpoints; `answer` decides on a request (before any upgrade)."""

    def __init__(self, settings: Settings, tokens: TokenTable, feeds: Feeds,
                 serving: Callable[[], str | None]) -> None:
        """serving: None while the server takes work, else why not (starting, draining)."""
        self.settings = settings
        self.tokens = tokens
        self.feeds = feeds
        self.serving = serving

    def answer(self, request: Request, upgrade: bool, socket: Socket) -> Response | Awaitable[Response] | None:
        """The answer to a request under /v1/captions/: a response, what the socket awaits once taken over for
        server-sent events, or None for an upgrade that may go ahead (socket.watching says what to serve)."""
        try:
            topic, rest = _route(request.path)
            grant = self.tokens.reader(authorization_key(request.headers) or request.query.get("token"))
            if not grant.can_read(topic):
                raise Forbidden(f"this token may not read {topic!r}", "forbidden_topic")
            if rest == "secret":
                return self._secret(request, topic)
            if rest == "":
                if self.serving() == "draining":
                    raise Overloaded("the server is shutting down", "draining", RETRY_AFTER_S)
                self.feeds.admits(topic)
                if upgrade:
                    socket.watching = topic, _after(request)
                    return None
                return socket.take_over(SseViewer(self.feeds, topic, _after(request)))
            if upgrade:
                raise BadRequest(f"{request.path[:200]} takes no WebSocket", "bad_request")
            return self._document(request, topic, rest)
        except ProtocolError as e:
            return _error(e)

    def _document(self, request: Request, topic: str, rest: str) -> Response:
        feed = self.feeds.feeds.get(topic)
        if rest in TRANSCRIPTS:
            cues = cues_of(feed.transcript()) if feed is not None else []
            kind = rest.rsplit(".", 1)[1]
            text = {"txt": cues_to_text, "srt": cues_to_srt, "vtt": cues_to_vtt}[kind](cues)
            return response(http.HTTPStatus.OK, text.encode(), TRANSCRIPTS[rest], CORS)
        subtitles = feed.subtitles if feed is not None else None
        now = time.time() - (feed.epoch or 0.0) if feed is not None else 0.0
        token = request.query.get("token")
        if rest == "subtitles.m3u8":
            if subtitles is None:  # nothing heard yet: a playlist without segments
                subtitles, now = live_subtitles(self.settings, time.time()), 0.0
            text = subtitles.playlist(now, f"?token={quote(token)}" if token else "")
            return response(http.HTTPStatus.OK, text.encode(), "application/vnd.apple.mpegurl", CORS)
        number = SEGMENT.fullmatch(rest)
        segment = subtitles.segment(int(number.group(1)), now) if subtitles is not None and number else None
        if segment is None:
            return _error(ProtocolError(f"no such document (yet): {rest[:100]!r}", "not_found"),
                          http.HTTPStatus.NOT_FOUND)
        return response(http.HTTPStatus.OK, segment.encode(), "text/vtt; charset=utf-8", CORS)

    def _secret(self, request: Request, topic: str) -> Response:
        """A read-only secret for this topic (scope=topic) or every topic under it (scope=prefix)."""
        presented = authorization_key(request.headers) or request.query.get("token") or ""
        if presented.startswith((SECRET_PREFIX, READ_PREFIX)) and not self.tokens.open:
            raise Unauthorized("a short-lived secret cannot mint another; use a token", "unauthorized")
        scope = request.query.get("scope", "topic")
        if scope not in ("topic", "prefix"):
            raise BadRequest("scope is topic or prefix", "bad_parameter")
        ttl = parse_number(request.query.get("expires_in_seconds", str(DEFAULT_SECRET_TTL_S)), "expires_in_seconds",
                           10, self.settings.max_secret_ttl_s, "bad_parameter")
        secret, expires = self.tokens.mint_reader(self.tokens.reader(presented or None), topic, scope == "topic",
                                                  int(ttl))
        body = {"token": secret, "expires_at": expires, "topic": topic, "scope": scope,
                "watch": f"/watch/{quote(topic)}?token={secret}", "feed": f"{FEEDS}{quote(topic)}?token={secret}",
                "subtitles": f"{FEEDS}{quote(topic)}/subtitles.m3u8?token={secret}"}
        return response(http.HTTPStatus.OK, json.dumps(body).encode(), "application/json", CORS)


def _route(path: str) -> tuple[str, str]:
    """The topic of a path under /v1/captions/ and what of it is asked for ("" for the feed itself)."""
    raw, _, rest = path.removeprefix(FEEDS).partition("/")
    topic = topic_name(unquote(raw))
    if not topic:
        raise BadRequest("the path names no topic: /v1/captions/{topic}", "bad_request")
    return topic, rest.rstrip("/")


def _after(request: Request) -> str | None:
    return request.query.get("after") or request.headers.get("last-event-id") or None


def _error(error: ProtocolError, status: int | None = None) -> Response:
    retry = getattr(error, "retry_after_s", None)
    headers = CORS + ((("Retry-After", str(retry)),) if retry else ())
    body = json.dumps({"type": "error", "code": error.code, "message": str(error)}).encode() + b"\n"
    return response(status or http_status(error), body, "application/json", headers)
