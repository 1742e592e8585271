"""captioner's own protocol v1 at /v1/stream (docs/protocol.md)."""

from __future__ import annotations

import json
from dataclasses import replace

from captioner.server.errors import BadRequest, ProtocolError
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.events import Event, event_to_dict

from .base import Command, End, Flush, Protocol, Refusal, http_status, parse_rate
from .parse import parse_flag, parse_json

__all__ = ["NativeProtocol"]

ENCODINGS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le"}


class NativeProtocol(Protocol):
    name = "native"

    def configure(self) -> None:
        query = self.request.query
        self.sample_rate = parse_rate(query.get("sample_rate"), SAMPLE_RATE)
        encoding = query.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            raise BadRequest(f"encoding {encoding[:40]!r} is not supported (pcm_s16le, pcm_f32le)", "bad_encoding")
        self.encoding = ENCODINGS[encoding]  # type: ignore[assignment]
        keywords = [k for value in self.request.repeated.get("keywords", ()) for k in value.split(",")]
        self.choose_speech(query.get("language"), query.get("task"), "bad_language", keywords,
                           parse_flag(query, "diarize", False))
        self.speech = replace(self.speech, partials=parse_flag(query, "partials", True))

    def refuse(self, error: ProtocolError) -> Refusal:
        refusal = super().refuse(error)
        body = (self.error_message(error) + "\n").encode()
        return Refusal(http_status(error), error, refusal.headers, body, "application/json")

    def opened(self, session: str) -> list[str]:
        return [json.dumps({
            "type": "ready", "session": session, "model": self.options.model_name,
            "sample_rate": self.sample_rate, "encoding": self.request.query.get("encoding", "pcm_s16le"),
            "language": self.speech.language, "task": self.speech.task, "keywords": len(self.speech.keywords),
            "diarize": self.speech.diarize, "partials": self.speech.partials,
            "protocol": 1,
        })]

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        message = parse_json(text, self.options.max_json_depth)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "flush":
            return [Flush()]
        if kind == "end":
            return [End()]
        raise BadRequest('expected {"type": "flush"} or {"type": "end"}', "bad_message")

    def receive_binary(self, data: bytes) -> list[Command]:
        if not data:
            raise BadRequest("empty audio frame", "bad_audio")
        if len(data) % self.bytes_per_sample:
            raise BadRequest(f"audio frame of {len(data)} bytes is not a whole number of "
                             f"{self.bytes_per_sample}-byte samples", "bad_audio")
        return super().receive_binary(data)

    def event(self, event: Event) -> list[str]:
        return [json.dumps(event_to_dict(event))]

    def done(self, audio_s: float) -> list[str]:
        return [json.dumps({"type": "done", "audio_s": audio_s})]

    def error_message(self, error: ProtocolError) -> str:
        return json.dumps({"type": "error", "code": error.code, "message": str(error)})
