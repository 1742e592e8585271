"""What every wire protocol shares: the handshake facts, audio decoding, and the hooks the connection calls."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np

from captioner.stream.errors import BadRequest, ProtocolError, Unauthorized
from captioner.stream.events import Event

if TYPE_CHECKING:
    from ..app import Connection

__all__ = ["Request", "Protocol", "decode_audio", "ENCODINGS", "MIN_RATE", "MAX_RATE", "token_matches"]

MIN_RATE, MAX_RATE = 8000, 48000
Encoding = Literal["s16le", "f32le", "s32le", "mulaw", "alaw"]
ENCODINGS: dict[Encoding, int] = {"s16le": 2, "f32le": 4, "s32le": 4, "mulaw": 1, "alaw": 1}  # bytes per sample


@dataclass(frozen=True)
class Request:
    """The facts of an upgrade request a protocol decides on."""

    path: str
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]  # lower-case names
    subprotocols: tuple[str, ...]

    @classmethod
    def parse(cls, raw_path: str, headers: dict[str, str]) -> "Request":
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        offered = tuple(p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip())
        return cls(parts.path or "/", query, headers, offered)


def token_matches(candidate: str | None, tokens: frozenset[str]) -> bool:
    """Constant-time check of a presented token against the accepted ones."""
    if candidate is None:
        return False
    found = False
    for token in tokens:
        found |= hmac.compare_digest(candidate.encode(), token.encode())
    return found


def parse_rate(value: str | None, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        rate = int(float(value))
    except ValueError:
        raise BadRequest(f"sample_rate {value!r} is not a number", "bad_sample_rate") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadRequest(f"sample_rate {rate} is outside {MIN_RATE}-{MAX_RATE} Hz", "bad_sample_rate")
    return rate


def _g711_table(kind: str) -> np.ndarray:
    codes = np.arange(256, dtype=np.int32)
    if kind == "mulaw":
        code = ~codes & 0xFF
        sign = code & 0x80
        exponent = (code >> 4) & 0x07
        mantissa = code & 0x0F
        magnitude = ((mantissa << 3) + 0x84) << exponent
        value = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    else:
        code = codes ^ 0x55
        sign = code & 0x80
        exponent = (code >> 4) & 0x07
        mantissa = code & 0x0F
        magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
        value = np.where(sign, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


_G711 = {"mulaw": _g711_table("mulaw"), "alaw": _g711_table("alaw")}


def decode_audio(data: bytes, encoding: Encoding) -> np.ndarray:
    """Float32 samples in [-1, 1] from little-endian PCM or G.711 bytes (a whole number of samples)."""
    if encoding == "s16le":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "f32le":
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise BadRequest("audio holds NaN or infinite samples", "bad_audio")
        return np.clip(samples, -1.0, 1.0)
    if encoding == "s32le":
        return (np.frombuffer(data, dtype="<i4") / 2147483648.0).astype(np.float32)
    return _G711[encoding][np.frombuffer(data, dtype=np.uint8)]


class Protocol:
    """One client connection's protocol; `Connection` (app.py) drives it.

    Order of calls: `check` (before the upgrade; may refuse with an HTTP status), `opened` (after;
    may raise ProtocolError to send an error and close), then `on_text` / `on_binary` per message
    and `on_event` per stream event, and `on_done` when the stream has ended.
    """

    name = "base"
    refuse_with_http = False  # refuse auth at the handshake (401) rather than after it (close 1008)
    lazy_open = False  # open the stream on the first audio (after an in-band configuration message)
    silence_s: float | None = None  # endpointing silence for this stream (None: the server's)

    def __init__(self, connection: "Connection", request: Request) -> None:
        self.connection = connection
        self.request = request
        self.sample_rate = 16000
        self.encoding: Encoding = "s16le"
        self.topic: str | None = request.query.get("topic") or None

    # handshake
    def presented_token(self) -> str | None:
        auth = self.request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip()
        return self.request.query.get("token")

    def authenticate(self, tokens: frozenset[str]) -> None:
        if tokens and not token_matches(self.presented_token(), tokens):
            raise Unauthorized("a valid token is required" if self.presented_token() is None else "wrong token",
                               "unauthorized")

    def configure(self) -> None:
        """Read and check the stream parameters from the request; raise BadRequest."""

    def subprotocol(self) -> str | None:
        return None

    def refusal(self, websocket: Any, error: ProtocolError) -> Any:
        """The HTTP response that refuses the upgrade (protocols with refuse_with_http)."""
        raise NotImplementedError

    # stream
    async def opened(self) -> None:
        """The stream is open (send a greeting if the protocol has one)."""

    async def on_text(self, text: str) -> None:
        raise BadRequest("text messages are not part of this protocol", "bad_message")

    async def on_binary(self, data: bytes) -> None:
        self.connection.push(decode_audio(data, self.encoding))

    async def on_event(self, event: Event) -> None:
        raise NotImplementedError

    async def on_done(self, audio_s: float) -> None:
        """All finals are out; the connection then closes with 1000."""

    def error_message(self, error: ProtocolError) -> str | None:
        """The text frame to send before closing for this error, if the protocol has one."""
        return None
