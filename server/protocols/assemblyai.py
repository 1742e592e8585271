"""AssemblyAI's v3 streaming protocol at /v3/ws, for clients written against AssemblyAI (docs/protocol.md).

Mapping of captioner's events (a segment is a turn; turns are numbered from 0 in order):
- a partial is a `Turn` with end_of_turn false: its words are the segment's current text, the
  stable ones (all but the last, which may still change) with word_is_final true and, as
  AssemblyAI's docs have it, `transcript` is the text of those final words only;
- a segment's final is the `Turn` with end_of_turn true; with format_turns=true a second one
  follows, turn_is_formatted true, with captioner's cased and punctuated text;
- unformatted words and transcripts are captioner's, lower-cased, without punctuation at the edges
  of words (words of punctuation only are left out);
- a word once sent as final is sent the same (text, times, confidence) in every later Turn of its
  turn; with speaker_labels=true words wait for their final (which has the speakers) to be final.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from captioner.decoder.rules import PUNCTUATION
from captioner.server.errors import (
    BadRequest,
    Forbidden,
    MessageTooBig,
    Overloaded,
    ProtocolError,
    Throttled,
    Unauthorized,
)
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.events import Event, Final, Partial, Word
from captioner.stream.jobs import AUTO
from captioner.stream.speakers import speaker_number

from .base import Command, End, Flush, Options, Protocol, Refusal, authorization_key, http_status, parse_rate
from .codec import WholeSamples
from .parse import Request, parse_flag, parse_json, parse_number

__all__ = ["AssemblyAIProtocol", "ERROR_CODES"]

ENCODINGS = {"pcm_s16le": "s16le", "pcm_mulaw": "mulaw"}
MAX_TURN_SILENCE_MS = 60_000
MIN_SILENCE_S = 0.1  # the shortest endpointing silence a stream may ask for
UNLIMITED_S = 366 * 86_400  # Begin's expires_at when max_session_wall_s is 0 (no limit): a year ahead
AUTH_ERROR = "Authentication error, API token missing/invalid"  # AssemblyAI's 401 body, as its docs give it

# AssemblyAI's codes (its docs, "Common session errors and closures", and the SDK's RealTimeErrorCodes): the
# Error message's error_code, and the close code once base.py lets a protocol choose its own.
ERROR_CODES: dict[type[ProtocolError], int] = {
    BadRequest: 3006,  # input validation error: invalid JSON, message or parameter
    MessageTooBig: 3007,  # input duration violation: a frame over the size limit
    Unauthorized: 1008,
    Forbidden: 1008,
    Throttled: 4029,  # client sent too fast (text messages): a Warning, the stream goes on
    Overloaded: 1013,  # temporary server condition
}
SERVER_ERROR = 3005  # anything else: a server error, the details withheld


@dataclass
class _Turn:
    """One segment's turn: its number, and the words already sent as final (as sent)."""

    order: int
    final: list[Word] = field(default_factory=list)


class AssemblyAIProtocol(Protocol):
    name = "assemblyai"

    def __init__(self, request: Request, options: Options) -> None:
        super().__init__(request, options)
        self.format_turns = False
        self.language_detection = False
        self._samples: WholeSamples | None = None  # made with the first audio, once the encoding is known
        self._turns: dict[int, _Turn] = {}  # open turns by segment
        self._n_turns = 0
        self._started = time.monotonic()

    # -- handshake ------------------------------------------------------------------------------

    def presented_token(self) -> str | None:
        """AssemblyAI's raw key in Authorization (a Bearer scheme is accepted too), else ?token=."""
        return authorization_key(self.request.headers, raw=True) or self.request.query.get("token")

    def configure(self) -> None:
        query = self.request.query
        self.sample_rate = parse_rate(query.get("sample_rate"), SAMPLE_RATE)
        encoding = query.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            raise BadRequest(f"encoding {encoding[:40]!r} is not supported (pcm_s16le, pcm_mulaw)", "bad_encoding")
        self.encoding = ENCODINGS[encoding]  # type: ignore[assignment]
        self.format_turns = parse_flag(query, "format_turns", False)
        self.language_detection = parse_flag(query, "language_detection", False)
        language = query.get("language_code") or None
        if self.language_detection:
            if self.options.languages == ("en",):
                raise BadRequest(f"language_detection needs a multilingual model; model {self.options.model_name} "
                                 "is English-only", "bad_language")
            language = AUTO
        self.choose_speech(language, None, "bad_language", _keyterms(query.get("keyterms_prompt")),
                           parse_flag(query, "speaker_labels", False))
        self.silence_s = _silence_s(query.get("min_turn_silence"), query.get("max_turn_silence"))

    def refuse(self, error: ProtocolError) -> Refusal:
        """AssemblyAI's error body, {"error": ...}, with captioner's status (and Retry-After) for the error."""
        message = AUTH_ERROR if isinstance(error, Unauthorized) and error.code != "expired" else str(error)
        body = json.dumps({"error": message}).encode()
        return Refusal(http_status(error), error, super().refuse(error).headers, body, "application/json")

    # -- stream -----------------------------------------------------------------------------------

    def opened(self, session: str) -> list[str]:
        configuration = {"model": self.options.model_name, "speaker_labels": self.speech.diarize,
                         "language_detection": self.language_detection, "format_turns": self.format_turns}
        expires = int(time.time() + (self.options.max_session_wall_s or UNLIMITED_S))
        return [json.dumps({"type": "Begin", "id": session, "expires_at": expires, "configuration": configuration})]

    def receive_binary(self, data: bytes) -> list[Command]:
        if self._samples is None:
            self._samples = WholeSamples(self.bytes_per_sample)
        data = self._samples.take(data)
        return super().receive_binary(data) if data else []

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        message = parse_json(text, self.options.max_json_depth)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "Terminate":
            return [End()]
        if kind == "KeepAlive":
            return []
        if kind == "ForceEndpoint":
            return [] if throttled else [Flush()]
        if kind == "UpdateConfiguration":
            self._update(message, throttled)
            return []
        raise BadRequest(f"Invalid Message Type: {str(kind)[:40]!r} (Terminate, ForceEndpoint, UpdateConfiguration, "
                         "KeepAlive)", "bad_message")

    def _update(self, message: dict[str, Any], throttled: bool) -> None:
        """Check the fields we know; only format_turns takes effect (the stream's speech and endpointing are fixed
        when it opens), from the next turn that ends."""
        format_turns = message.get("format_turns")
        if format_turns is not None and not isinstance(format_turns, bool):
            raise BadRequest("format_turns must be true or false", "bad_message")
        if "keyterms_prompt" in message and message["keyterms_prompt"] is not None:
            _keyterm_list(message["keyterms_prompt"], "bad_message")
        for name in ("min_turn_silence", "max_turn_silence"):
            if message.get(name) is not None:
                parse_number(message[name], name, 0, MAX_TURN_SILENCE_MS, "bad_message")
        if format_turns is not None and not throttled:
            self.format_turns = format_turns

    # -- captioner events -----------------------------------------------------------------------

    def event(self, event: Event) -> list[str]:
        turn = self._turns.get(event.segment)
        if turn is None:
            if isinstance(event, Final) and not event.text:
                return []  # nothing was said, and no turn was begun
            turn = self._turns[event.segment] = _Turn(self._n_turns)
            self._n_turns += 1
        if isinstance(event, Partial):
            return [json.dumps(self._partial_turn(turn, event))]
        del self._turns[event.segment]
        out = [self._end_of_turn(turn, event, formatted=False)]
        if self.format_turns:
            out.append(self._end_of_turn(turn, event, formatted=True))
        return [json.dumps(message) for message in out]

    def _partial_turn(self, turn: _Turn, event: Partial) -> dict[str, Any]:
        # the last stable word may still gain punctuation or a suffix; with speaker labels, words wait for their final
        ready = [] if self.speech.diarize else event.words[: max(0, len(event.words) - 1)]
        turn.final += ready[len(turn.final):]
        waiting = event.words[len(turn.final):]
        known = (turn.final + waiting)[-1].end if turn.final or waiting else event.start
        final = [_wire(w, _plain(w.word), True) for w in turn.final]
        rest = [_wire(w, _plain(w.word), False) for w in waiting + _unstable(event, known)]
        message = self._turn(turn, final, [w for w in final + rest if w["text"]], end_of_turn=False)
        if self.speech.diarize:
            message["speaker_label"] = None  # the speakers come with the final
        return message

    def _end_of_turn(self, turn: _Turn, event: Final, formatted: bool) -> dict[str, Any]:
        # the words sent as final keep their times; the final's own go after them
        words = []
        for k, word in enumerate(turn.final + event.words[len(turn.final):]):
            own = event.words[k] if k < len(event.words) else word
            speaker = _letter(own.speaker) if self.speech.diarize and own.speaker else None
            words.append(_wire(word, own.word if formatted else _plain(word.word), True, speaker))
        message = self._turn(turn, [w for w in words if w["text"]], end_of_turn=True, formatted=formatted,
                             transcript=event.text if formatted else None)
        if self.speech.diarize:
            message["speaker_label"] = _letter(event.speaker) if event.speaker else None
        if self.language_detection:
            # captioner's events carry the language detected, not how sure the detection was
            message["language_code"], message["language_confidence"] = event.language, None
        return message

    def _turn(self, turn: _Turn, final: list[dict[str, Any]], words: list[dict[str, Any]] | None = None,
              end_of_turn: bool = False, formatted: bool = False, transcript: str | None = None) -> dict[str, Any]:
        """A Turn message; its transcript is the text of its final words (unless given)."""
        if transcript is None:
            transcript = " ".join(w["text"] for w in final if w["text"])
        return {"type": "Turn", "turn_order": turn.order, "turn_is_formatted": formatted, "end_of_turn": end_of_turn,
                "transcript": transcript, "end_of_turn_confidence": 1.0 if end_of_turn else 0.0,
                "words": final if words is None else words, "utterance": transcript if end_of_turn else ""}

    def done(self, audio_s: float) -> list[str]:
        return [json.dumps({"type": "Termination", "audio_duration_seconds": round(audio_s),
                            "session_duration_seconds": round(time.monotonic() - self._started)})]

    def error_message(self, error: ProtocolError) -> str:
        code = self.close_code(error)
        if isinstance(error, Throttled):  # not an end: an Error message would make AssemblyAI's SDK close
            return json.dumps({"type": "Warning", "warning_code": code, "warning": str(error)})
        return json.dumps({"type": "Error", "error_code": code, "error": str(error)})

    def close_code(self, error: Exception) -> int:
        """AssemblyAI's code for an error (ERROR_CODES), 3005 for anything else."""
        return next((code for kind, code in ERROR_CODES.items() if isinstance(error, kind)), SERVER_ERROR)


def _keyterms(value: str | None) -> list[str]:
    """keyterms_prompt: a JSON array of phrases (as the SDK sends it). Raises BadRequest(bad_parameter)."""
    if not value:
        return []
    try:
        terms = parse_json(value, 2, "bad_parameter")
    except BadRequest:
        raise BadRequest("keyterms_prompt must be a JSON array of phrases", "bad_parameter") from None
    return _keyterm_list(terms, "bad_parameter")


def _keyterm_list(terms: object, code: str) -> list[str]:
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        raise BadRequest("keyterms_prompt must be an array of phrases", code)
    return terms


def _silence_s(min_ms: str | None, max_ms: str | None) -> float | None:
    """The stream's endpointing silence: captioner ends a turn on silence alone, whatever the model's confidence,
    which is AssemblyAI's max_turn_silence; without it, min_turn_silence; without either, the server's."""
    bounds = {}
    for name, value in (("min_turn_silence", min_ms), ("max_turn_silence", max_ms)):
        if value:
            bounds[name] = parse_number(value, name, 0, MAX_TURN_SILENCE_MS, "bad_parameter")
    if len(bounds) == 2 and bounds["min_turn_silence"] > bounds["max_turn_silence"]:
        raise BadRequest("min_turn_silence must not be over max_turn_silence", "bad_parameter")
    chosen = bounds.get("max_turn_silence", bounds.get("min_turn_silence"))
    return None if chosen is None else max(MIN_SILENCE_S, chosen / 1000)


def _unstable(event: Partial, start: float) -> list[Word]:
    """The words of a partial's text after its stable text, with times spread over the audio after `start`
    (the model gives them none yet)."""
    rest = event.text[len(event.stable):] if event.text.startswith(event.stable) else ""
    texts = rest.split()
    step = max(0.0, event.end - start) / max(1, len(texts))
    return [Word(text, start + k * step, start + (k + 1) * step, 0.0) for k, text in enumerate(texts)]


def _plain(word: str) -> str:
    """An unformatted word: lower-cased, without punctuation at its edges ("" for punctuation only)."""
    return word.strip(PUNCTUATION).lower()


def _letter(label: str) -> str:
    """AssemblyAI's speaker label of captioner's: "S1" -> "A", "S26" -> "Z", "S27" -> "AA"."""
    n, letters = speaker_number(label) + 1, ""
    while n:
        n, k = divmod(n - 1, 26)
        letters = chr(ord("A") + k) + letters
    return letters


def _wire(word: Word, text: str, final: bool, speaker: str | None = None) -> dict[str, Any]:
    out = {"start": round(word.start * 1000), "end": round(word.end * 1000), "confidence": word.probability,
           "text": text, "word_is_final": final}
    if speaker is not None:
        out["speaker"] = speaker
    return out
