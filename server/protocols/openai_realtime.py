"""OpenAI's Realtime API in transcription mode at /v1/realtime?intent=transcription (docs/protocol.md).

Audio comes base64-encoded in `input_audio_buffer.append` events; `session.update` (or the beta
`transcription_session.update`) configures the stream before its first audio (openai_session.py).
`Items` maps captioner's events to items:
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
import uuid
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from captioner.server.errors import BadRequest, ProtocolError, Throttled, Unauthorized
from captioner.stream.events import Event, Final, Partial
from captioner.stream.jobs import AUTO, Speech

from ..auth import Grant, TokenTable
from .base import Audio, Command, Flush, Options, Protocol, Refusal, Reply, choose_speech, http_status
from .codec import Encoding, WholeSamples
from .openai import MODEL_ALIASES, model_known, prompt_keywords
from .openai_session import FORMATS, PCM_RATE, InvalidEvent, SessionConfig, session_object, updated
from .parse import Request, parse_json

__all__ = ["OpenAIRealtimeProtocol", "Items"]

APPEND = "input_audio_buffer.append"
NO_ENDPOINTING_S = 3600.0  # turn_detection null: segments end at the client's commit or the length limit
MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less audio
BOUNDARY_SLACK_S = 0.1  # a segment's first event up to this far past a commit or clear still belongs before it
CONTENT_INDEX = 0
UNSUPPORTED_EVENTS = ("conversation.item.create", "conversation.item.delete", "conversation.item.retrieve",
                      "conversation.item.truncate", "response.create", "response.cancel", "output_audio_buffer.clear")


@dataclass(frozen=True)
class _Stream:
    """What a configuration sets of the stream (fixed once audio flows)."""

    speech: Speech
    sample_rate: int
    encoding: Encoding
    silence_s: float | None  # None: the server's endpointing silence


class OpenAIRealtimeProtocol(Protocol):
    name = "openai-realtime"
    lazy_open = True  # the format and the turn detection come in session.update, before the audio

    def __init__(self, request: Request, options: Options) -> None:
        super().__init__(request, options)
        self.session_id = new_id("sess_")
        self.beta = "realtime=v1" in request.headers.get("openai-beta", "")
        self.config = SessionConfig()
        self.sample_rate = PCM_RATE
        self.items = Items()
        self._samples: WholeSamples | None = None  # made with the first audio, once the format is fixed
        self._checked: tuple[str, bytes] | None = None  # the message audio_message last called audio, its audio

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
        self._set(self.config, self._stream(self.config))

    def refuse(self, error: ProtocolError) -> Refusal:
        status = http_status(error)
        body = {"error": {"message": str(error), "type": "server_error" if status >= 500 else "invalid_request_error",
                          "param": None, "code": error.code}}
        return Refusal(status, error, super().refuse(error).headers, json.dumps(body).encode(), "application/json")

    # -- client events --------------------------------------------------------------------------

    def greeting(self) -> list[str]:
        kind = "transcription_session.created" if self.beta else "session.created"
        return [self._message(kind, session=self._session())]

    def receive_binary(self, data: bytes) -> list[Command]:
        return [self._error(InvalidEvent(f"binary messages are not part of this protocol: send {APPEND}",
                                         code="invalid_event"))]

    def audio_message(self, text: str) -> bool:
        """Whether a text message is an input_audio_buffer.append of base64 audio (not empty): all it does is
        append that audio. Its decoded audio is kept for receive_text, called next with the same message."""
        self._checked = None
        try:
            event = _parsed(text, self.options.max_json_depth)
            if event.get("type") == APPEND and (data := _decoded(event.get("audio"))):
                self._checked = (text, data)
        except InvalidEvent:
            pass
        return self._checked is not None

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        checked, self._checked = self._checked, None
        if throttled:
            return []  # the connection tells the client (error_message)
        if checked is not None and checked[0] is text:
            return self._append(checked[1])
        event_id = None
        try:
            event = _parsed(text, self.options.max_json_depth)
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            return self._dispatch(event)
        except InvalidEvent as e:
            return [self._error(e, event_id)]

    def _dispatch(self, event: dict[str, Any]) -> list[Command]:
        kind = event.get("type")
        if kind is None:
            raise InvalidEvent("the 'type' field is missing", "type", "invalid_event")
        if kind == APPEND:
            return self._append(_decoded(event.get("audio")))
        if kind in ("session.update", "transcription_session.update"):
            return self._update(event, beta=kind == "transcription_session.update")
        if kind == "input_audio_buffer.commit":
            return self._commit()
        if kind == "input_audio_buffer.clear":
            self.items.clear()
            return [Reply(self._message("input_audio_buffer.cleared")), Flush()]
        if kind in UNSUPPORTED_EVENTS:
            raise InvalidEvent(f"{kind} is not supported in a transcription session", "type", "invalid_event")
        raise InvalidEvent(f"unknown event type {str(kind)[:60]!r}", "type", "invalid_event")

    def _append(self, data: bytes) -> list[Command]:
        if self._samples is None:
            self._samples = WholeSamples(self.bytes_per_sample)
        data = self._samples.take(data)
        if not data:
            return []
        pcm = self.decode(data)
        self.items.audio_s += len(pcm) / self.sample_rate
        return [Audio(pcm)]

    def _update(self, event: dict[str, Any], beta: bool) -> list[Command]:
        config = updated(self.config, event, beta)
        stream = self._stream(config)
        if self.items.audio_s > 0 and stream != _Stream(self.speech, self.sample_rate, self.encoding, self.silence_s):
            raise InvalidEvent("the audio format, turn detection, model, language and prompt can change only before "
                               "the first audio", "session", "session_locked")
        self._set(config, stream)
        kind = "transcription_session.updated" if beta else "session.updated"
        return [Reply(self._message(kind, session=self._session(beta)))]

    def _stream(self, config: SessionConfig) -> _Stream:
        """What a configuration sets of the stream; raises InvalidEvent for what is not served."""
        param = "session.audio.input.transcription"
        if config.model is not None and not model_known(config.model, self.options.model_name):
            raise InvalidEvent(f"model {config.model[:60]!r} is not served here; use {self.options.model_name} or "
                               f"one of {', '.join(MODEL_ALIASES)}", f"{param}.model")
        language = config.language.split("-")[0].lower() if config.language else None
        if language is None and config.languages:
            language = config.languages[0].split("-")[0].lower() if len(config.languages) == 1 else AUTO
        if language is None and len(self.options.languages) > 1:
            language = AUTO
        try:
            speech = choose_speech(self.options, language, None, "invalid_value",
                                   [*config.keywords, *prompt_keywords(config.prompt)])
        except BadRequest as e:
            raise InvalidEvent(str(e), f"{param}.language" if e.code == "invalid_value" else f"{param}.prompt") \
                from None
        if config.vad is None:
            silence_s: float | None = NO_ENDPOINTING_S
        else:
            silence_ms = config.vad.silence_duration_ms
            silence_s = None if silence_ms is None else max(0.1, silence_ms / 1000)
        return _Stream(speech, config.rate, FORMATS[config.format], silence_s)  # type: ignore[arg-type]

    def _set(self, config: SessionConfig, stream: _Stream) -> None:
        self.config = config
        self.speech, self.sample_rate, self.encoding, self.silence_s = (stream.speech, stream.sample_rate,
                                                                        stream.encoding, stream.silence_s)
        self.items.manual = self.manual

    def _commit(self) -> list[Command]:
        buffered = self.items.buffered_s
        if buffered < MIN_COMMIT_S:
            raise InvalidEvent(f"the input audio buffer holds {buffered * 1000:.0f} ms of audio; a commit needs at "
                               f"least {MIN_COMMIT_S * 1000:.0f} ms", None, "input_audio_buffer_commit_empty")
        return [*(Reply(json.dumps(message)) for message in self.items.commit()), Flush()]

    # -- captioner events -----------------------------------------------------------------------

    def event(self, event: Event) -> list[str]:
        return [json.dumps(message) for message in self.items.event(event)]

    def done(self, audio_s: float) -> list[str]:
        return [json.dumps(message) for message in self.items.done()]

    def error_message(self, error: ProtocolError) -> str:
        kind = "server_error" if error.code == "internal" or http_status(error) >= 500 else "invalid_request_error"
        if isinstance(error, Throttled):
            kind = "rate_limit_error"
        return self._message("error", error={"type": kind, "code": error.code, "message": str(error), "param": None,
                                             "event_id": None})

    # -- messages -------------------------------------------------------------------------------

    def _error(self, error: InvalidEvent, event_id: str | None = None) -> Reply:
        return Reply(self._message("error", error={"type": "invalid_request_error", "code": error.code,
                                                   "message": str(error), "param": error.param, "event_id": event_id}))

    def _message(self, kind: str, **fields: Any) -> str:
        return json.dumps(server_event(kind, **fields))

    def _session(self, beta: bool | None = None) -> dict[str, Any]:
        """The session object, in the shape of the client's API (beta: of the event it answers)."""
        return session_object(self.config, self.session_id, self.options.model_name,
                              self.beta if beta is None else beta)


def _parsed(text: str, max_depth: int) -> dict[str, Any]:
    """A client event: a JSON object nested at most max_depth deep. Raises InvalidEvent."""
    try:
        event = parse_json(text, max_depth)
    except BadRequest:
        raise InvalidEvent("the event is not valid JSON", code="invalid_json") from None
    if not isinstance(event, dict):
        raise InvalidEvent("an event must be a JSON object", code="invalid_event")
    return event


def _decoded(audio: object) -> bytes:
    """An append's audio. Raises InvalidEvent."""
    if not isinstance(audio, str):
        raise InvalidEvent("audio must be a base64 string", "audio")
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent("audio is not valid base64", "audio") from None


# -- items ------------------------------------------------------------------------------------------


class TurnState(Enum):
    OPEN = "open"  # speech goes on in it; not committed
    COMMITTED = "committed"  # committed, its completed not yet sent
    DONE = "done"  # completed sent
    CLEARED = "cleared"  # dropped by input_audio_buffer.clear


@dataclass
class Turn:
    """One item: the audio of a turn and the transcript sent for it so far."""

    item_id: str
    start_s: float  # audio seconds from the stream start
    end_s: float = 0.0
    state: TurnState = TurnState.OPEN
    text: str = ""  # its deltas, concatenated


@dataclass
class _Segment:
    turn: Turn | None  # None: cleared, its events are dropped
    n_sent: int = 0  # its words sent as deltas


class Items:
    """One session's turns (see the module docstring): the input audio buffer's appends, commits and clears and
    captioner's events in, server events (as dicts) out."""

    def __init__(self) -> None:
        self.manual = False  # turns end at the client's commit (turn_detection null), not with each segment
        self.audio_s = 0.0  # audio appended, seconds
        self.buffer_start_s = 0.0  # where the uncommitted audio starts
        self._open: Turn | None = None  # manual: the turn not yet committed
        self._boundaries: deque[tuple[float, Turn]] = deque()  # (audio s, turn committed or cleared there)
        self._segments: dict[int, _Segment] = {}  # open segments by id
        self._previous_item: str | None = None  # the last committed item

    @property
    def buffered_s(self) -> float:
        """The uncommitted audio, seconds."""
        return self.audio_s - self.buffer_start_s

    def commit(self) -> list[dict[str, Any]]:
        """The client commits the buffered audio (the caller checks there is enough, and flushes the open segment:
        with server_vad its final is the item, as with a server turn)."""
        if not self.manual:
            self.buffer_start_s = self.audio_s
            return []
        turn = self._open_turn()
        turn.end_s = self.buffer_start_s = self.audio_s
        self._boundaries.append((self.audio_s, turn))
        self._open = None
        return [self._committed(turn)]

    def clear(self) -> None:
        """Drop the uncommitted audio's transcript: its segments end (the caller flushes them) and their later
        events are not sent (audio already handed to the model is not unsent, and deltas already sent stay sent)."""
        cleared = Turn("", self.buffer_start_s, self.audio_s, TurnState.CLEARED)
        for segment in self._segments.values():
            if segment.turn is not None and segment.turn.state is TurnState.OPEN:
                segment.turn.state = TurnState.CLEARED
        if self._open is not None:
            self._open.state = TurnState.CLEARED
            self._open = None
        self._boundaries.append((self.audio_s, cleared))
        self.buffer_start_s = self.audio_s

    def event(self, event: Event) -> list[dict[str, Any]]:
        """The server events for one of captioner's."""
        out: list[dict[str, Any]] = []
        segment = self._segments.get(event.segment)
        if segment is None:
            segment = self._segments[event.segment] = _Segment(self._owner(event, out))
            if segment.turn is not None and not self.manual:
                out.append(server_event("input_audio_buffer.speech_started", audio_start_ms=_ms(event.start),
                                        item_id=segment.turn.item_id))
        turn = segment.turn
        if turn is not None and turn.state is TurnState.CLEARED:
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
        return out

    def done(self) -> list[dict[str, Any]]:
        """Every final is in: the commits still waiting complete, and a turn not committed is committed (its
        transcript would otherwise be lost)."""
        out: list[dict[str, Any]] = []
        while self._boundaries:
            out += self._complete(self._boundaries.popleft()[1])
        if self._open is not None and self._open.text:
            self._open.end_s = self.audio_s
            out += [self._committed(self._open), *self._complete(self._open)]
            self._open = None
        return out

    def _owner(self, event: Event, out: list[dict[str, Any]]) -> Turn | None:
        """The turn of a segment, from its first event; completes the committed turns that it shows are over."""
        while self._boundaries and event.end > self._boundaries[0][0] + BOUNDARY_SLACK_S:
            out += self._complete(self._boundaries.popleft()[1])
        if self._boundaries:  # before the oldest commit or clear still pending
            turn = self._boundaries[0][1]
            if turn.state is TurnState.CLEARED:
                return None
            if turn.state is TurnState.COMMITTED:
                return turn
            # completed already (a final cut at the length limit that came after the commit): an item of its own
            late = Turn(new_id("item_"), event.start, turn.end_s, TurnState.COMMITTED)
            out.append(self._committed(late))
            return late
        return self._open_turn() if self.manual else Turn(new_id("item_"), event.start)

    def _final(self, final: Final, segment: _Segment, turn: Turn) -> list[dict[str, Any]]:
        out = self._delta(turn, final.text.split()[segment.n_sent :])
        if not self.manual and turn.state is TurnState.OPEN:
            turn.end_s = final.end
            out[:0] = [server_event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(final.end),
                                    item_id=turn.item_id), self._committed(turn)]
            return out + self._complete(turn)
        if turn.state is TurnState.COMMITTED:  # its last final (its boundary stays, for late segments: _owner)
            if any(pending is turn for _, pending in self._boundaries):
                while self._boundaries[0][1] is not turn:  # the commits before it are over too
                    out += self._complete(self._boundaries.popleft()[1])
            out += self._complete(turn)
        return out

    def _delta(self, turn: Turn, words: list[str]) -> list[dict[str, Any]]:
        if not words:
            return []
        delta = (" " if turn.text else "") + " ".join(words)
        turn.text += delta
        return [server_event("conversation.item.input_audio_transcription.delta", item_id=turn.item_id,
                             content_index=CONTENT_INDEX, delta=delta)]

    def _committed(self, turn: Turn) -> dict[str, Any]:
        if turn.state is TurnState.OPEN:
            turn.state = TurnState.COMMITTED
        previous, self._previous_item = self._previous_item, turn.item_id
        return server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=turn.item_id)

    def _complete(self, turn: Turn) -> list[dict[str, Any]]:
        if turn.state is not TurnState.COMMITTED:
            return []
        turn.state = TurnState.DONE
        usage = {"type": "duration", "seconds": round(max(0.0, turn.end_s - turn.start_s), 3)}
        return [server_event("conversation.item.input_audio_transcription.completed", item_id=turn.item_id,
                             content_index=CONTENT_INDEX, transcript=turn.text, usage=usage)]

    def _open_turn(self) -> Turn:
        if self._open is None:
            self._open = Turn(new_id("item_"), self.buffer_start_s)
        return self._open


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event of this type, with a fresh event_id."""
    return {"type": kind, "event_id": new_id("event_"), **fields}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
