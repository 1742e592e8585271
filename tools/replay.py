"""A native-protocol client that streams an audio file at real-time pace (or faster) and records what comes back.

Used by `captioner replay` and by the load benchmark. Every message is kept with its receive time;
the lag of an event is its receive time minus the wall time at which the audio of its end was sent.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captioner.model.errors import CaptionerError
from captioner.stream.audio import SAMPLE_RATE

__all__ = ["Replay", "replay", "replay_files", "ReplayError", "stream_url", "base_url"]

RATE = SAMPLE_RATE
STREAM_PATH = "/v1/stream"


def base_url(url: str) -> str:
    """The server's base URL (scheme://host:port) from itself or from a full stream URL such as the one
    `captioner serve` prints (ws://127.0.0.1:8765/v1/stream)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(STREAM_PATH):
        path = path[: -len(STREAM_PATH)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def stream_url(url: str, query: dict[str, object]) -> str:
    """The native stream URL with this query, from a base URL or a full stream URL (whose query is kept)."""
    parts = urlsplit(url)
    given = parts.query + "&" if parts.query else ""
    return f"{base_url(url)}{STREAM_PATH}?{given}{urlencode(query)}"


def _refusal(body: bytes) -> str:
    """The error code and message of a refusal's body (native JSON, or text), for one line of output."""
    try:
        error = json.loads(body)
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:200]


class ReplayError(CaptionerError):
    """The server could not be reached or refused the stream (`status`: its HTTP status, if it answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Replay:
    """What one streamed file got back."""

    messages: list[tuple[float, dict]] = field(default_factory=list)  # (seconds since the first audio, message)
    speed: float = 1.0
    close_code: int | None = None
    close_reason: str = ""
    sent_s: float = 0.0  # audio seconds sent

    def of_type(self, kind: str) -> list[dict]:
        return [m for _, m in self.messages if m.get("type") == kind]

    @property
    def finals(self) -> list[dict]:
        return self.of_type("final")

    @property
    def text(self) -> str:
        return " ".join(m["text"] for m in self.finals if m["text"])

    @property
    def error(self) -> dict | None:
        errors = self.of_type("error")
        return errors[0] if errors else None

    def lags(self, kind: str) -> list[float]:
        """Receive time minus the time the audio of the event's end was sent (real-time pacing only)."""
        return [t - m["end"] / self.speed for t, m in self.messages if m.get("type") == kind]


async def replay(
    url: str,
    audio: np.ndarray,
    *,
    speed: float = 1.0,
    chunk_ms: int = 100,
    token: str | None = None,
    cafile: str | None = None,
    on_message: Callable[[float, dict], None] | None = None,
    query: dict[str, object] | None = None,
) -> Replay:
    """Stream 16 kHz float audio to a captioner server at `speed` x real time (0: as fast as it reads);
    query: more stream parameters (diarize=true, language=de, ...).

    Raises ReplayError when the server is down or refuses the stream.
    """
    query = {"sample_rate": RATE, "encoding": "pcm_s16le", **(query or {})}
    headers = {"Authorization": f"Bearer {token}"} if token else None
    context = None
    if url.startswith("wss://"):
        context = ssl.create_default_context(cafile=cafile)
    target = stream_url(url, query)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = RATE * chunk_ms // 1000 * 2
    result = Replay(speed=speed)
    try:
        websocket = await connect(target, additional_headers=headers, ssl=context, max_size=None, open_timeout=10)
    except InvalidStatus as e:
        status = e.response.status_code
        raise ReplayError(f"{url} refused the stream: HTTP {status} {_refusal(e.response.body)}", status) from None
    except (OSError, TimeoutError) as e:
        raise ReplayError(f"cannot connect to {url}: {e.strerror or e}") from None
    start = time.monotonic()

    async def receive() -> None:
        async for raw in websocket:
            message = json.loads(raw)
            now = time.monotonic() - start
            result.messages.append((now, message))
            if on_message is not None:
                on_message(now, message)

    async with websocket:
        reader = asyncio.create_task(receive())
        try:
            for index, offset in enumerate(range(0, len(pcm), step)):
                if speed:  # as a live source does: a chunk goes out once all of its audio has been heard
                    delay = start + (index + 1) * chunk_ms / 1000 / speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await websocket.send(pcm[offset : offset + step])
                result.sent_s = (offset + step) / 2 / RATE
            await websocket.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        try:
            await reader
        except ConnectionClosed:
            pass
    result.sent_s = min(result.sent_s, len(audio) / RATE)
    result.close_code = websocket.close_code
    result.close_reason = websocket.close_reason or ""
    return result


def replay_files(file: Path, url: str, token: str | None, cafile: str | None, speed: float, chunk_ms: int,
                 output: str, out: Path | None, query: dict[str, object] | None = None) -> int:
    """`captioner replay`: stream an audio file (or each clip of a manifest, scored) and show the captions live;
    `output` (text, json, srt, vtt) goes to stdout, and every format to the folder `out`; query: more stream
    parameters (diarize=true). An exit status."""
    from captioner.stream.audio import load_audio

    from .evaluate import WordErrors, percentile, read_manifest, word_errors
    from .formats import cues_of, cues_to_srt, cues_to_vtt
    from .listen import LiveView

    manifest = file.suffix == ".jsonl"
    clips = read_manifest(file) if manifest else [None]
    live = LiveView(sys.stdout if output == "text" and not manifest else sys.stderr)
    total, lags = WordErrors(0, 0), []
    for clip in clips:
        path = clip.audio if clip else file
        audio = load_audio(path).numpy()
        try:
            result: Replay = asyncio.run(replay(url, audio, speed=speed, chunk_ms=chunk_ms,
                                                token=token, cafile=cafile, on_message=live.show,
                                                query=query))
        except ReplayError as e:
            print(f"captioner: error: {e}", file=sys.stderr)
            return 1
        live.close()
        if result.error:
            print(f"captioner: the server closed the stream ({result.close_code}): {result.error['code']}: "
                  f"{result.error['message']}", file=sys.stderr)
        finals = [m for m in result.finals if m["text"]]
        cues = cues_of(finals)
        documents = {"txt": result.text + "\n", "srt": cues_to_srt(cues), "vtt": cues_to_vtt(cues),
                     "json": json.dumps({"file": str(path), "speed": speed, "close_code": result.close_code,
                                         "messages": [{"t": round(t, 3), **m} for t, m in result.messages]},
                                        indent=1) + "\n"}
        if out:
            out.mkdir(parents=True, exist_ok=True)
            for ext, body in documents.items():
                (out / f"{Path(path).stem}.{ext}").write_text(body)
        if output != "text":
            sys.stdout.write(documents[output])
        if speed:
            lags += result.lags("final")
        if clip:
            errors = word_errors(clip.text, result.text)
            total += errors
            print(f"{clip.id}: WER {100 * errors.wer:.1f}% ({errors.errors}/{errors.words})", flush=True)
        elif result.error:
            return 1
    if manifest:
        print(f"WER {100 * total.wer:.2f}% over {len(clips)} clips ({total.words} words)")
    if lags:
        print(f"final lag: p50 {percentile(lags, 50):.2f} s, p95 {percentile(lags, 95):.2f} s, "
              f"max {max(lags):.2f} s", file=sys.stderr)
    return 0
