"""captioner's own protocol v1 at /v1/stream (docs/protocol.md)."""

from __future__ import annotations

import json

from captioner.stream.errors import BadRequest, ProtocolError
from captioner.stream.events import Event, event_to_dict

from .base import Protocol, parse_rate

__all__ = ["NativeProtocol"]

ENCODINGS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le"}


class NativeProtocol(Protocol):
    name = "native"

    def configure(self) -> None:
        query = self.request.query
        self.sample_rate = parse_rate(query.get("sample_rate"), 16000)
        encoding = query.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            raise BadRequest(f"encoding {encoding!r} is not supported (pcm_s16le, pcm_f32le)", "bad_encoding")
        self.encoding = ENCODINGS[encoding]  # type: ignore[assignment]
        self.bytes_per_sample = 2 if self.encoding == "s16le" else 4
        language = query.get("language", "en")
        if language != self.connection.language:
            raise BadRequest(f"language {language!r} is not available; this model speaks "
                             f"{self.connection.language!r}", "bad_language")

    async def opened(self) -> None:
        await self.connection.send(json.dumps({
            "type": "ready", "session": self.connection.stream_id, "model": self.connection.model_name,
            "sample_rate": self.sample_rate, "encoding": self.request.query.get("encoding", "pcm_s16le"),
            "protocol": 1,
        }))

    async def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise BadRequest("text messages must be JSON", "bad_message") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "flush":
            self.connection.flush()
        elif kind == "end":
            self.connection.end()
        else:
            raise BadRequest('expected {"type": "flush"} or {"type": "end"}', "bad_message")

    async def on_binary(self, data: bytes) -> None:
        if not data:
            raise BadRequest("empty audio frame", "bad_audio")
        if len(data) % self.bytes_per_sample:
            raise BadRequest(f"audio frame of {len(data)} bytes is not a whole number of "
                             f"{self.bytes_per_sample}-byte samples", "bad_audio")
        await super().on_binary(data)

    async def on_event(self, event: Event) -> None:
        await self.connection.send(json.dumps(event_to_dict(event)))

    async def on_done(self, audio_s: float) -> None:
        await self.connection.send(json.dumps({"type": "done", "audio_s": audio_s}))

    def error_message(self, error: ProtocolError) -> str | None:
        return json.dumps({"type": "error", "code": error.code, "message": str(error)})
