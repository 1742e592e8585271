"""A small native-protocol test client (asyncio, websockets)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import numpy as np
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


@dataclass
class Outcome:
    messages: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def finals(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "final"]

    @property
    def text(self) -> str:
        return " ".join(m["text"] for m in self.finals if m["text"])

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


def read_pcm16(path, seconds: float | None = None) -> tuple[bytes, int]:
    audio, rate = soundfile.read(str(path), dtype="int16")
    if audio.ndim > 1:
        audio = audio.mean(axis=1).astype(np.int16)
    if seconds is not None:
        audio = audio[: int(seconds * rate)]
    return audio.tobytes(), rate


async def collect(ws, outcome: Outcome) -> None:
    try:
        async for message in ws:
            outcome.messages.append(json.loads(message))
    except ConnectionClosed:
        pass
    outcome.close_code = ws.close_code
    outcome.close_reason = ws.close_reason or ""


async def stream(url: str, pcm: bytes, rate: int, *, chunk_ms: int = 100, pace: float = 0.0, end: bool = True,
                 query: str = "", opened: asyncio.Event | None = None, **connect_args) -> Outcome:
    """Send pcm (s16le) in chunks, `pace` x real time (0: as fast as the server reads), then end; read everything.
    `opened` is set once the handshake is done."""
    outcome = Outcome()
    separator = "&" if query else ""
    async with connect(f"{url}/v1/stream?sample_rate={rate}{separator}{query}", max_size=None, **connect_args) as ws:
        if opened:
            opened.set()
        reader = asyncio.create_task(collect(ws, outcome))
        step = rate * chunk_ms // 1000 * 2
        try:
            for start in range(0, len(pcm), step):
                await ws.send(pcm[start : start + step])
                if pace:
                    await asyncio.sleep(chunk_ms / 1000 / pace)
            if end:
                await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        await reader
    return outcome


def upgrade_request(port: int, path: str, headers: dict[str, str] | None = None, host: str | None = None) -> bytes:
    """The bytes of a WebSocket upgrade request, as a raw client would send them."""
    fields = {"Host": host or f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13", **(headers or {})}
    return (f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode()


async def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send raw request bytes and read the HTTP response: (status, header fields in order, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
        length = int(next((v for k, v in fields if k.lower() == "content-length"), "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        return int(lines[0].split()[1]), fields, body
    finally:
        writer.close()


def every_final(outcome: Outcome, audio_s: float) -> bool:
    """A stream that got all it should: finals of consecutive segments, each once, then done with all the
    audio, then close 1000."""
    segments = [m["segment"] for m in outcome.finals]
    done = outcome.messages[-1] if outcome.messages else {}
    return (outcome.close_code == 1000 and done.get("type") == "done"
            and abs(done.get("audio_s", 0) - audio_s) < 0.01 and segments == list(range(len(segments)))
            and len(segments) > 0)


def speaker_of_turns(words: list[dict], turns: list[tuple[str, float, float]]) -> list[set]:
    """The set of labels the words of each turn got (a word belongs to the turn its middle falls in)."""
    out: list[set] = [set() for _ in turns]
    for word in words:
        middle = (word["start"] + word["end"]) / 2
        for k, (_, start, end) in enumerate(turns):
            if start - 0.3 <= middle <= end + 0.3:
                out[k].add(word["speaker"])
    return out


def native(message: dict) -> dict:
    """A feed's final as the speaker's client got it: without its id and the stream's id."""
    return {k: v for k, v in message.items() if k not in ("id", "session")}


class SseReader:
    """A server-sent event viewer on a raw socket: every event's id and JSON message, as they come."""

    def __init__(self) -> None:
        self.events: list[tuple[str | None, dict]] = []
        self.status = 0
        self.closed = asyncio.Event()

    async def read(self, url: str, path: str, headers: dict[str, str] | None = None, finals: int = 0) -> None:
        """Read until the server closes (or `finals` finals are in, then close)."""
        host, port = url.removeprefix("ws://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{lines}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split()[1])
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._event(block.decode())
                if finals and len(self.finals) >= finals:
                    return
        finally:
            writer.close()
            self.closed.set()

    def _event(self, block: str) -> None:
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "data" in fields:
            self.events.append((fields.get("id"), json.loads(fields["data"])))

    @property
    def finals(self) -> list[dict]:
        return [m for _, m in self.events if m["type"] == "final"]
