"""Deepgram-compatible live streaming at /v1/listen, for clients written against Deepgram (docs/protocol.md).

Mapping of captioner's events:
- interim `Results` (is_final false, with interim_results=true) carry the segment's text that is
  not final yet;
- stable words go out once, as `Results` with is_final true and speech_final false (the last
  stable word waits, as punctuation may still attach to it);
- a segment's final sends its remaining words as `Results` with is_final and speech_final true,
  then `UtteranceEnd` (with utterance_end_ms);
- `SpeechStarted` (with vad_events=true) precedes a segment's first result.
Joined, the is_final transcripts are the native protocol's finals.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from typing import Any

from captioner.decoder.rules import PUNCTUATION
from captioner.server.errors import BadRequest, ProtocolError, Unauthorized
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.events import Event, Partial, Word
from captioner.stream.jobs import AUTO
from captioner.stream.speakers import speaker_number

from ..auth import Grant, TokenTable
from .base import Command, End, Flush, Options, Protocol, Refusal, Reply, http_status, parse_rate
from .codec import WholeSamples
from .parse import Request, parse_flag, parse_json, parse_number

__all__ = ["DeepgramProtocol"]

ENCODINGS = {"linear16": "s16le", "linear32": "s32le", "mulaw": "mulaw", "alaw": "alaw"}
MODEL_UUID = "00000000-0000-4000-8000-00000000c0de"  # a stable id for captioner's model in Metadata
DIARIZER_UUID = "00000000-0000-4000-8000-0000000d1a21"  # the speaker encoder and online clustering (stream/speakers.py)
MAX_ENDPOINTING_MS = 60_000
MAX_UTTERANCE_END_MS = 60_000
NO_ENDPOINTING_S = 3600.0  # endpointing=false: segments end at Finalize, CloseStream or the length limit


class DeepgramProtocol(Protocol):
    name = "deepgram"

    def __init__(self, request: Request, options: Options) -> None:
        super().__init__(request, options)
        self.interim_results = self.punctuate = self.vad_events = False
        self.utterance_end: int | None = None
        self.request_id = str(uuid.uuid4())
        self._digest = hashlib.sha256()
        self._samples: WholeSamples | None = None  # made with the first audio, once the encoding is known
        self._sent: dict[int, int] = {}  # segment -> words already sent as is_final
        self._started: set[int] = set()
        self._finalizing = False

    # -- handshake ------------------------------------------------------------------------------

    def presented_token(self) -> str | None:
        offered = self.request.subprotocols
        if len(offered) >= 2 and offered[0].lower() in ("token", "bearer"):
            return offered[1]
        return super().presented_token()

    def subprotocol(self) -> str | None:
        offered = self.request.subprotocols
        return offered[0] if offered and offered[0].lower() in ("token", "bearer") else None

    def authenticate(self, tokens: TokenTable) -> Grant:
        try:
            return super().authenticate(tokens)
        except Unauthorized:
            raise Unauthorized("Invalid credentials.", "INVALID_AUTH") from None

    def configure(self) -> None:
        query = self.request.query
        encoding = query.get("encoding", "linear16")
        if encoding not in ENCODINGS:
            raise BadRequest(f"encoding {encoding[:40]!r} is not supported ({', '.join(ENCODINGS)})",
                             "UNSUPPORTED_ENCODING")
        self.encoding = ENCODINGS[encoding]  # type: ignore[assignment]
        self.sample_rate = parse_rate(query.get("sample_rate"), SAMPLE_RATE)
        if query.get("channels", "1") != "1":
            raise BadRequest("only channels=1 is supported", "UNSUPPORTED_CHANNELS")
        language = query.get("language")
        if language is not None:  # Deepgram's BCP-47 tags (en-US, pt-BR); "multi" detects the language
            language = AUTO if language.lower() == "multi" else language.split("-")[0].lower()
        if parse_flag(query, "detect_language", False):
            language = AUTO
        # keywords=WORD:BOOST (the boost is not used: every keyword gets the configured bonus) and keyterm=PHRASE
        keywords = [k.rpartition(":")[0] if ":" in k else k for k in self.request.repeated.get("keywords", ())]
        keywords += self.request.repeated.get("keyterm", ())
        self.choose_speech(language, None, "UNSUPPORTED_LANGUAGE", keywords, parse_flag(query, "diarize", False))
        self.interim_results = parse_flag(query, "interim_results", False)
        self.punctuate = parse_flag(query, "punctuate", False) or parse_flag(query, "smart_format", False)
        self.vad_events = parse_flag(query, "vad_events", False)
        endpointing = query.get("endpointing")
        if endpointing is not None and endpointing.lower() == "false":
            self.silence_s = NO_ENDPOINTING_S
        elif endpointing is not None and endpointing.lower() != "true":
            milliseconds = parse_number(endpointing, "endpointing", 0, MAX_ENDPOINTING_MS, "bad_parameter")
            self.silence_s = max(0.1, int(milliseconds) / 1000)
        utterance_end = query.get("utterance_end_ms")
        if utterance_end:
            self.utterance_end = int(parse_number(utterance_end, "utterance_end_ms", 0, MAX_UTTERANCE_END_MS,
                                                  "bad_parameter"))

    def refuse(self, error: ProtocolError) -> Refusal:
        request_id = str(uuid.uuid4())
        body = json.dumps({"err_code": error.code, "err_msg": str(error), "request_id": request_id}).encode()
        headers = super().refuse(error).headers + (("dg-error", str(error)[:200]), ("dg-request-id", request_id))
        return Refusal(http_status(error), error, headers, body, "application/json")

    # -- client messages ------------------------------------------------------------------------

    def receive_binary(self, data: bytes) -> list[Command]:
        if not data:  # Deepgram's legacy way of closing the stream
            return [End()]
        self._digest.update(data)
        if self._samples is None:
            self._samples = WholeSamples(self.bytes_per_sample)
        data = self._samples.take(data)
        return super().receive_binary(data) if data else []

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        try:
            message = parse_json(text, self.options.max_json_depth)
        except BadRequest:
            return [self._error("SchemaError", "could not parse the message as JSON", text)]
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return []
        if kind == "Finalize":
            if throttled:
                return []
            self._finalizing = True
            return [Flush()]
        if kind == "CloseStream":
            self._finalizing = True
            return [End()]
        return [self._error("SchemaError", f"unknown message type {str(kind)[:40]!r}", text)]

    def _error(self, variant: str, description: str, text: str) -> Reply:
        return Reply(json.dumps({"type": "Error", "variant": variant, "description": description,
                                 "message": text[:1000]}))

    # -- captioner events -----------------------------------------------------------------------

    def event(self, event: Event) -> list[str]:
        out = []
        if event.segment not in self._started:
            self._started.add(event.segment)
            if self.vad_events:
                out.append({"type": "SpeechStarted", "channel": [0], "timestamp": round(event.start, 3)})
        sent = self._sent.get(event.segment, 0)
        if isinstance(event, Partial):
            # the last stable word may still gain punctuation; with diarize, words wait for their final's speakers
            ready = [] if self.speech.diarize else event.words[: max(0, len(event.words) - 1)]
            if len(ready) > sent:
                out.append(self._results(ready[sent:], event.language, is_final=True, speech_final=False))
                self._sent[event.segment] = sent = len(ready)
            if self.interim_results:
                rest = event.text.split()[sent:]
                start = ready[-1].end if ready else event.start
                out.append(self._results([], event.language, is_final=False, speech_final=False, text=" ".join(rest),
                                         span=(start, event.end)))
        else:
            words = event.words[sent:]
            text = " ".join(event.text.split()[sent:])
            out.append(self._results(words, event.language, is_final=True, speech_final=True, text=text,
                                     span=(words[0].start, words[-1].end) if words else (event.end, event.end)))
            self._sent.pop(event.segment, None)
            if self.utterance_end is not None:
                out.append({"type": "UtteranceEnd", "channel": [0], "last_word_end": round(event.end, 3)})
        return [json.dumps(message) for message in out]

    def _results(self, words: list[Word], language: str, is_final: bool, speech_final: bool, text: str | None = None,
                 span: tuple[float, float] | None = None) -> dict[str, Any]:
        if text is None:
            text = " ".join(w.word for w in words)
        start, end = span if span else (words[0].start, words[-1].end)
        confidence = min((w.probability for w in words), default=0.0 if not text else 1.0)
        results = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(max(0.0, end - start), 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {"alternatives": [{
                "transcript": text if self.punctuate else _plain(text),
                "confidence": round(confidence, 4),
                "words": [self._word(w) for w in words],
                "languages": [language],
            }]},
            "metadata": {"request_id": self.request_id, "model_uuid": MODEL_UUID,
                         "model_info": {"name": self.options.model_name, "version": "captioner", "arch": "whisper"}},
            "from_finalize": self._finalizing and is_final,
        }
        speakers = [w.speaker for w in words if w.speaker is not None]
        if speakers:  # diarize=true: the alternative's speaker is that of most of its words
            results["channel"]["alternatives"][0]["speaker"] = speaker_number(max(speakers, key=speakers.count))
            results["metadata"]["diarize_info"] = {"model_uuid": DIARIZER_UUID, "arch": "ge2e-online"}
        return results

    def _word(self, word: Word) -> dict[str, Any]:
        out = {"word": _plain(word.word).lower(), "start": word.start, "end": word.end,
               "confidence": word.probability, "punctuated_word": word.word}
        if word.speaker is not None:  # diarize=true: Deepgram's 0-based speaker number
            out["speaker"] = speaker_number(word.speaker)
        return out

    def done(self, audio_s: float) -> list[str]:
        return [json.dumps({
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
            "sha256": self._digest.hexdigest(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": audio_s, "channels": 1, "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: {"name": self.options.model_name, "version": "captioner", "arch": "whisper"}},
        })]

    def error_message(self, error: ProtocolError) -> str:
        return json.dumps({"type": "Error", "variant": error.code, "description": str(error), "message": ""})


def _plain(text: str) -> str:
    """Text without punctuation (Deepgram's `word`, and transcripts without punctuate)."""
    return " ".join(w.strip(PUNCTUATION) for w in text.split() if w.strip(PUNCTUATION))
