"""The YouTube Live caption sink against a real receiver on a loopback port that reads each post as YouTube
documents it (support.google.com/youtube/answer/6077032): `seq` rising by one per new post, text/plain, and a
body of `YYYY-MM-DDTHH:MM:SS.mmm` lines each followed by its caption's text line."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import subprocess
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import h11
import pytest

from captioner.server.metrics import Metrics
from captioner.server.settings import Settings
from captioner.server.youtube import MAX_POST_BYTES, YouTubeSink, YouTubeSinks

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}")
FAST = {"backoff_s": 0.02, "max_backoff_s": 0.1}  # back-off of the tests that are not about its timing
CID = "abc-123"


class Receiver:
    """A caption ingestion endpoint on 127.0.0.1 that checks every post strictly and records each seq's captions
    once, as YouTube would (a retry of an accepted seq is answered and ignored)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl = ssl_context
        self.mode = "ok"  # ok | error (HTTP 500) | drop (close, no answer) | lost (record, then drop) | redirect
        self.fail_next = 0  # answer this many more posts with HTTP 500
        self.redirect_to = ""
        self.port = 0
        self.bodies: dict[int, bytes] = {}  # accepted posts by seq
        self.captions: list[tuple[str, str]] = []  # (timestamp, text) in the order accepted
        self.errors: list[str] = []  # posts that broke the format
        self.n_requests = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}/closedcaption?cid={CID}"

    async def start(self) -> None:
        """Listens (again, on the same port after refuse())."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stops listening: connections are refused until start()."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.refuse()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request, body = await read_request(conn, reader)
        except (h11.RemoteProtocolError, ConnectionError) as e:
            self.errors.append(f"not an HTTP request: {e}")
            writer.close()
            return
        self.n_requests += 1
        if self.mode == "lost":
            self.accept(request, body)
        if self.mode in ("drop", "lost"):
            writer.close()
            return
        if self.mode == "redirect":
            status, headers = 302, [("Location", self.redirect_to)]
        elif self.mode == "error" or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            status, headers = 500, []
        else:
            status, headers = self.accept(request, body), []
        answer = b"2023-11-14T22:13:20.000\n" if status == 200 else b""  # YouTube answers with its time
        headers += [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) + conn.send(h11.Data(data=answer))
                     + conn.send(h11.EndOfMessage()))
        await writer.drain()
        writer.close()

    def accept(self, request: h11.Request, body: bytes) -> int:
        """Checks one post as YouTube documents it; records it if its seq is the next one. Its status code."""
        parts = urlsplit(request.target.decode())
        query = parse_qs(parts.query)
        seq = query.get("seq", [""])
        content_type = dict(request.headers).get(b"content-type")
        text = body.decode("utf-8", errors="replace")
        lines = text[:-1].split("\n")
        problem = ("not a POST" if request.method != b"POST" else
                   "wrong path or cid" if parts.path != "/closedcaption" or query.get("cid") != [CID] else
                   "seq missing or not one number" if len(seq) != 1 or not seq[0].isdigit() else
                   f"Content-Type {content_type!r}" if content_type != b"text/plain" else
                   "body not UTF-8 ending in a newline" if "\ufffd" in text or not text.endswith("\n") else
                   "not timestamp and text line pairs" if len(lines) % 2 or not all(
                       STAMP.fullmatch(stamp) and caption.strip() for stamp, caption in zip(lines[::2], lines[1::2]))
                   else None)
        if problem is None and int(seq[0]) in self.bodies:
            problem = None if self.bodies[int(seq[0])] == body else "a retry of a seq changed its body"
        elif problem is None and int(seq[0]) != len(self.bodies) + 1:
            problem = f"seq {seq[0]} after {len(self.bodies)}"
        elif problem is None:
            self.bodies[int(seq[0])] = body
            self.captions += list(zip(lines[::2], lines[1::2]))
        if problem is not None:
            self.errors.append(problem)
        return 400 if problem else 200


async def read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bytes]:
    request, body = None, b""
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


def run(coroutine):
    return asyncio.run(coroutine)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def stamp(start: float) -> str:
    """A UTC timestamp as YouTube reads it, made without the sink's code."""
    return datetime.fromtimestamp(start, timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds")


def expected(n: int, first: int = 0) -> list[tuple[str, str]]:
    return [(stamp(T0 + i * 0.5), f"caption {i}") for i in range(first, n)]


def test_captions_arrive_once_in_order():
    """Every final arrives once, in order, each post with the next seq from 1."""
    async def main():
        async with Receiver() as receiver:
            sink = YouTubeSink("talk", receiver.url, Metrics(), 100)
            sink.start()
            for i in range(30):
                sink.caption(T0 + i * 0.5, f"caption {i}")
                if i % 3 == 0:
                    await asyncio.sleep(0.01)
            await sink.stop()
            return receiver, sink

    receiver, sink = run(main())
    assert receiver.errors == []
    assert receiver.captions == expected(30)
    assert sorted(receiver.bodies) == list(range(1, sink.seq))
    assert len(receiver.bodies) > 1


def test_caption_format():
    """A timestamp is the speech's UTC start in milliseconds; a caption is one line; empty ones are skipped."""
    async def main():
        async with Receiver() as receiver:
            sink = YouTubeSink("talk", receiver.url, Metrics(), 100)
            sink.start()
            sink.caption(T0 + 0.1234, "first\nline  two\r\n")
            sink.caption(T0 + 59.9996, "  \n ")
            sink.caption(T0 + 59.9996, "héllo wörld")
            await sink.stop()
            return receiver

    receiver = run(main())
    assert receiver.errors == []
    assert receiver.captions == [("2023-11-14T22:13:20.123", "first line two"),
                                 ("2023-11-14T22:14:20.000", "héllo wörld")]


def test_queued_finals_are_batched_with_a_cap():
    """Finals queued while a post is out go together into later posts, none over MAX_POST_BYTES."""
    async def main():
        async with Receiver() as receiver:
            sink = YouTubeSink("talk", receiver.url, Metrics(), 1000)
            for i in range(400):
                sink.caption(T0 + i * 0.5, f"caption {i}")
            sink.start()
            await sink.stop()
            return receiver

    receiver = run(main())
    assert receiver.errors == []
    assert receiver.captions == expected(400)
    assert 1 < len(receiver.bodies) < 20
    assert max(len(body) for body in receiver.bodies.values()) <= MAX_POST_BYTES


@pytest.mark.parametrize("mode", ["error", "refuse", "drop", "lost"],
                         ids=["http-500", "refused", "closed-unanswered", "answer-lost"])
def test_failed_posts_are_retried_with_the_same_seq(mode):
    """While posts fail, finals wait; each post is retried with its seq and body, so all arrive once, in order."""
    async def main():
        async with Receiver() as receiver:
            metrics = Metrics()
            sink = YouTubeSink("talk", receiver.url, metrics, 100, **FAST)
            sink.start()
            sink.caption(T0, "caption 0")
            await sink.stop()
            if mode == "refuse":
                await receiver.refuse()
            else:
                receiver.mode = mode
            sink.start()
            for i in range(1, 6):
                sink.caption(T0 + i * 0.5, f"caption {i}")
                await asyncio.sleep(0.1)
            if mode == "refuse":
                await receiver.start()
            receiver.mode = "ok"
            await sink.stop()
            return receiver, metrics

    receiver, metrics = run(main())
    assert receiver.errors == []
    assert receiver.captions == expected(6)
    assert value(metrics, "captioner_youtube_posts_total", topic="talk", outcome="failed") >= 2


@pytest.mark.slow
def test_ten_second_outage():
    """Through a 10 s outage (HTTP 500, refused, closed unanswered, answers lost) every final arrives once, in order."""
    async def main():
        async with Receiver() as receiver:
            metrics = Metrics()
            sink = YouTubeSink("talk", receiver.url, metrics, 1000, backoff_s=0.25, max_backoff_s=2.0)
            sink.start()
            n = 0
            for phase, n_captions in [("ok", 4), ("error", 10), ("refuse", 10), ("drop", 10), ("lost", 10), ("ok", 4)]:
                if phase == "refuse":
                    await receiver.refuse()
                elif receiver.mode == "refuse":
                    await receiver.start()
                receiver.mode = phase
                for _ in range(n_captions):
                    sink.caption(T0 + n * 0.5, f"caption {n}")
                    n += 1
                    await asyncio.sleep(0.25)  # 2.5 s a failing phase: four make a 10 s outage
            await sink.stop(timeout_s=10)
            return receiver, n, metrics

    receiver, n, metrics = run(main())
    assert receiver.errors == []
    assert receiver.captions == expected(n)
    assert value(metrics, "captioner_youtube_posts_total", topic="talk", outcome="failed") >= 8


def test_overflow_drops_the_oldest(caplog):
    """A full queue drops its oldest finals, counts them and warns once; the rest still arrive in order."""
    async def main():
        async with Receiver() as receiver:
            metrics = Metrics()
            sink = YouTubeSink("talk", receiver.url, metrics, 3)
            with caplog.at_level(logging.WARNING, logger="captioner.youtube"):
                for i in range(5):
                    sink.caption(T0 + i * 0.5, f"caption {i}")
            pending = value(metrics, "captioner_youtube_pending", topic="talk")
            sink.start()
            await sink.stop()
            return receiver, metrics, pending

    receiver, metrics, pending = run(main())
    assert receiver.captions == expected(5, first=2)
    assert value(metrics, "captioner_youtube_dropped_total", topic="talk") == 2
    assert pending == 3
    assert [r.message for r in caplog.records] == ["YouTube queue full: dropping the oldest finals"]


def test_sinks_post_only_configured_topics():
    """A topic without a configured URL is posted nowhere: a client cannot make the server post anywhere."""
    async def main():
        async with Receiver() as receiver:
            metrics = Metrics()
            sinks = YouTubeSinks.from_settings(Settings(youtube_captions=(f"talk={receiver.url}",)), metrics)
            sinks.start()
            sinks.caption("other", T0, "not this")
            sinks.caption(receiver.url, T0, "nor this")
            sinks.caption("talk", T0, "caption 0")
            await sinks.stop()
            return receiver, sinks, metrics

    receiver, sinks, metrics = run(main())
    assert list(sinks.sinks) == ["talk"]
    assert receiver.captions == expected(1)
    assert b"other" not in metrics.exposition()


def test_topic_given_twice_is_refused():
    """Two URLs for one topic are a configuration error, refused when the settings are built."""
    with pytest.raises(ValueError, match="more than once"):
        YouTubeSinks.from_settings(Settings(youtube_captions=("a=http://x/1", "a=http://x/2")), Metrics())


def test_redirect_is_not_followed():
    """A redirect counts as a failed post and is retried at the configured address, never followed."""
    async def main():
        async with Receiver() as receiver, Receiver() as elsewhere:
            receiver.mode, receiver.redirect_to = "redirect", elsewhere.url
            sink = YouTubeSink("talk", receiver.url, Metrics(), 100, **FAST)
            sink.start()
            sink.caption(T0, "caption 0")
            await asyncio.sleep(0.3)
            receiver.mode = "ok"
            await sink.stop()
            return receiver, elsewhere

    receiver, elsewhere = run(main())
    assert receiver.n_requests > 2
    assert receiver.captions == expected(1)
    assert elsewhere.n_requests == 0


def test_metrics():
    """Posts are counted by outcome, and the pending gauge returns to 0 once all are posted."""
    async def main():
        async with Receiver() as receiver:
            receiver.fail_next = 3
            metrics = Metrics()
            sink = YouTubeSink("talk", receiver.url, metrics, 100, **FAST)
            sink.start()
            for i in range(4):
                sink.caption(T0 + i * 0.5, f"caption {i}")
            await sink.stop()
            return receiver, metrics

    receiver, metrics = run(main())
    assert receiver.captions == expected(4)
    assert value(metrics, "captioner_youtube_posts_total", topic="talk", outcome="ok") == len(receiver.bodies)
    assert value(metrics, "captioner_youtube_posts_total", topic="talk", outcome="failed") == 3
    assert value(metrics, "captioner_youtube_pending", topic="talk") == 0


def test_https(tmp_path):
    """An https ingestion URL is posted to over TLS, verifying the server's certificate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def main():
        async with Receiver(server_tls) as receiver:
            sink = YouTubeSink("talk", receiver.url, Metrics(), 100,
                               ssl_context=ssl.create_default_context(cafile=str(cert)))
            sink.start()
            sink.caption(T0, "caption 0")
            await sink.stop()
            return receiver

    receiver = run(main())
    assert receiver.url.startswith("https://")
    assert receiver.captions == expected(1)


@pytest.mark.parametrize("url", ["ftp://host/cc", "http:///cc", "upload.youtube.com/closedcaption",
                                 "http://host/cc?cid=a b", "http://host/cc?cid=\u00e9"],
                         ids=["ftp", "no-host", "no-scheme", "space", "not-ascii"])
def test_invalid_url_is_refused(url):
    """A sink's URL must be http(s)://host..., in ASCII without spaces (it goes into the request line as it is)."""
    with pytest.raises(ValueError, match="http"):
        YouTubeSink("talk", url, Metrics(), 10)
