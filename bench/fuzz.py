"""Live fuzzing of a real server: random and malformed clients on every endpoint beside real-time references.

    python bench/fuzz.py [--duration 300] [--fuzzers 4] [--references 2] [--seed 1] [--out bench/results/fuzz]

Not run in CI. It starts `captioner serve` on a free loopback port (its log captured), then:

1. idle: scrapes the server's resident memory;
2. baseline: `--references` real-time streams of real speech (a `captioner soak`) for `--duration`
   seconds, without the fuzzer;
3. fuzzed: the same streams again, while `--fuzzers` tasks open one random or malformed client
   after another:
   - on /v1/stream, / (Vosk), /v1/listen (Deepgram), /v1/realtime (OpenAI) and /v3/ws (AssemblyAI):
     garbage bytes, broken and hostile handshakes, slow handshakes, bad parameters and tokens, random
     text and binary messages, absurd numbers, deep JSON, huge frames, flush storms, clients that
     never read, vanish mid-stream or half-close;
   - on the HTTP API (OpenAI's audio transcriptions, the minting of secrets): broken heads, lying
     lengths, malformed multipart bodies, random files and fields;
   - on the caption feeds (/v1/captions/{topic}) and the viewer page (/watch/{topic}): requests with
     odd and percent-encoded topics (empty, `..`, `%2F`, `+`, `#`, NUL, 10 KB, not UTF-8), for every
     document (the feed, subtitles.m3u8, subtitles/{n}.vtt with absurd n, transcript.txt|srt|vtt|xyz,
     secret with bad expires_in_seconds and scope), with wrong, forged, expired, garbage and huge
     tokens and ek_/vk_ secrets, garbage after= and Last-Event-ID (the feed's own key with a number
     of 5000 digits or of non-ASCII digits among them), methods other than GET, WebSocket upgrades of
     documents; server-sent event viewers that read, never read (the server must drop them past
     max_viewer_unsent_bytes), vanish mid-feed or send garbage after their request; WebSocket viewers
     that send text or binary (they must get a read_only error and close 1008), never read, vanish,
     or come back with their last final's id or a random after=.
   The references publish to one topic (?topic=), which most fuzz viewers watch; one well-behaved
   viewer reads it through the phase, coming back with Last-Event-ID whenever it is cut, and must get
   every final the references got. The server runs with a viewer token (--viewer-tokens-file: the
   feeds want a token, the streams stay open) and a low --max-viewer-unsent-bytes, so that a viewer
   is dropped as soon as the kernel holds no more of its feed (on loopback Linux takes about 3 MB per
   connection first, more than a short run's feed: its viewers that never read are mostly still served);
4. 10 s idle, then the server's memory again.

It reports every fuzz outcome by kind (HTTP status and code, close code and reason; the caption feeds'
in a table of their own), the outcomes that are the server's fault (close 1011, HTTP 500: the server
answers a bug of its own so, whatever the client sent, and logs its traceback), error-level records
and tracebacks in the server log, the references' WER and final lag with and without the fuzzer, what
the references' viewer got, and the memory at the end against idle (report.json and report.md in
--out). A clean run has no fault of any of the three kinds; it exits with status 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import platform
import random
import re
import socket
import struct
import sys
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import harness
import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from captioner.tools import soak
from captioner.tools.evaluate import read_manifest

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_TIMEOUT_S = 15.0
PATHS = ["/v1/stream", "/", "/v1/listen", "/v1/realtime", "/v3/ws"]
ENDS = {"/v1/stream": '{"type": "end"}', "/": '{"eof" : 1}', "/v1/listen": '{"type": "CloseStream"}',
        "/v1/realtime": '{"type": "input_audio_buffer.commit"}', "/v3/ws": '{"type": "Terminate"}'}
API_PATHS = ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/realtime/client_secrets",
             "/v1/realtime/transcription_sessions", "/v1/models", "/v3/token", "/v1/nope"]
REFERENCE_FIGURES = ("wer", "final_lag_p50", "final_lag_p95", "errors", "behind", "sessions")  # of each soak level
FAULT = re.compile(r"^(close 1011|HTTP 500)\b")  # an outcome that is the server's fault
# Caption feeds
FEEDS = "/v1/captions/"
REFERENCE_TOPIC = "fuzz-reference"  # the references publish to it (?topic=): viewers watch their captions live
VIEWER_TOKEN = "fuzz-viewer"  # reads every topic (the server's --viewer-tokens-file)
ROOM_TOKEN = "fuzz-room"  # reads the topics under room- only
MAX_VIEWER_UNSENT_BYTES = 4096  # the server's limit in this run: a viewer is dropped once the kernel's buffers are full
SMALL_RCVBUF = 4096  # the receive buffer of a viewer that never reads (the server's send queue still takes ~3 MB)
FEED_SCENARIOS = ("feed_", "watch_")  # the scenarios on the caption feeds, by name


# -- the fuzz clients ------------------------------------------------------------------------------


@dataclass
class Clues:
    """What the fuzz viewers learned, shared by every fuzzer: ids of finals seen, read secrets minted."""

    ids: deque[str] = field(default_factory=lambda: deque(maxlen=100))
    secrets: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def learn(self, message: object) -> None:
        if isinstance(message, dict) and message.get("type") == "final" and isinstance(message.get("id"), str):
            self.ids.append(message["id"])


def token_id(token: str) -> str:
    """Which token minted a secret, as the server names it: a prefix of its SHA-256 (server/auth.py)."""
    return hashlib.sha256(b"captioner-token-id:" + token.encode()).hexdigest()[:16]


def read_secret(token: str, expires: int, topic_hex: str, kind: str = "e") -> str:
    """A read secret as `token` would mint it (kind: e for one topic, p for a prefix), whatever its parts."""
    body = f"vk_{expires}_{token_id(token)}_{kind}{topic_hex}"
    return f"{body}_{hmac.new(token.encode(), body.encode(), hashlib.sha256).hexdigest()}"


def stream_secret(token: str, expires: int) -> str:
    """A short-lived secret (ek_) as `token` would mint it."""
    body = f"ek_{expires}_{token_id(token)}"
    return f"{body}_{hmac.new(token.encode(), body.encode(), hashlib.sha256).hexdigest()}"


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """An HTTP response head's status and its fields (lower-case names, last value of each)."""
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), fields


def sse_events(data: bytes) -> tuple[list[tuple[str | None, dict | None]], bytes]:
    """The complete events at the head of a server-sent event stream, each its id and its JSON object (None
    if its data is not one), comments and retry fields skipped; and the incomplete rest."""
    *blocks, rest = data.split(b"\n\n")
    events: list[tuple[str | None, dict | None]] = []
    for block in blocks:
        lines = block.decode("utf-8", "replace").split("\n")
        fields = dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith(":"))
        if "data" in fields:
            try:
                message = json.loads(fields["data"])
            except ValueError:
                message = None
            events.append((fields.get("id"), message if isinstance(message, dict) else None))
    return events, rest


def feed_verdict(messages: list[dict | None]) -> str:
    """How a viewer's messages look: the feed's message first, JSON objects only, finals' ids rising per feed."""
    if not messages:
        return "no message"
    if None in messages:
        return "a message that is not a JSON object"
    first = messages[0] or {}
    if first.get("type") != "feed":
        return f"{str(first.get('type'))[:20]} first, not the feed's"
    last: dict[str, int] = {}
    for message in messages:
        if message and message.get("type") == "final":
            key, _, n = str(message.get("id")).partition("-")
            if not n.isdigit() or int(n) <= last.get(key, 0):
                return "final ids out of order"
            last[key] = int(n)
    return "feed first, in order"


class ReferenceViewer:
    """A well-behaved viewer of the references' topic through the fuzzed phase: it reads every event and,
    when its feed is cut, comes back after its last final's id (Last-Event-ID). It must get every final
    that the references got, each once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.finals: list[str] = []  # the ids of the finals with text since a reference's stream started
        self.connections = 0
        self.gaps = 0
        self.refusals: Counter[int] = Counter()  # answers other than 200, by status
        self._live = False  # a reference's stream started: the finals from here on are the fuzzed phase's
        self._last: str | None = None  # the last final's id

    async def run(self) -> None:
        while True:
            self.connections += 1
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await self._read()
            await asyncio.sleep(0.5)

    async def _read(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            resume = f"Last-Event-ID: {self._last}\r\n" if self._last else ""
            writer.write(f"GET {FEEDS}{REFERENCE_TOPIC}?token={VIEWER_TOKEN} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1:{self.port}\r\n{resume}\r\n".encode())
            status, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
            if status != 200:
                self.refusals[status] += 1
                return
            rest = b""
            while data := await reader.read(65536):
                events, rest = sse_events(rest + data)
                for event_id, message in events:
                    self._take(event_id, message or {})
        finally:
            writer.close()

    def _take(self, event_id: str | None, message: dict) -> None:
        kind = message.get("type")
        if kind == "status" and message.get("state") == "started":
            self._live = True
        elif kind == "gap":
            self.gaps += 1
        elif kind == "final":
            self._last = event_id
            if self._live and message.get("text"):
                self.finals.append(str(event_id))

    def summary(self, expected: int) -> dict[str, object]:
        """expected: the finals with text that the references got."""
        return {"finals": len(set(self.finals)), "expected": expected,
                "repeated": len(self.finals) - len(set(self.finals)), "connections": self.connections,
                "gaps": self.gaps, "refusals": dict(self.refusals)}


class Fuzzer:
    """One random client after another; each outcome is counted by kind."""

    def __init__(self, port: int, rng: random.Random, speech: bytes, clues: Clues) -> None:
        self.port = port
        self.rng = rng
        self.speech = speech  # 16 kHz s16le
        self.clues = clues  # shared with the other fuzzers
        self.outcomes: Counter[str] = Counter()
        self.scenarios: Counter[str] = Counter()
        self.faults: list[str] = []  # outcomes that are the server's fault, each with its request when known
        self.request = ""  # the current scenario's request (its first line, its URL), for a fault's report

    async def run(self, stop: asyncio.Event) -> None:
        scenarios = [self.garbage, self.bad_handshake, self.slow_handshake, self.bad_parameters,
                     self.random_messages, self.random_messages, self.hostile_messages, self.flush_storm,
                     self.never_reads, self.vanishes, self.http_requests, self.http_requests,
                     self.feed_requests, self.feed_requests, self.feed_sse_viewer, self.feed_sse_viewer,
                     self.feed_ws_viewer, self.feed_ws_viewer, self.watch_page]
        while not stop.is_set():
            scenario = self.rng.choice(scenarios)
            self.scenarios[scenario.__name__] += 1
            self.request = ""
            try:
                outcome = await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S)
            except TimeoutError:
                outcome = "timeout (the client's)"
            except InvalidStatus as e:
                outcome = self._status(e.response.status_code, e.response.body)
            except InvalidHandshake as e:
                outcome = f"handshake: {type(e).__name__}"
            except ConnectionClosed as e:
                outcome = self._close(e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "")
            except (OSError, EOFError) as e:
                outcome = f"os: {type(e).__name__}"
            except Exception as e:  # the fuzzer's own trouble: counted, and it goes on
                outcome = f"client exception: {type(e).__name__}"
            self.outcomes[f"{scenario.__name__}: {outcome}"] += 1
            if FAULT.match(outcome):
                self.faults.append(f"{scenario.__name__}: {outcome}" + (f" <- {self.request}" if self.request else ""))

    def _status(self, status: int, body: bytes) -> str:
        try:
            error = json.loads(body)
            nested = error.get("error")  # OpenAI's {"error": {...}}; AssemblyAI's {"error": "..."}
            code = error.get("code") or error.get("err_code") or (nested.get("code") if isinstance(nested, dict)
                                                                   else nested and str(nested)[:30])
        except (ValueError, AttributeError):
            code = body.split(b":")[0].decode("latin-1")[:30].strip()
        return f"HTTP {status} {code}"

    def _close(self, code: int | None, reason: str) -> str:
        return f"close {code} {reason}".rstrip()

    def _url(self, path: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def _text(self) -> str:
        rng = self.rng
        return rng.choice([
            lambda: "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 200))),
            lambda: json.dumps({"type": rng.choice(["flush", "end", "KeepAlive", "Finalize", "x", None, 5, "Terminate",
                                                    "ForceEndpoint", "UpdateConfiguration", "session.update",
                                                    "input_audio_buffer.commit", "input_audio_buffer.clear"])}),
            lambda: json.dumps({"type": "input_audio_buffer.append", "audio": rng.choice(
                ["!!", "AAAA", "", None, 5, base64.b64encode(self._speech_chunk()).decode(), "A" * 100_001])}),
            lambda: json.dumps({"type": "session.update", "session": rng.choice([
                None, [], {"type": "transcription", "audio": {"input": {"format": {"type": rng.choice(
                    ["audio/pcm", "audio/pcmu", "audio/x", 5]), "rate": rng.choice([24000, 0, "x", 1e400])},
                    "turn_detection": rng.choice([None, {"type": "server_vad", "silence_duration_ms": -5}, 7]),
                    "transcription": {"model": rng.choice(["whisper-1", "x", None]), "language": rng.choice(
                        ["en", "xx", 5]), "prompt": rng.choice(["a, b", "x" * 20_000, None])}}}}])}),
            lambda: json.dumps({"type": "UpdateConfiguration", rng.choice(["min_turn_silence", "max_turn_silence",
                                "end_of_turn_confidence_threshold"]): rng.choice([-1, "x", 1e400, 500, None])}),
            lambda: json.dumps({"config": {"sample_rate": rng.choice([16000, 8000, "inf", -1, 1e308, "x", None]),
                                           "words": rng.choice([0, 1, "false", [], {}])}}),
            lambda: '{"config": {"sample_rate": 1e400}}',
            lambda: "[" * (n := rng.randrange(10, 40_000)) + "]" * n,
            lambda: '{"type": NaN}', lambda: '{"eof": Infinity}', lambda: "1" * 5000,
            lambda: json.dumps([rng.random() for _ in range(rng.randrange(1, 50))]),
            lambda: "x" * rng.randrange(60_000, 70_000),
        ])()

    def _binary(self) -> bytes:
        rng = self.rng
        return rng.choice([
            lambda: rng.randbytes(rng.randrange(0, 4000)),
            lambda: b"",
            lambda: b"\x00" * 3,
            lambda: np.full(rng.randrange(1, 400), np.nan, "<f4").tobytes(),
            lambda: self._speech_chunk(),
            lambda: rng.randbytes(rng.choice([1_048_577, 1_500_000])),
        ])()

    def _speech_chunk(self) -> bytes:
        start = self.rng.randrange(0, max(1, len(self.speech) - 6400)) & ~1
        return self.speech[start : start + 3200]

    def _query(self) -> str:
        rng = self.rng
        keys = ["sample_rate", "encoding", "language", "token", "topic", "channels", "interim_results",
                "endpointing", "utterance_end_ms", "vad_events", "punctuate", rng.randbytes(3).hex(), "intent",
                "format_turns", "keyterms_prompt", "min_turn_silence", "max_turn_silence", "speaker_labels",
                "language_detection", "model"]
        values = ["inf", "1e400", "nan", "-1", "16000", "8000", "48000", "abc", "", "linear16", "mulaw", "pcm_f32le",
                  "fr", "true", "maybe", "false", "%00", "%ff%fe", "a" * 300, "0x10", "99999999999", "transcription",
                  "pcm_s16le", "pcm_mulaw", '["a","b"]', "[[[[", "ek_1_0000000000000000_" + "0" * 64]
        return "&".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randrange(0, 8)))

    # scenarios: each returns its outcome, or raises what the driver turns into one

    async def garbage(self) -> str:
        """Random bytes instead of an HTTP request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(self.rng.choice([self.rng.randbytes(self.rng.randrange(1, 9000)),
                                      b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n",
                                      b"GET /v1/stream HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"]))
        return await self._response(reader, writer)

    async def bad_handshake(self) -> str:
        """An upgrade with random headers: wrong Host, foreign Origin, broken keys, repeated headers."""
        rng = self.rng
        host = rng.choice([f"127.0.0.1:{self.port}", f"evil.example:{self.port}", "", "[::1]", "localhost"])
        lines = [f"GET {rng.choice(PATHS + ['/nope', '/v1/stream/../x', '//'])}?{self._query()} HTTP/1.1"]
        if host:
            lines.append(f"Host: {host}")
        if rng.random() < 0.2:
            lines.append(f"Host: other.example:{self.port}")
        lines += ["Upgrade: websocket", "Connection: Upgrade",
                  f"Sec-WebSocket-Key: {rng.choice(['dGhlIHNhbXBsZSBub25jZQ==', 'short', ''])}",
                  f"Sec-WebSocket-Version: {rng.choice(['13', '8', 'x'])}"]
        if rng.random() < 0.5:
            lines.append(f"Origin: {rng.choice(['http://evil.example', f'https://127.0.0.1:{self.port}', 'null'])}")
        if rng.random() < 0.3:
            lines.append(f"Sec-WebSocket-Protocol: {rng.choice(['token, x', 'bearer', ',,,', 'token'])}")
        if rng.random() < 0.3:
            lines.append(f"Authorization: {rng.choice(['Bearer x', 'Token', 'Basic Zm9v', 'Bearer ' + 'z' * 500])}")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
        return await self._response(reader, writer)

    async def slow_handshake(self) -> str:
        """Connect and send the request a byte at a time, or not at all."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        request = f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n".encode()
        for byte in request[: self.rng.randrange(0, len(request))]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.5)
        return await self._response(reader, writer)

    async def _response(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 12)
            status = int(head.split(b" ", 2)[1])
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
            return self._status(status, body) if status != 101 else "HTTP 101 upgraded"
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed without a response"
        finally:
            writer.close()

    async def bad_parameters(self) -> str:
        """A proper client library with random query parameters and tokens."""
        async with connect(self._url(self.rng.choice(PATHS), self._query()), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "end"}) if self.rng.random() < 0.5 else '{"eof" : 1}')
            async for _ in ws:
                pass
            return self._close(ws.close_code, ws.close_reason)

    async def random_messages(self) -> str:
        """Random text and binary messages, some speech among them, then maybe an end."""
        path = self.rng.choice(PATHS)
        query = {"/v1/listen": "encoding=linear16&sample_rate=16000",
                 "/v1/realtime": "intent=transcription"}.get(path, "sample_rate=16000")
        async with connect(self._url(path, query), max_size=None, open_timeout=10) as ws:
            reader = asyncio.create_task(self._drain(ws))
            for _ in range(self.rng.randrange(1, 30)):
                await ws.send(self._text() if self.rng.random() < 0.5 else self._binary())
                await asyncio.sleep(self.rng.random() * 0.1)
            if self.rng.random() < 0.7:
                await ws.send(ENDS[path])
            await reader
            return self._close(ws.close_code, ws.close_reason)

    async def hostile_messages(self) -> str:
        """One message chosen to hurt: deep JSON, a huge frame, NaN audio, absurd config numbers."""
        path = self.rng.choice(PATHS)
        query = "encoding=pcm_f32le" if path == "/v1/stream" and self.rng.random() < 0.5 else ""
        async with connect(self._url(path, query), max_size=None, open_timeout=10) as ws:
            reader = asyncio.create_task(self._drain(ws))
            await ws.send(self.rng.choice([self._text, self._binary])())
            await asyncio.sleep(0.5)
            await ws.close()
            await reader
            return self._close(ws.close_code, ws.close_reason)

    async def flush_storm(self) -> str:
        """Speech with control messages far beyond the rate limit."""
        path = self.rng.choice(["/v1/stream", "/v1/listen"])
        query = "encoding=linear16&sample_rate=16000" if path == "/v1/listen" else ""
        control = '{"type": "flush"}' if path == "/v1/stream" else '{"type": "Finalize"}'
        async with connect(self._url(path, query), open_timeout=10) as ws:
            reader = asyncio.create_task(self._drain(ws))
            for _ in range(20):
                await ws.send(self._speech_chunk())
                for _ in range(20):
                    await ws.send(control)
                await asyncio.sleep(0.1)
            await ws.send('{"type": "end"}' if path == "/v1/stream" else '{"type": "CloseStream"}')
            await reader
            return self._close(ws.close_code, ws.close_reason)

    async def never_reads(self) -> str:
        """Sends fast and never reads (Vosk answers every frame), then goes away."""
        async with connect(self._url("/"), max_queue=1, open_timeout=10) as ws:
            for _ in range(self.rng.randrange(100, 3000)):
                await ws.send(self.rng.choice([b"\x00\x00", self._speech_chunk()]))
            await asyncio.sleep(self.rng.random() * 3)
            ws.transport.abort()
            return "aborted by the client"

    async def vanishes(self) -> str:
        """Streams some speech, then drops the TCP connection, or half-closes it."""
        async with connect(self._url("/v1/stream"), open_timeout=10) as ws:
            for _ in range(self.rng.randrange(1, 30)):
                await ws.send(self._speech_chunk())
                await asyncio.sleep(0.05)
            if self.rng.random() < 0.5:
                ws.transport.abort()
                return "aborted by the client"
            ws.transport.write_eof()
            await ws.wait_closed()
            return self._close(ws.close_code, ws.close_reason)

    async def http_requests(self) -> str:
        """A request with a body to the HTTP API: broken heads, lying lengths, random multipart, random files."""
        rng = self.rng
        boundary = rng.choice(["b", "", "x" * 100, "--"])
        fields = [(rng.choice(["file", "model", "response_format", "timestamp_granularities[]", "language",
                               "prompt", "stream", "temperature", "x"]),
                   rng.choice([b"whisper-1", b"json", b"verbose_json", b"word", b"true", b"nan", b"1e400", b"xx",
                               rng.randbytes(rng.randrange(0, 3000)), b"RIFF" + rng.randbytes(200),
                               self._wav(), bytes([255, 251]) + rng.randbytes(5000)]))
                  for _ in range(rng.randrange(0, 6))]
        if rng.random() < 0.5:
            fields += [("file", self._wav()), ("model", b"whisper-1")]
        body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"%s\r\n\r\n%s\r\n"
                        % (boundary.encode(), name.encode(), b'; filename="a.wav"' if name == "file" else b"", value)
                        for name, value in fields) + (b"--%s--\r\n" % boundary.encode() if rng.random() < 0.8 else b"")
        if rng.random() < 0.2:
            body = rng.choice([b"{}", b'{"expires_after": {"seconds": 1e400}}', b"[" * 5000, rng.randbytes(100)])
        length = rng.choice([len(body)] * 6 + [0, len(body) + 100, 99_999_999_999, -1])
        method = rng.choice(["POST"] * 8 + ["PUT", "OPTIONS", "GET", "DELETE"])
        lines = [f"{method} {rng.choice(API_PATHS)}?{self._query()} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 f"Content-Type: {rng.choice(['multipart/form-data; boundary=' + boundary, 'application/json', ''])}",
                 f"Content-Length: {length}" if rng.random() < 0.9 else "Transfer-Encoding: chunked"]
        if rng.random() < 0.3:
            lines.append(rng.choice(["Expect: 100-continue", "Origin: http://evil.example", "Authorization: Bearer x",
                                     "Transfer-Encoding: gzip", "Content-Length: 5"]))
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body)
        return await self._response(reader, writer)

    def _wav(self) -> bytes:
        out = io.BytesIO()
        pcm = np.frombuffer(self._speech_chunk(), "<i2")
        sf.write(out, pcm[: self.rng.randrange(1, len(pcm) + 1)], 16000, format="WAV", subtype="PCM_16")
        return out.getvalue()

    async def _drain(self, ws) -> None:  # noqa: ANN001
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass


    # caption feeds: random and malformed requests, and viewers that misbehave

    def _topic(self, raw: bool = False) -> str:
        """A topic as it goes in a path: often the references', else odd or percent-encoded; raw: also
        characters that no client library puts in a URL."""
        rng = self.rng
        odd = ["room-1", f"room-{rng.randbytes(4).hex()}", "", ".", "..", "%2E%2E", "%2F", "a%2Fb",
               "..%2F..%2Fetc%2Fpasswd", "+", "%2B", "%23", "%00", "a%00b", "%ff%fe", "%C3%28", "%ED%A0%80",
               "caf%C3%A9", "%", "%zz", "%2", "%20", "~", "x" * 10_240, "y" * 129, "%41" * 200,
               "".join(f"%{b:02x}" for b in rng.randbytes(rng.randrange(1, 60)))]
        if raw:
            odd += ["#", "a#b", "\x00", " ", "é", "a b", "\xff", "/", "?"]
        return REFERENCE_TOPIC if rng.random() < 0.4 else rng.choice(odd)

    def _document(self) -> str:
        """What is asked of a topic: the feed, one of its documents, or something else."""
        rng = self.rng
        n = rng.choice(["0", "1", "3", "-1", "", "x", "1e3", "00001", "%31", "9" * 25, "9" * 5000, "0" * 4400,
                        str(rng.randrange(0, 100))])
        return rng.choice(["", "", "/", "/subtitles.m3u8", "/subtitles.m3u8", f"/subtitles/{n}.vtt",
                           f"/subtitles/{n}.vtt", f"/subtitles/{n}", "/subtitles/", "/transcript.txt",
                           "/transcript.srt", "/transcript.vtt", "/transcript.xyz", "/transcript", "/TRANSCRIPT.TXT",
                           "/secret", "/secret", "/secret/", "/nope", "/subtitles.m3u8/x", "//", "/..",
                           "/%2e%2e/secret"])

    def _feed_token(self) -> str:
        """A token to read a feed with: right, wrong, forged, expired, garbage or huge."""
        rng = self.rng
        now = int(time.time())
        topic = rng.choice([REFERENCE_TOPIC, "room-", "room-1", "a/b"]).encode()
        return rng.choice([
            lambda: VIEWER_TOKEN, lambda: VIEWER_TOKEN, lambda: VIEWER_TOKEN, lambda: ROOM_TOKEN,
            lambda: rng.choice(self.clues.secrets) if self.clues.secrets else VIEWER_TOKEN,
            lambda: "", lambda: "wrong", lambda: VIEWER_TOKEN + "x", lambda: VIEWER_TOKEN[:-1], lambda: "%00",
            lambda: "\x00", lambda: "é" * 3, lambda: rng.randbytes(20).hex(), lambda: "z" * 8000,
            lambda: read_secret(VIEWER_TOKEN, now - rng.randrange(1, 10**6), topic.hex()),  # expired
            lambda: read_secret(VIEWER_TOKEN, now + 600, topic.hex(), rng.choice("ep")),  # forged, good
            lambda: read_secret(VIEWER_TOKEN, 999_999_999_999, topic.hex()),
            lambda: read_secret(VIEWER_TOKEN, now + 600, "fffe"),  # a topic that is not UTF-8
            lambda: read_secret(VIEWER_TOKEN, now + 600, "61" * 513),  # a topic too long
            lambda: read_secret(VIEWER_TOKEN, now + 600, "abc"),  # odd hex
            lambda: read_secret(VIEWER_TOKEN, now + 600, "zz"),
            lambda: read_secret("not-a-token", now + 600, topic.hex()),
            lambda: read_secret(VIEWER_TOKEN, now + 600, topic.hex())[:-1] + "x",
            lambda: f"vk_{now + 600}_{token_id(VIEWER_TOKEN)}_e{topic.hex()}_{'0' * 64}",
            lambda: "vk_" + "0" * 7000, lambda: "vk_", lambda: "vk_1_2_e_3",
            lambda: stream_secret(VIEWER_TOKEN, now - 5),  # expired
            lambda: stream_secret(VIEWER_TOKEN, now + 600),
            lambda: stream_secret(VIEWER_TOKEN, 10**13),
            lambda: "ek_1_0000000000000000_" + "0" * 64, lambda: "ek_" + "9" * 7000,
        ])()

    def _after(self) -> str | None:
        """A resume point: none, a final's id seen, or a mangled one (the feed's key with a number of 5000
        digits or of non-ASCII digits among them)."""
        rng = self.rng
        seen = self.clues.ids[-1] if self.clues.ids else "0-0"
        key = seen.partition("-")[0]
        return rng.choice([None, None, seen, self.clues.ids[0] if self.clues.ids else seen, f"{key}-0",
                           f"{key}-{10**30}", f"{key}-" + "9" * 5000, f"{key}-²", f"{key}-٣", f"{key}--1",
                           f"{key}-", key, "-", "", "x" * 4000, "\x00", f"{key}-1-2", f"{key}-+5", f"{key}- 5",
                           f"{int(key, 16) + 1:x}-3" if re.fullmatch(r"[0-9a-f]+", key) else "g-1", "0-0"])

    def _feed_query(self) -> str:
        rng = self.rng
        fields = []
        if rng.random() < 0.8:
            fields.append(("token", self._feed_token()))
        if rng.random() < 0.3:
            fields.append(("after", self._after() or ""))
        if rng.random() < 0.5:
            fields.append(("expires_in_seconds", rng.choice(
                ["3600", "10", "9", "9.99", "7200", "7201", "0", "-1", "nan", "inf", "-inf", "1e400", "", "x",
                 "9" * 400, " 60 ", "0x10", "1_000", "60%00", "1e-300", "7200.0000001"])))
        if rng.random() < 0.5:
            fields.append(("scope", rng.choice(["topic", "prefix", "", "TOPIC", "all", "%00", "prefix" * 1000])))
        if rng.random() < 0.15:
            fields += [(rng.choice(["token", "after", "x", "scope"]), rng.choice(["", "1", "%ff"]))
                       for _ in range(rng.choice([2, 70]))]
        return "&".join(f"{quote(k, safe='%')}={quote(v, safe='%')}" for k, v in fields)

    def _feed_request(self, method: str, target: str, headers: list[str]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", *headers]
        self.request = ascii(" | ".join(lines))[:2000]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    async def _open(self, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the server; rcvbuf: a small receive buffer, and a reader that buffers little."""
        if rcvbuf is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        return await asyncio.open_connection(sock=await self._socket(rcvbuf), limit=1024)

    async def _socket(self, rcvbuf: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connecting: the window is set then
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str = "GET") -> str:
        """A plain request's outcome: its status and error code, or the content type of a 200 (and whether
        the document looks like one)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 12)
            status, fields = parse_head(head)
            if status == 101:
                return "HTTP 101 upgraded"
            kind = fields.get("content-type", "").split(";")[0]
            if method == "HEAD" or kind == "text/event-stream":
                return f"HTTP {status} {kind}".rstrip()
            length = int(fields.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
            return self._status(status, body) if status != 200 else f"HTTP 200 {kind}{self._check(kind, body)}"
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed without a response"
        finally:
            writer.close()

    def _check(self, kind: str, body: bytes) -> str:
        """"" for a document that looks like its kind, else what is wrong; a read secret is kept for later."""
        if kind == "application/json":
            try:
                self.clues.secrets.append(json.loads(body)["token"])
            except (ValueError, KeyError, TypeError):
                return " (not a secret)"
        magic = {"application/vnd.apple.mpegurl": b"#EXTM3U", "text/vtt": b"WEBVTT"}.get(kind, b"")
        return "" if body.startswith(magic) else " (malformed)"

    async def feed_requests(self) -> str:
        """A request under /v1/captions/: odd topics, every document, bad tokens and resume points, other methods."""
        rng = self.rng
        method = rng.choice(["GET"] * 12 + ["POST", "PUT", "HEAD", "OPTIONS", "DELETE", "get"])
        query = self._feed_query()
        target = FEEDS + self._topic(raw=True) + self._document() + (f"?{query}" if query else "")
        headers = []
        if rng.random() < 0.3:
            headers.append(f"Authorization: {rng.choice(['Bearer ', 'bearer ', 'Basic ', ''])}{self._feed_token()}")
        if rng.random() < 0.2:
            headers.append(f"Last-Event-ID: {self._after() or ''}")
        if rng.random() < 0.2:
            headers += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version: 13"]
        if rng.random() < 0.2:
            headers.append(rng.choice(["Origin: http://evil.example", "Accept: text/event-stream", "X: " + "a" * 9000,
                                       "Content-Length: 5", "Transfer-Encoding: chunked",
                                       f"Cookie: token={VIEWER_TOKEN}"]))
        body = b""
        if method not in ("GET", "HEAD") and rng.random() < 0.5:
            body = rng.randbytes(rng.randrange(0, 2000))
            headers.append(f"Content-Length: {len(body)}")
        reader, writer = await self._open()
        writer.write(self._feed_request(method, target, headers) + body)
        return await self._answer(reader, writer, method)

    async def watch_page(self) -> str:
        """The viewer page /watch/{topic}: odd topics and queries, other methods."""
        rng = self.rng
        method = rng.choice(["GET"] * 6 + ["HEAD", "POST", "OPTIONS"])
        path = rng.choice(["/watch/", "/watch", "/watch//", "/watch/..", "/watch/../v1/models", "/watch/%2e%2e/",
                           None, None, None])
        path = path or "/watch/" + self._topic(raw=True) + rng.choice(["", "", "/", "/x", "/subtitles.m3u8"])
        query = rng.choice(["", f"token={VIEWER_TOKEN}", "overlay=1", "overlay=%00&theme=" + "x" * 5000,
                            f"token={quote(self._feed_token(), safe='')}", "mqtt=ws://evil.example"])
        reader, writer = await self._open()
        writer.write(self._feed_request(method, path + (f"?{query}" if query else ""), []))
        return await self._answer(reader, writer, method)

    async def feed_sse_viewer(self) -> str:
        """A server-sent event viewer that reads, never reads, vanishes mid-feed or sends garbage after its request."""
        rng = self.rng
        behaviours: dict[str, Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str]]] = {
            "reads": self._sse_reads, "never reads": self._sse_never_reads, "vanishes": self._sse_vanishes,
            "sends garbage": self._sse_sends_garbage}
        behaviour = rng.choice(list(behaviours))
        topic = REFERENCE_TOPIC if rng.random() < 0.8 else self._topic()
        query = f"token={quote(self._feed_token() if rng.random() < 0.2 else VIEWER_TOKEN, safe='')}"
        headers = ["Accept: text/event-stream"]
        after = self._after()
        if after is not None and rng.random() < 0.5:
            headers.append(f"Last-Event-ID: {after}")
        elif after is not None:
            query += f"&after={quote(after, safe='')}"
        reader, writer = await self._open(SMALL_RCVBUF if behaviour == "never reads" else None)
        try:
            writer.write(self._feed_request("GET", f"{FEEDS}{topic}?{query}", headers))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, fields = parse_head(head)
            if status != 200 or not fields.get("content-type", "").startswith("text/event-stream"):
                length = int(fields.get("content-length", "0"))
                return self._status(status, await asyncio.wait_for(reader.readexactly(length), 5) if length else b"")
            return f"HTTP 200 events, {behaviour}: {await behaviours[behaviour](reader, writer)}"
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed without a response"
        finally:
            writer.transport.abort()

    async def _read_for(self, reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, str | None]:
        """What comes within `seconds`, and how the server ended the feed in that time (None: it did not)."""
        data, deadline = b"", time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                more = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionResetError:
                return data, "reset by the server"
            if not more:
                return data, "ended by the server"
            data += more
        return data, None

    async def _sse_reads(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Reads a while: the feed's message must come first, then finals with rising ids."""
        data, end = await self._read_for(reader, self.rng.uniform(1, 8))
        events, _ = sse_events(data)
        for _, message in events:
            self.clues.learn(message)
        verdict = feed_verdict([message for _, message in events])
        return f"{verdict}, {end}" if end else verdict

    async def _sse_never_reads(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        await asyncio.sleep(self.rng.uniform(3, 11))
        _, end = await self._read_for(reader, 1.0)
        return {"reset by the server": "dropped by the server"}.get(end or "", end or "still served")

    async def _sse_vanishes(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Reads a little, then resets the connection, closes it or half-closes it."""
        _, end = await self._read_for(reader, self.rng.uniform(0, 3))
        if end:
            return end
        how = self.rng.choice(["resets", "closes", "half-closes"])
        if how == "half-closes":
            writer.write_eof()
            _, end = await self._read_for(reader, 3)
            return f"half-closed, then {end or 'still served'}"
        if how == "resets":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return f"vanished ({how})"

    async def _sse_sends_garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        rng = self.rng
        for _ in range(rng.randrange(1, 20)):
            writer.write(rng.choice([rng.randbytes(rng.randrange(1, 5000)), b"GET / HTTP/1.1\r\n\r\n",
                                     b"\r\n" * 100, b"\x00" * 65536, b"data: {}\n\n"]))
            await asyncio.sleep(0.1)
        data, end = await self._read_for(reader, 2)
        return end or ("still served" if data else "still served, silent")

    async def feed_ws_viewer(self) -> str:
        """A WebSocket viewer that sends text or binary, never reads, vanishes, or reconnects with a random after=."""
        rng = self.rng
        behaviours: dict[str, Callable[[ClientConnection, str, str], Awaitable[str]]] = {
            "sends": self._ws_sends, "never reads": self._ws_never_reads, "vanishes": self._ws_vanishes,
            "resumes": self._ws_resumes}
        behaviour = rng.choice(list(behaviours))
        topic = REFERENCE_TOPIC if rng.random() < 0.8 else self._topic()
        token = quote(self._feed_token() if rng.random() < 0.2 else VIEWER_TOKEN, safe="")
        headers, query = {}, f"token={token}"
        if rng.random() < 0.3 and token.isalnum():
            headers, query = {"Authorization": f"Bearer {token}"}, ""
        after = self._after()
        if after is not None and rng.random() < 0.5 and re.fullmatch(r"[ -~]*", after):
            headers["Last-Event-ID"] = after
        elif after is not None:
            query += f"&after={quote(after, safe='')}"
        self.request = ascii(f"WebSocket {FEEDS}{topic}?{query} {headers}, {behaviour}")[:2000]
        small = {"sock": await self._socket(SMALL_RCVBUF), "max_queue": 1} if behaviour == "never reads" else {}
        async with connect(self._url(FEEDS + topic, query), additional_headers=headers, max_size=None,
                           open_timeout=10, **small) as ws:
            return await behaviours[behaviour](ws, topic, f"token={token}")

    async def _ws_messages(self, ws: ClientConnection, seconds: float) -> list[dict | None]:
        """The messages within `seconds` (None for one that is not a JSON object); stops early at a close."""
        messages: list[dict | None] = []
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(seconds):
                async for raw in ws:
                    try:
                        message = json.loads(raw)
                    except ValueError:
                        message = None
                    messages.append(message if isinstance(message, dict) else None)
                    self.clues.learn(message)
        return messages

    async def _ws_sends(self, ws: ClientConnection, topic: str, token: str) -> str:
        """A viewer sends nothing: whatever it sends gets a read_only error and close 1008."""
        await ws.send(self._text() if self.rng.random() < 0.5 else self._binary())
        messages = await self._ws_messages(ws, 10)
        read_only = any(m and m.get("type") == "error" and m.get("code") == "read_only" for m in messages)
        outcome = self._close(ws.close_code, ws.close_reason)
        return outcome if read_only else f"{outcome}, without a read_only error"

    async def _ws_never_reads(self, ws: ClientConnection, topic: str, token: str) -> str:
        await asyncio.sleep(self.rng.uniform(3, 11))
        await self._ws_messages(ws, 2)
        if ws.close_code is None:
            return "still served"
        return self._close(ws.close_code, ws.close_reason)

    async def _ws_vanishes(self, ws: ClientConnection, topic: str, token: str) -> str:
        await self._ws_messages(ws, self.rng.uniform(0, 3))
        if ws.close_code is not None:
            return self._close(ws.close_code, ws.close_reason)
        if self.rng.random() < 0.5:
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                             struct.pack("ii", 1, 0))
        ws.transport.abort()
        return "vanished"

    async def _ws_resumes(self, ws: ClientConnection, topic: str, token: str) -> str:
        """Reads a while, goes, and comes back after its last final's id or a random one: the feed's message
        first, a gap only for a point not kept, no final of its own twice."""
        messages = await self._ws_messages(ws, self.rng.uniform(1, 5))
        ids = [m["id"] for m in messages if m and m.get("type") == "final" and isinstance(m.get("id"), str)]
        await ws.close()
        own = bool(ids) and self.rng.random() < 0.7
        after = ids[-1] if own else self._after() or ""
        self.request += ascii(f", then after={after}")[:2000]
        async with connect(self._url(FEEDS + topic, f"{token}&after={quote(after, safe='')}"), max_size=None,
                           open_timeout=10) as again:
            resumed = await self._ws_messages(again, self.rng.uniform(1, 3))
        verdict = feed_verdict(resumed)
        if own and any(m and m.get("id") in ids for m in resumed):
            verdict += ", repeats a final"
        if own and any(m and m.get("type") == "gap" for m in resumed):
            verdict += ", a gap"
        return f"resumed after {'its last final' if own else 'a random id'}: {verdict}"


# -- the run ---------------------------------------------------------------------------------------


def reference_url(url: str) -> str:
    """The references' stream URL: they publish their captions to REFERENCE_TOPIC."""
    return f"{url}/v1/stream?topic={REFERENCE_TOPIC}"


def references(url: str, clips: list, n: int, duration: float) -> soak.Level:
    return asyncio.run(soak.soak(reference_url(url), clips, n, duration, ramp=1.0))


async def fuzzed_references(url: str, clips: list, n: int, duration: float, fuzzers: list[Fuzzer],
                            viewer: ReferenceViewer) -> soak.Level:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(f.run(stop)) for f in fuzzers]
    watching = asyncio.create_task(viewer.run())
    try:
        return await soak.soak(reference_url(url), clips, n, duration, ramp=1.0)
    finally:
        stop.set()
        # the references' last finals reach their viewer within this
        await asyncio.gather(*tasks, asyncio.sleep(3), return_exceptions=True)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


def log_problems(log_path: Path) -> tuple[int, int, list[str]]:
    """Error-level records, tracebacks, and the first few of them, in the server's JSON log."""
    errors, tracebacks, examples = 0, 0, []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            tracebacks += "Traceback" in line
            continue
        if record.get("level") in ("error", "critical"):
            errors += 1
            examples.append(line[:300])
        tracebacks += "exception" in record
    return errors, tracebacks, examples[:5]


def count_faults(faults: list[str], tracebacks: int) -> dict[str, int]:
    """The server's faults by kind: 1011 closes and HTTP 500 answers the fuzz clients saw, tracebacks in its log."""
    return {"close_1011": sum(f.split(": ", 1)[1].startswith("close 1011") for f in faults),
            "http_500": sum(f.split(": ", 1)[1].startswith("HTTP 500") for f in faults),
            "log_tracebacks": tracebacks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of each phase (default: 300)")
    parser.add_argument("--fuzzers", type=int, default=4, help="concurrent fuzz clients (default: 4)")
    parser.add_argument("--references", type=int, default=2, help="real-time reference streams (default: 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--manifest", type=Path, default=ROOT / "samples" / "manifest.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz")
    parser.add_argument("--serve", nargs=argparse.REMAINDER, default=[], help="extra `captioner serve` options")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clips = read_manifest(args.manifest)
    log_path = args.out / "server.log"
    viewer_tokens = args.out / "viewer_tokens.txt"
    viewer_tokens.write_text(f"{VIEWER_TOKEN}\n{ROOM_TOKEN} room-\n")
    options = ["--viewer-tokens-file", str(viewer_tokens), "--max-viewer-unsent-bytes", str(MAX_VIEWER_UNSENT_BYTES),
               *args.serve]
    with harness.serving(options, log=log_path) as url:
        port = int(url.rsplit(":", 1)[1])
        time.sleep(5)
        idle_mb = harness.resident_mb(url)
        baseline = references(url, clips, args.references, args.duration)
        print(json.dumps({"baseline": asdict(baseline.summarize())}), flush=True)
        from captioner.stream.audio import load_audio

        speech = (load_audio(clips[0].audio).numpy() * 32767).astype("<i2").tobytes()
        clues = Clues()
        fuzzers = [Fuzzer(port, random.Random(args.seed + k), speech, clues) for k in range(args.fuzzers)]
        viewer = ReferenceViewer(port)
        fuzzed = asyncio.run(fuzzed_references(url, clips, args.references, args.duration, fuzzers, viewer))
        time.sleep(10)
        end_mb = harness.resident_mb(url)
        readyz = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read())
    outcomes = sum((f.outcomes for f in fuzzers), Counter())
    feed_outcomes = Counter({kind: n for kind, n in outcomes.items() if kind.startswith(FEED_SCENARIOS)})
    watched = viewer.summary(sum(len(c.finals) for c in fuzzed.clients))
    faults = [fault for f in fuzzers for fault in f.faults]
    errors, tracebacks, examples = log_problems(log_path)
    fault_counts = count_faults(faults, tracebacks)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "duration_s": args.duration, "fuzzers": args.fuzzers, "references": args.references, "seed": args.seed,
        "fuzz_clients": sum(outcomes.values()), "scenarios": dict(sum((f.scenarios for f in fuzzers), Counter())),
        "outcomes": dict(outcomes.most_common()), "feed_clients": sum(feed_outcomes.values()),
        "faults": fault_counts, "server_faults": faults,
        "log_errors": errors, "log_tracebacks": tracebacks, "log_error_examples": examples,
        "reference": {name: {k: asdict(level.summarize())[k] for k in REFERENCE_FIGURES}
                      for name, level in (("without fuzzer", baseline), ("with fuzzer", fuzzed))},
        "reference_viewer": watched,
        "memory_mb": {"idle": round(idle_mb), "after": round(end_mb)}, "readyz_after": readyz,
    }
    (args.out / "report.json").write_text(json.dumps(summary, indent=1))
    verdict = "NOT clean" if any(fault_counts.values()) else "clean"
    lines = [f"# Live fuzz, {summary['date']}", "", f"{summary['fuzz_clients']} fuzz clients in {args.duration:g} s "
             f"({args.fuzzers} at a time; {summary['feed_clients']} of them on the caption feeds), {args.references} "
             "real-time references.", "",
             f"Server faults ({verdict}): {fault_counts['close_1011']} closes 1011, {fault_counts['http_500']} HTTP "
             f"500, {tracebacks} tracebacks in the server log; error-level log records: {errors}.", "",
             "| reference | WER | final lag p50 | p95 | errors |", "|---|---|---|---|---|"]
    for name, r in summary["reference"].items():
        wer = f"{100 * r['wer']:.1f} %" if r["wer"] is not None else "-"
        lag = f"{r['final_lag_p50']:.2f} s | {r['final_lag_p95']:.2f} s"
        lines.append(f"| {name} | {wer} | {lag} | {r['errors'] or 'none'} |")
    watching = (f"The references' viewer got {watched['finals']} of the {watched['expected']} finals the references "
                f"got ({watched['repeated']} repeated, {watched['gaps']} gaps) over {watched['connections']} "
                "connections.")
    lines += ["", watching, "", f"Resident memory: idle {summary['memory_mb']['idle']} MB, 10 s after the run "
              f"{summary['memory_mb']['after']} MB.", "", "| outcome | clients |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in outcomes.most_common() if kind not in feed_outcomes]
    lines += ["", "| caption feeds: outcome | clients |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in feed_outcomes.most_common()]
    if faults:  # with their requests, cut short
        lines += ["", "The server's faults the clients saw:", ""] + [f"- {fault[:300]}" for fault in faults]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any(fault_counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
