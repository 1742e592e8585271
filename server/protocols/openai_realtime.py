"""OpenAI's Realtime API in transcription mode at /v1/realtime?intent=transcription (docs/protocol.md).

Audio comes base64-encoded in `input_audio_buffer.append` events; `session.update` (or the beta
`transcription_session.update`) configures the stream before its first audio. Mapping of captioner's events:
- with `server_vad` turn detection (the default) each captioner segment is an item: its first event
  sends `input_audio_buffer.speech_started`, its stable words go out as transcription deltas (the last
  stable word waits, as punctuation may still attach), and its final sends `speech_stopped`,
  `committed`, the last delta and `completed`;
- with `turn_detection: null` the client's commit ends the turn: `committed` at once, `completed`
  once the turn's last final is in (finals that end inside a turn, at the length limit, are joined).
Deltas are append-only: an item's deltas concatenate to its completed transcript, by construction.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from captioner.server.errors import BadRequest, ProtocolError, Throttled, Unauthorized
from captioner.stream.events import Event, Final, Partial
from captioner.stream.jobs import AUTO

from ..auth import Grant, TokenTable
from .base import Audio, Command, Flush, Options, Protocol, Refusal, Reply, http_status, parse_rate
from .codec import WholeSamples
from .parse import Request, parse_json, parse_number

__all__ = ["OpenAIRealtimeProtocol"]

PCM_RATE = 24000  # OpenAI's audio/pcm rate (other rates from 8 kHz to 48 kHz are accepted as an extension)
G711_RATE = 8000
FORMATS = {"audio/pcm": "s16le", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-transcribe", "gpt-live-transcribe",
                 "gpt-realtime-whisper")
_VERSIONED = re.compile(r"(.+?)(-\d{4}-\d{2}-\d{2}|-latest)?")
_PROMPT_ITEMS = re.compile(r"[,\n;]")
MAX_PROMPT_ITEM_WORDS = 4  # a longer comma/newline-separated piece of a prompt is free text, not a keyword
DEFAULT_SILENCE_MS = 500  # OpenAI's default, and the stream's (StreamConfig.silence_s)
MAX_SILENCE_MS = 60_000
NO_ENDPOINTING_S = 3600.0  # turn_detection null: segments end at the client's commit or the length limit
MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less audio
BOUNDARY_SLACK_S = 0.1  # a segment's first event up to this far past a commit or clear still belongs before it
CONTENT_INDEX = 0
UNSUPPORTED_EVENTS = ("conversation.item.create", "conversation.item.delete", "conversation.item.retrieve",
                      "conversation.item.truncate", "response.create", "response.cancel", "output_audio_buffer.clear")


class _Invalid(Exception):
    """A client event the session refuses: it gets an error event and changes nothing."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class _Vad:
    """server_vad turn detection as configured (only silence_duration_ms is used: see docs/protocol.md)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int | None = None  # None: the server's endpointing silence


@dataclass(frozen=True)
class _Session:
    """A transcription session's configuration, as the client set it."""

    format: str = "audio/pcm"
    rate: int = PCM_RATE
    model: str | None = None  # None: the served model's own name
    language: str | None = None
    languages: tuple[str, ...] = ()
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    vad: _Vad | None = field(default_factory=_Vad)  # None: turns committed by the client


class _State(Enum):
    OPEN = "open"  # speech goes on in it; not committed
    COMMITTED = "committed"  # committed, its completed not yet sent
    DONE = "done"  # completed sent
    CLEARED = "cleared"  # dropped by input_audio_buffer.clear


@dataclass
class _Turn:
    """One item: the audio of a turn and the transcript sent for it so far."""

    item_id: str
    start_s: float  # audio seconds from the stream start
    end_s: float = 0.0
    state: _State = _State.OPEN
    text: str = ""  # its deltas, concatenated


@dataclass
class _Segment:
    turn: _Turn | None  # None: cleared, its events are dropped
    n_sent: int = 0  # its words sent as deltas


class OpenAIRealtimeProtocol(Protocol):
    name = "openai-realtime"
    lazy_open = True  # the format and the turn detection come in session.update, before the audio

    def __init__(self, request: Request, options: Options) -> None:
        super().__init__(request, options)
        self.session_id = _new_id("sess_")
        self.beta = "realtime=v1" in request.headers.get("openai-beta", "")
        self.config = _Session()
        self.sample_rate = PCM_RATE
        self._samples: WholeSamples | None = None  # made with the first audio, once the format is fixed
        self._audio_s = 0.0  # audio appended, seconds
        self._buffer_start_s = 0.0  # where the uncommitted audio starts
        self._open: _Turn | None = None  # turn_detection null: the turn not yet committed
        self._boundaries: deque[tuple[float, _Turn]] = deque()  # (audio s, turn committed or cleared there)
        self._segments: dict[int, _Segment] = {}  # open segments by id
        self._previous_item: str | None = None  # the last committed item

    @property
    def manual(self) -> bool:
        return self.config.vad is None

    # -- handshake ------------------------------------------------------------------------------

    def presented_token(self) -> str | None:
        for offered in self.request.subprotocols:  # browsers: ["realtime", "openai-insecure-api-key.KEY"]
            if offered.startswith("openai-insecure-api-key."):
                return offered.removeprefix("openai-insecure-api-key.")
        return super().presented_token()

    def subprotocol(self) -> str | None:
        return "realtime" if "realtime" in self.request.subprotocols else None

    def authenticate(self, tokens: TokenTable) -> Grant:
        try:
            return super().authenticate(tokens)
        except Unauthorized as e:
            message = "The client secret has expired." if e.code == "expired" else "Incorrect API key provided."
            raise Unauthorized(message, "invalid_api_key") from None

    def configure(self) -> None:
        intent = self.request.query.get("intent")
        if intent != "transcription":
            raise BadRequest("only transcription sessions are served: connect with ?intent=transcription",
                             "invalid_intent")
        self._apply(self.config)

    def refuse(self, error: ProtocolError) -> Refusal:
        status = http_status(error)
        body = {"error": {"message": str(error), "type": "server_error" if status >= 500 else "invalid_request_error",
                          "param": None, "code": error.code}}
        return Refusal(status, error, super().refuse(error).headers, json.dumps(body).encode(), "application/json")

    # -- client events --------------------------------------------------------------------------

    def greeting(self) -> list[str]:
        kind = "transcription_session.created" if self.beta else "session.created"
        return [self._message(kind, session=self._session_object())]

    def receive_binary(self, data: bytes) -> list[Command]:
        return [self._error(_Invalid("binary messages are not part of this protocol: send input_audio_buffer.append",
                                     code="invalid_event"))]

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        if throttled:
            return []  # the connection tells the client (error_message)
        event_id = None
        try:
            try:
                event = parse_json(text, self.options.max_json_depth)
            except BadRequest:
                raise _Invalid("the event is not valid JSON", code="invalid_json") from None
            if not isinstance(event, dict):
                raise _Invalid("an event must be a JSON object", code="invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            return self._dispatch(event)
        except _Invalid as e:
            return [self._error(e, event_id)]

    def _dispatch(self, event: dict[str, Any]) -> list[Command]:
        kind = event.get("type")
        if kind is None:
            raise _Invalid("the 'type' field is missing", "type", "invalid_event")
        if kind == "input_audio_buffer.append":
            return self._append(event.get("audio"))
        if kind == "session.update":
            return self._update(_session_field(event), beta=False)
        if kind == "transcription_session.update":
            return self._update(_from_beta(_session_field(event)), beta=True)
        if kind == "input_audio_buffer.commit":
            return self._commit()
        if kind == "input_audio_buffer.clear":
            return self._clear()
        if kind in UNSUPPORTED_EVENTS:
            raise _Invalid(f"{kind} is not supported in a transcription session", "type", "invalid_event")
        raise _Invalid(f"unknown event type {str(kind)[:60]!r}", "type", "invalid_event")

    def _append(self, audio: object) -> list[Command]:
        if not isinstance(audio, str):
            raise _Invalid("audio must be a base64 string", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid("audio is not valid base64", "audio") from None
        if self._samples is None:
            self._samples = WholeSamples(self.bytes_per_sample)
        data = self._samples.take(data)
        if not data:
            return []
        pcm = self.decode(data)
        self._audio_s += len(pcm) / self.sample_rate
        return [Audio(pcm)]

    def _update(self, session: dict[str, Any], beta: bool) -> list[Command]:
        config = _merged(self.config, session)
        previous = (self.config, self.speech, self.sample_rate, self.encoding, self.silence_s)
        self._apply(config)
        if self._audio_s > 0 and previous[1:] != (self.speech, self.sample_rate, self.encoding, self.silence_s):
            self.config, self.speech, self.sample_rate, self.encoding, self.silence_s = previous
            raise _Invalid("the audio format, turn detection, model, language and prompt can change only before "
                           "the first audio", "session", "session_locked")
        kind = "transcription_session.updated" if beta else "session.updated"
        return [Reply(self._message(kind, session=self._session_object(beta)))]

    def _apply(self, config: _Session) -> None:
        """Set the stream's parameters from a configuration, or raise _Invalid (nothing changed)."""
        param = "session.audio.input.transcription"
        if config.model is not None and not _served(config.model, self.options.model_name):
            raise _Invalid(f"model {config.model[:60]!r} is not served here; use {self.options.model_name} or one of "
                           f"{', '.join(MODEL_ALIASES)}", f"{param}.model")
        language = config.language.split("-")[0].lower() if config.language else None
        if language is None and config.languages:
            language = config.languages[0].split("-")[0].lower() if len(config.languages) == 1 else AUTO
        if language is None and len(self.options.languages) > 1:
            language = AUTO
        try:
            self.choose_speech(language, None, "invalid_value", [*config.keywords, *_prompt_keywords(config.prompt)])
        except BadRequest as e:
            raise _Invalid(str(e), f"{param}.language" if e.code == "invalid_value" else f"{param}.prompt") from None
        self.config = config
        self.encoding = FORMATS[config.format]  # type: ignore[assignment]
        self.sample_rate = config.rate
        if config.vad is None:
            self.silence_s = NO_ENDPOINTING_S
        else:
            silence_ms = config.vad.silence_duration_ms
            self.silence_s = None if silence_ms is None else max(0.1, silence_ms / 1000)

    def _commit(self) -> list[Command]:
        buffered = self._audio_s - self._buffer_start_s
        if buffered < MIN_COMMIT_S:
            raise _Invalid(f"the input audio buffer holds {buffered * 1000:.0f} ms of audio; a commit needs at least "
                           f"{MIN_COMMIT_S * 1000:.0f} ms", None, "input_audio_buffer_commit_empty")
        if not self.manual:
            self._buffer_start_s = self._audio_s
            return [Flush()]  # the open segment ends: its final is the item, as with a server turn
        turn = self._open_turn()
        turn.end_s = self._buffer_start_s = self._audio_s
        self._boundaries.append((self._audio_s, turn))
        self._open = None
        return [Reply(json.dumps(self._committed(turn))), Flush()]

    def _clear(self) -> list[Command]:
        """Drop the uncommitted audio's transcript: its segments end now and their later events are not sent
        (audio already handed to the model is not unsent, and deltas already sent stay sent)."""
        cleared = _Turn("", self._buffer_start_s, self._audio_s, _State.CLEARED)
        for segment in self._segments.values():
            if segment.turn is not None and segment.turn.state is _State.OPEN:
                segment.turn.state = _State.CLEARED
        if self._open is not None:
            self._open.state = _State.CLEARED
            self._open = None
        self._boundaries.append((self._audio_s, cleared))
        self._buffer_start_s = self._audio_s
        return [Reply(self._message("input_audio_buffer.cleared")), Flush()]

    # -- captioner events -----------------------------------------------------------------------

    def event(self, event: Event) -> list[str]:
        out: list[dict[str, Any]] = []
        segment = self._segments.get(event.segment)
        if segment is None:
            segment = self._segments[event.segment] = _Segment(self._owner(event, out))
            if segment.turn is not None and not self.manual:
                out.append(self._event("input_audio_buffer.speech_started", audio_start_ms=_ms(event.start),
                                       item_id=segment.turn.item_id))
        turn = segment.turn
        if turn is not None and turn.state is _State.CLEARED:
            turn = segment.turn = None
        if isinstance(event, Partial):
            ready = event.stable.split()[:-1]  # the last stable word may still gain punctuation
            if turn is not None and len(ready) > segment.n_sent:
                out += self._delta(turn, ready[segment.n_sent :])
                segment.n_sent = len(ready)
        else:
            del self._segments[event.segment]
            if turn is not None:
                out += self._final(event, segment, turn)
        return [json.dumps(message) for message in out]

    def _owner(self, event: Event, out: list[dict[str, Any]]) -> _Turn | None:
        """The turn of a segment, from its first event; completes the committed turns that it shows are over."""
        while self._boundaries and event.end > self._boundaries[0][0] + BOUNDARY_SLACK_S:
            out += self._complete(self._boundaries.popleft()[1])
        if self._boundaries:  # before the oldest commit or clear still pending
            turn = self._boundaries[0][1]
            if turn.state is _State.CLEARED:
                return None
            if turn.state is _State.COMMITTED:
                return turn
            # completed already (a final cut at the length limit that came after the commit): an item of its own
            late = _Turn(_new_id("item_"), event.start, turn.end_s, _State.COMMITTED)
            out.append(self._committed(late))
            return late
        return self._open_turn() if self.manual else _Turn(_new_id("item_"), event.start)

    def _final(self, final: Final, segment: _Segment, turn: _Turn) -> list[dict[str, Any]]:
        out = self._delta(turn, final.text.split()[segment.n_sent :])
        if not self.manual and turn.state is _State.OPEN:
            turn.end_s = final.end
            out[:0] = [self._event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(final.end),
                                   item_id=turn.item_id), self._committed(turn)]
            return out + self._complete(turn)
        if turn.state is _State.COMMITTED:  # its last final (its boundary stays, for late segments: _owner)
            if any(pending is turn for _, pending in self._boundaries):
                while self._boundaries[0][1] is not turn:  # the commits before it are over too
                    out += self._complete(self._boundaries.popleft()[1])
            out += self._complete(turn)
        return out

    def _delta(self, turn: _Turn, words: list[str]) -> list[dict[str, Any]]:
        if not words:
            return []
        delta = (" " if turn.text else "") + " ".join(words)
        turn.text += delta
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=turn.item_id,
                            content_index=CONTENT_INDEX, delta=delta)]

    def _committed(self, turn: _Turn) -> dict[str, Any]:
        if turn.state is _State.OPEN:
            turn.state = _State.COMMITTED
        previous, self._previous_item = self._previous_item, turn.item_id
        return self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=turn.item_id)

    def _complete(self, turn: _Turn) -> list[dict[str, Any]]:
        if turn.state is not _State.COMMITTED:
            return []
        turn.state = _State.DONE
        usage = {"type": "duration", "seconds": round(max(0.0, turn.end_s - turn.start_s), 3)}
        return [self._event("conversation.item.input_audio_transcription.completed", item_id=turn.item_id,
                            content_index=CONTENT_INDEX, transcript=turn.text, usage=usage)]

    def _open_turn(self) -> _Turn:
        if self._open is None:
            self._open = _Turn(_new_id("item_"), self._buffer_start_s)
        return self._open

    def done(self, audio_s: float) -> list[str]:
        """Every final is in: the commits still waiting complete, and a turn not committed is committed (its
        transcript would otherwise be lost)."""
        out: list[dict[str, Any]] = []
        while self._boundaries:
            out += self._complete(self._boundaries.popleft()[1])
        if self._open is not None and self._open.text:
            self._open.end_s = self._audio_s
            out += [self._committed(self._open), *self._complete(self._open)]
            self._open = None
        return [json.dumps(message) for message in out]

    def error_message(self, error: ProtocolError) -> str:
        kind = "server_error" if error.code == "internal" or http_status(error) >= 500 else "invalid_request_error"
        if isinstance(error, Throttled):
            kind = "rate_limit_error"
        return self._message("error", error={"type": kind, "code": error.code, "message": str(error), "param": None,
                                             "event_id": None})

    # -- messages -------------------------------------------------------------------------------

    def _error(self, error: _Invalid, event_id: str | None = None) -> Reply:
        return Reply(self._message("error", error={"type": "invalid_request_error", "code": error.code,
                                                   "message": str(error), "param": error.param, "event_id": event_id}))

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": _new_id("event_"), **fields}

    def _message(self, kind: str, **fields: Any) -> str:
        return json.dumps(self._event(kind, **fields))

    def _session_object(self, beta: bool | None = None) -> dict[str, Any]:
        """The effective configuration, in the GA shape (or the beta one)."""
        config = self.config
        transcription = {"model": config.model or self.options.model_name, "language": config.language,
                         "prompt": config.prompt}
        if config.keywords:
            transcription["keywords"] = list(config.keywords)
        if config.languages:
            transcription["languages"] = list(config.languages)
        vad = None if config.vad is None else {
            "type": "server_vad", "threshold": config.vad.threshold, "prefix_padding_ms": config.vad.prefix_padding_ms,
            "silence_duration_ms": config.vad.silence_duration_ms or DEFAULT_SILENCE_MS}
        if self.beta if beta is None else beta:
            beta_format = next(name for name, ga in BETA_FORMATS.items() if ga == config.format)
            return {"id": self.session_id, "object": "realtime.transcription_session",
                    "input_audio_format": beta_format, "input_audio_transcription": transcription,
                    "turn_detection": vad, "input_audio_noise_reduction": None, "include": None}
        audio_format: dict[str, Any] = {"type": config.format}
        if config.format == "audio/pcm":
            audio_format["rate"] = config.rate
        return {"type": "transcription", "object": "realtime.transcription_session", "id": self.session_id,
                "audio": {"input": {"format": audio_format, "noise_reduction": None, "transcription": transcription,
                                    "turn_detection": vad}},
                "include": None}


# -- session.update --------------------------------------------------------------------------------


def _session_field(event: dict[str, Any]) -> dict[str, Any]:
    session = event.get("session")
    if not isinstance(session, dict):
        raise _Invalid("session must be an object", "session", "invalid_type")
    return session


def _from_beta(session: dict[str, Any]) -> dict[str, Any]:
    """A beta transcription_session.update's session in the GA shape."""
    audio_input: dict[str, Any] = {}
    if "input_audio_format" in session:
        beta_format = session["input_audio_format"]
        if beta_format not in BETA_FORMATS:
            raise _Invalid(f"input_audio_format must be one of {', '.join(BETA_FORMATS)}", "session.input_audio_format")
        audio_input["format"] = {"type": BETA_FORMATS[beta_format]}
    for beta_name, name in (("input_audio_transcription", "transcription"), ("turn_detection", "turn_detection")):
        if beta_name in session:
            audio_input[name] = session[beta_name]
    return {"type": "transcription", "audio": {"input": audio_input}}


def _merged(config: _Session, session: dict[str, Any]) -> _Session:
    """The configuration with a session.update's fields applied (those absent are kept). Raises _Invalid."""
    if session.get("type", "transcription") != "transcription":
        raise _Invalid("only transcription sessions are served here (session.type must be 'transcription')",
                       "session.type")
    audio = _object(session.get("audio"), "session.audio")
    audio_input = _object(audio.get("input"), "session.audio.input")
    if "format" in audio_input:
        config = _with_format(config, _object(audio_input["format"], "session.audio.input.format"))
    if "transcription" in audio_input:
        config = _with_transcription(config, _object(audio_input["transcription"],
                                                     "session.audio.input.transcription"))
    if "turn_detection" in audio_input:
        config = replace(config, vad=_vad(audio_input["turn_detection"], config.vad))
    return config


def _object(value: object, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(f"{param} must be an object", param, "invalid_type")
    return value


def _with_format(config: _Session, audio_format: dict[str, Any]) -> _Session:
    kind = audio_format.get("type", "audio/pcm")
    if kind not in FORMATS:
        raise _Invalid(f"format {str(kind)[:40]!r} is not supported ({', '.join(FORMATS)})",
                       "session.audio.input.format.type")
    if kind != "audio/pcm":
        return replace(config, format=kind, rate=G711_RATE)
    try:
        rate = parse_rate(audio_format.get("rate"), PCM_RATE)
    except BadRequest as e:
        raise _Invalid(str(e), "session.audio.input.format.rate") from None
    return replace(config, format=kind, rate=rate)


def _with_transcription(config: _Session, transcription: dict[str, Any]) -> _Session:
    param = "session.audio.input.transcription"
    changes: dict[str, Any] = {}
    for name in ("model", "language", "prompt"):
        if name in transcription:
            value = transcription[name]
            if value is not None and not isinstance(value, str):
                raise _Invalid(f"{name} must be a string", f"{param}.{name}", "invalid_type")
            changes[name] = value if name != "prompt" else value or ""
    for name in ("keywords", "languages"):
        if name in transcription:
            values = transcription[name] or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _Invalid(f"{name} must be a list of strings", f"{param}.{name}", "invalid_type")
            changes[name] = tuple(values)
    return replace(config, **changes)


def _vad(turn_detection: object, current: _Vad | None) -> _Vad | None:
    """server_vad settings (semantic_vad is served as server_vad), or None for turns committed by the client."""
    if turn_detection is None:
        return None
    param = "session.audio.input.turn_detection"
    if not isinstance(turn_detection, dict):
        raise _Invalid("turn_detection must be an object or null", param, "invalid_type")
    if turn_detection.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
        raise _Invalid("turn_detection.type must be server_vad (or semantic_vad)", f"{param}.type")
    changes: dict[str, float] = {}
    limits = (("threshold", 1), ("prefix_padding_ms", MAX_SILENCE_MS), ("silence_duration_ms", MAX_SILENCE_MS))
    for name, high in limits:
        if turn_detection.get(name) is not None:
            try:
                number = parse_number(turn_detection[name], name, 0, high, "invalid_value")
            except BadRequest as e:
                raise _Invalid(str(e), f"{param}.{name}") from None
            changes[name] = number if name == "threshold" else int(number)
    return replace(current or _Vad(), **changes)


def _served(model: str, served: str) -> bool:
    """Whether a model name stands for the served model: its own name, or one of OpenAI's (dated or not)."""
    match = _VERSIONED.fullmatch(model)
    return model == served or (match is not None and match.group(1) in MODEL_ALIASES)


def _prompt_keywords(prompt: str) -> list[str]:
    """Keywords from a prompt: its comma-, semicolon- or newline-separated pieces of at most MAX_PROMPT_ITEM_WORDS
    words (whisper-1's "list of keywords" style); longer pieces are free text, which the stream does not use."""
    pieces = (" ".join(piece.split()) for piece in _PROMPT_ITEMS.split(prompt))
    return [piece for piece in pieces if piece and len(piece.split()) <= MAX_PROMPT_ITEM_WORDS]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]
