"""YouTube Live caption ingestion: each configured topic's finals posted to its stream's caption ingestion URL.

The format (support.google.com/youtube/answer/6077032, "Closed Captions over HTTP for YouTube Live Streams"):
an HTTP POST to the ingestion URL with `seq=N` added to its query, Content-Type text/plain, and a UTF-8
body of captions, each a line `YYYY-MM-DDTHH:MM:SS.mmm` (UTC; an optional region/cue part is left out)
and then its text, each line ending in a newline. `seq` rises by one with each post of new captions and
stays the same for a retry, so a retried post cannot be shown twice; here it starts at 1 with each sink.
Any 2xx answers a post (its body, the server's time, is not used).

Posts go out one at a time, in order; finals queued meanwhile go together into the next post (up to
MAX_POST_BYTES). A failed post (connection error, timeout, non-2xx, a redirect: the operator configured
the address, so none is followed) is retried with the same seq and body after an exponential back-off.
Finals leave only once posted, or when the bounded queue overflows (the oldest, counted and logged).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from datetime import datetime, timezone
from urllib.parse import urlsplit

from .metrics import Metrics
from .settings import Settings

__all__ = ["YouTubeSink", "YouTubeSinks"]

log = logging.getLogger("captioner.youtube")

FIRST_SEQ = 1
MAX_POST_BYTES = 8192  # several seconds of captions; one longer final still goes, alone
# Timeouts and back-off
TIMEOUT_POST_S = 10.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


def caption_lines(start: float, text: str) -> bytes:
    """One caption as YouTube reads it: `start` (Unix seconds) as a UTC timestamp in ms, then the text."""
    seconds, ms = divmod(round(start * 1000), 1000)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms:03d}\n{text}\n".encode()


class YouTubeSink:
    """One topic's YouTube Live caption ingestion: its finals posted in order, once each, with a rising seq."""

    def __init__(self, topic: str, url: str, metrics: Metrics, max_queue: int, *,
                 timeout_post_s: float = TIMEOUT_POST_S, backoff_s: float = BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S, ssl_context: ssl.SSLContext | None = None) -> None:
        """Raises ValueError for a URL that is not http(s)://host... or a max_queue below 1."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not url.isprintable() or " " in url \
                or not url.isascii() or max_queue < 1:
            raise ValueError(f"YouTube sink {topic!r}: an http(s)://host URL (ASCII, no spaces) and max_queue >= 1 "
                             "are required")
        self.topic, self.host, self.metrics, self.max_queue = topic, parts.hostname, metrics, max_queue
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._authority = parts.netloc.rpartition("@")[2]
        self._target = (parts.path or "/") + "?" + (parts.query + "&" if parts.query else "")
        self.timeout_post_s, self.backoff_s, self.max_backoff_s = timeout_post_s, backoff_s, max_backoff_s
        self.seq = FIRST_SEQ  # of the next post of new captions
        self._queue: deque[bytes] = deque()
        self._batch: list[bytes] = []  # the post in flight (retried as it is)
        self._overflowing = False
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def caption(self, start: float, text: str) -> None:
        """One final: start is the Unix time its speech began. Non-blocking; never raises."""
        text = " ".join(str(text).split())  # one line: YouTube would read a second line as more text
        if not text:
            return
        try:
            lines = caption_lines(float(start), text)
        except (ValueError, OverflowError, OSError, TypeError):
            log.warning("YouTube: a final with an invalid start time was skipped", extra={"topic": self.topic})
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.metrics.youtube_dropped.labels(self.topic).inc()
            if not self._overflowing:
                self._overflowing = True
                log.warning("YouTube queue full: dropping the oldest finals", extra={"topic": self.topic})
        self._queue.append(lines)
        self._pending()
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        """Starts posting, on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("YouTube captions start", extra={"topic": self.topic, "host": self.host})  # the URL is a secret

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Give the queue up to timeout_s to drain, then stop (what is left is dropped)."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("YouTube: finals left unposted", extra={"topic": self.topic, "n_finals": self._pending()})
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def _pending(self) -> int:
        n_pending = len(self._queue) + len(self._batch)
        self.metrics.youtube_pending.labels(self.topic).set(n_pending)
        return n_pending

    def _take_batch(self) -> list[bytes]:
        batch = [self._queue.popleft()]
        size = len(batch[0])
        while self._queue and size + len(self._queue[0]) <= MAX_POST_BYTES:
            size += len(self._queue[0])
            batch.append(self._queue.popleft())
        return batch

    async def _run(self) -> None:
        while True:
            if not (self._batch or self._queue):
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._batch = self._batch or self._take_batch()  # one a stop() cut short goes first, unchanged
            await self._post_until_accepted(b"".join(self._batch))
            self._batch = []
            self._pending()

    async def _post_until_accepted(self, body: bytes) -> None:
        backoff, failures = self.backoff_s, 0
        while True:
            try:
                async with asyncio.timeout(self.timeout_post_s):
                    status = await self._post(body)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except (OSError, TimeoutError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
            if error is None:
                break
            self.metrics.youtube_posts.labels(self.topic, "failed").inc()
            if failures == 0:
                log.warning("YouTube post failed; retrying", extra={"topic": self.topic, "host": self.host,
                                                                    "seq": self.seq, "error": error})
            failures += 1
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)
        self.metrics.youtube_posts.labels(self.topic, "ok").inc()
        if failures:
            log.info("YouTube posts resumed", extra={"topic": self.topic, "seq": self.seq, "n_failed": failures})
        self.seq += 1
        self._overflowing = False

    async def _post(self, body: bytes) -> int:
        """One POST of body with the current seq; its response's status code. Raises OSError, ValueError."""
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
        try:
            writer.write(f"POST {self._target}seq={self.seq} HTTP/1.1\r\nHost: {self._authority}\r\n"
                         f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode("ascii") + body)
            await writer.drain()
            version, _, rest = (await reader.readline()).decode("latin-1").partition(" ")
            if not version.startswith("HTTP/1."):
                raise ConnectionError("no HTTP response")
            return int(rest[:3])
        finally:
            writer.close()


class YouTubeSinks:
    """All configured sinks, by topic; a topic without one is not posted anywhere."""

    def __init__(self, sinks: dict[str, YouTubeSink]) -> None:
        self.sinks = sinks

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> YouTubeSinks:
        """One sink per `topic=URL` of settings.youtube_captions (which has each topic once: Settings checks)."""
        pairs = (pair.partition("=") for pair in settings.youtube_captions)
        return cls({topic: YouTubeSink(topic, url, metrics, settings.youtube_queue) for topic, _, url in pairs})

    def caption(self, topic: str, start: float, text: str) -> None:
        """One final of topic; a no-op for a topic without a configured URL."""
        sink = self.sinks.get(topic)
        if sink is not None:
            sink.caption(start, text)

    def start(self) -> None:
        for sink in self.sinks.values():
            sink.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Drain every sink at once, each for up to timeout_s, then stop them."""
        await asyncio.gather(*(sink.stop(timeout_s) for sink in self.sinks.values()))
