"""The protocol of alphacep/vosk-server at path `/`, for existing Vosk clients (docs/protocol.md).

Vosk clients send a config message (optional), then audio frames, each answered by exactly one
message: `{"partial": ...}` while speech goes on, or `{"text": ..., "result": [...]}` when
captions became final since the last answer (several finals are joined into one answer). The eof
message is answered by the remaining final text, then the connection closes with 1000. The
model's work runs alongside: an answer reports what is known when the frame arrives.
"""

from __future__ import annotations

import json

from captioner.server.errors import BadRequest, ProtocolError
from captioner.stream.events import Event, Final, Partial

from .base import Audio, Command, End, Options, Protocol, Reply, parse_rate
from .codec import WholeSamples, decode_audio
from .parse import Request, parse_json

__all__ = ["VoskProtocol"]


class VoskProtocol(Protocol):
    name = "vosk"
    lazy_open = True  # the sample rate may come in the config message

    def __init__(self, request: Request, options: Options) -> None:
        super().__init__(request, options)
        self.sample_rate = options.vosk_sample_rate
        self.words = True  # vosk-server's default
        self._partial = ""
        self._finals: list[Final] = []
        self._audio_started = False
        self._samples = WholeSamples(2)

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        message = parse_json(text, self.options.max_json_depth)
        if not isinstance(message, dict):
            raise BadRequest("text messages must be JSON objects", "bad_message")
        if "config" in message:
            if not self._audio_started and not throttled:  # as vosk-server: config applies before the audio only
                self._configure(message["config"])
            return []
        if message.get("eof"):
            return [End()]  # the answer goes out in done()
        raise BadRequest('expected {"config": {...}} or {"eof" : 1}', "bad_message")

    def _configure(self, config: object) -> None:
        if not isinstance(config, dict):
            raise BadRequest("config must be an object", "bad_config")
        if "sample_rate" in config:
            self.sample_rate = parse_rate(config["sample_rate"], self.sample_rate)
        if "words" in config:
            self.words = bool(config["words"]) and str(config["words"]).lower() not in ("0", "false")
        # max_alternatives and phrase_list are accepted and ignored (docs/protocol.md)

    def receive_binary(self, data: bytes) -> list[Command]:
        self._audio_started = True
        return [Audio(decode_audio(self._samples.take(data), "s16le")), Reply(self._answer())]

    def _answer(self) -> str:
        if self._finals:
            return self._final_answer()
        return json.dumps({"partial": self._partial})

    def _final_answer(self) -> str:
        finals, self._finals = self._finals, []
        answer: dict[str, object] = {"text": " ".join(f.text for f in finals if f.text)}
        words = [w for f in finals for w in f.words]
        if self.words and words:
            answer["result"] = [{"conf": w.probability, "end": w.end, "start": w.start, "word": w.word} for w in words]
        return json.dumps(answer)

    def event(self, event: Event) -> list[str]:
        if isinstance(event, Final):
            self._finals.append(event)
            self._partial = ""
        elif isinstance(event, Partial):
            self._partial = event.text
        return []  # answers go out with the audio frames

    def done(self, audio_s: float) -> list[str]:
        return [self._final_answer()]

    def error_message(self, error: ProtocolError) -> str | None:
        return None  # Vosk has no error message: the close code and reason tell
