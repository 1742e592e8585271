"""What every wire protocol shares: the sans-I/O contract, its results, and the one map of errors to codes.

A protocol object does no I/O, in the manner of python-websockets' `Protocol`: the connection code
(captioner.server.connection) hands it the upgrade request, then each client message and each caption
event, and does what it returns. There is no await, no socket and no back-reference to a connection
in here, so protocols are tested without a server or a model (tests/test_protocol_objects.py).

Life of one protocol object:

1. `handshake(tokens)`: authentication, then parameters, then topic rules; returns `Accept` or a
   `Refusal` (status, headers, body in the protocol's own error format). Admission (capacity) is
   the server's decision; it refuses through `refuse(error)`, so that the body has the same format.
2. `greeting()`: messages to send at once on the upgrade (before any audio, for protocols that open
   their stream on the first audio: `lazy_open`); `opened(session)`: those to send when the stream opens.
3. `receive_text(text)` / `receive_binary(data)`: commands for the session, in order (`Audio`,
   `Flush`, `End`) and messages to send back (`Reply`); a fatal client error raises ProtocolError.
4. `event(event)` per caption event, `done(audio_s)` once at the end: the messages to send.
5. `error_message(error)`: the message sent before closing for an error, if the protocol has one.

Every method raises nothing but ProtocolError, whatever the client sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from captioner.decoder.tokenizer import TASKS
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
from captioner.stream.events import Event
from captioner.stream.jobs import AUTO, Speech, clean_keywords

from ..auth import Grant, TokenTable
from .codec import BYTES_PER_SAMPLE, Encoding, decode_audio
from .parse import Request, parse_number

__all__ = ["Options", "Accept", "Refusal", "Audio", "Flush", "End", "Reply", "Command", "Protocol",
           "close_code", "http_status", "plain_refusal", "parse_rate", "choose_speech", "authorization_key",
           "MIN_RATE", "MAX_RATE"]

MIN_RATE, MAX_RATE = 8000, 48000

# The one map of errors to codes (websockets' Protocol.parse does the same): anything else is ours, 1011 / 500.
CLOSE_CODES: dict[type[ProtocolError], int] = {
    BadRequest: 1003,  # unsupported data
    Unauthorized: 1008,  # policy violation
    Forbidden: 1008,
    Throttled: 1008,
    MessageTooBig: 1009,
    Overloaded: 1013,  # try again later
}
HTTP_STATUSES: dict[type[ProtocolError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    MessageTooBig: 413,
    Throttled: 429,
    Overloaded: 503,
}
NORMAL, GOING_AWAY, POLICY, INTERNAL_CLOSE, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013  # close codes
INTERNAL_STATUS = 500


def close_code(error: Exception) -> int:
    """The WebSocket close code of an error: a client's documented one, 1011 for anything else."""
    return next((code for kind, code in CLOSE_CODES.items() if isinstance(error, kind)), INTERNAL_CLOSE)


def http_status(error: Exception) -> int:
    """The HTTP status that refuses an upgrade for an error: a client's documented one, 500 for anything else."""
    return next((code for kind, code in HTTP_STATUSES.items() if isinstance(error, kind)), INTERNAL_STATUS)


@dataclass(frozen=True)
class Options:
    """What a protocol needs to know of the server."""

    model_name: str = "tiny.en"
    language: str = "en"  # streams' language when the client names none ("auto": detected)
    languages: tuple[str, ...] = ("en",)  # the languages the model knows
    vosk_sample_rate: int = 8000  # Vosk clients that send no config stream at this rate
    max_json_depth: int = 16  # nesting of arrays/objects in a text message
    max_keywords: int = 200  # keywords (words or phrases) per stream
    max_keyword_tokens: int = 1000  # their tokens in all
    count_tokens: Callable[[str], int] = lambda text: len(text.encode())  # the model's count (bytes bound it)
    max_session_wall_s: float = 14_400.0  # the longest a stream may last on the clock (0: unlimited)


@dataclass(frozen=True)
class Accept:
    """Upgrade: with this subprotocol (if any), for a client with this grant."""

    grant: Grant
    subprotocol: str | None = None


@dataclass(frozen=True)
class Refusal:
    """An HTTP response that refuses the upgrade."""

    status: int
    error: ProtocolError
    headers: tuple[tuple[str, str], ...] = ()  # besides Content-Type and Content-Length
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


def plain_refusal(error: ProtocolError) -> Refusal:
    """A text/plain refusal ("code: message"), with Retry-After where the error has one."""
    return Refusal(http_status(error), error, _retry_after(error), f"{error.code}: {error}\n".encode())


def _retry_after(error: ProtocolError) -> tuple[tuple[str, str], ...]:
    retry = getattr(error, "retry_after_s", None)
    return (("Retry-After", str(retry)),) if retry is not None else ()


@dataclass(frozen=True)
class Audio:
    """Samples for the stream, float32 in [-1, 1] at the protocol's sample rate (may be empty: open only)."""

    pcm: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Flush:
    """End the current segment now."""


@dataclass(frozen=True)
class End:
    """No more audio: finalise everything, then done."""


@dataclass(frozen=True)
class Reply:
    """A text message to send to the client now."""

    text: str


Command = Audio | Flush | End | Reply


def parse_rate(value: object, default: int) -> int:
    """A sample rate from a query or a config: a finite number in MIN_RATE-MAX_RATE Hz. Raises BadRequest."""
    if value is None or value == "":
        return default
    return int(parse_number(value, "sample_rate", MIN_RATE, MAX_RATE, "bad_sample_rate"))


def authorization_key(headers: dict[str, str], raw: bool = False) -> str | None:
    """The key of an Authorization header: `Bearer KEY` or `Token KEY`; with raw, a bare key too (AssemblyAI's)."""
    auth = headers.get("authorization", "").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return (auth or None) if raw else None


def choose_speech(options: Options, language: str | None, task: str | None, code: str, keywords: Sequence[str] = (),
                  diarize: bool = False) -> Speech:
    """A stream's or a file's language ("auto": detected; None: the server's), task (None: transcribe), keywords and
    whether its finals get speaker labels, or BadRequest: `code` for what the model does not have, bad_parameter
    for more keywords than allowed."""
    keywords = clean_keywords(keywords)
    if len(keywords) > options.max_keywords:
        raise BadRequest(f"{len(keywords)} keywords; at most {options.max_keywords} are allowed", "bad_parameter")
    n_tokens = sum(options.count_tokens(" " + k) for k in keywords)
    if n_tokens > options.max_keyword_tokens:
        raise BadRequest(f"keywords of {n_tokens} tokens; at most {options.max_keyword_tokens} are allowed",
                         "bad_parameter")
    language = options.language if language is None else language
    task = task or "transcribe"
    if task not in TASKS:
        raise BadRequest(f"task {task[:40]!r} is not one of {', '.join(TASKS)}", code)
    if language != AUTO and language not in options.languages:
        known = "English only" if options.languages == ("en",) else \
            f"{len(options.languages)} languages; see docs/protocol.md"
        raise BadRequest(f"language {language[:40]!r} is not available; model {options.model_name} knows {known}",
                         code)
    if task == "translate" and options.languages == ("en",):
        raise BadRequest(f"model {options.model_name} is English-only; it cannot translate", code)
    return Speech(language, task, keywords, diarize)


class Protocol:
    """One client connection's protocol state; see the module docstring for the order of calls."""

    name = "base"
    lazy_open = False  # the stream opens on the first audio (after an in-band configuration message)
    finals_only = False  # admitted at capacity without partials (server/limits.py), whatever the client asked

    def __init__(self, request: Request, options: Options) -> None:
        self.request = request
        self.options = options
        self.sample_rate = SAMPLE_RATE
        self.encoding: Encoding = "s16le"
        self.silence_s: float | None = None  # endpointing silence for this stream (None: the server's)
        self.speech = Speech(options.language)  # the stream's language and task
        self.topic: str | None = request.query.get("topic") or None  # as requested (?topic=)

    # -- handshake ------------------------------------------------------------------------------

    def presented_token(self) -> str | None:
        return authorization_key(self.request.headers) or self.request.query.get("token")

    def handshake(self, tokens: TokenTable) -> Accept | Refusal:
        """Authentication first, then the parameters, then the topic rules of the client's token."""
        try:
            grant = self.authenticate(tokens)
            self.configure()
            grant.check_topic(self.topic)
        except ProtocolError as e:
            return self.refuse(e)
        return Accept(grant, self.subprotocol())

    def authenticate(self, tokens: TokenTable) -> Grant:
        return tokens.authenticate(self.presented_token())

    def configure(self) -> None:
        """Read and check the stream parameters from the request; raise BadRequest."""

    def choose_speech(self, language: str | None, task: str | None, code: str, keywords: Sequence[str] = (),
                      diarize: bool = False) -> None:
        """Set the stream's speech (see choose_speech, the function); raise BadRequest."""
        self.speech = choose_speech(self.options, language, task, code, keywords, diarize)

    def subprotocol(self) -> str | None:
        return None

    def refuse(self, error: ProtocolError) -> Refusal:
        """The refusal of the upgrade for this error, in the protocol's format."""
        return plain_refusal(error)

    # -- stream ---------------------------------------------------------------------------------

    def greeting(self) -> list[str]:
        return []

    def opened(self, session: str) -> list[str]:
        return []

    def receive_text(self, text: str, throttled: bool = False) -> list[Command]:
        """The commands of a text message. throttled: the stream is over its text message rate; only
        the end of the stream is acted on, and the message changes nothing else."""
        raise BadRequest("text messages are not part of this protocol", "bad_message")

    def audio_message(self, text: str) -> bool:
        """Whether a text message carries audio (and nothing else): such messages are not counted against the text
        message rate; a protocol that says so must act on nothing but their audio."""
        return False

    def receive_binary(self, data: bytes) -> list[Command]:
        return [Audio(self.decode(data))]

    def decode(self, data: bytes) -> np.ndarray:
        return decode_audio(data, self.encoding)

    @property
    def bytes_per_sample(self) -> int:
        return BYTES_PER_SAMPLE[self.encoding]

    def event(self, event: Event) -> list[str]:
        return []

    def done(self, audio_s: float) -> list[str]:
        return []

    def error_message(self, error: ProtocolError) -> str | None:
        return None

    def close_code(self, error: Exception) -> int:
        """The close code for an error: the one map's (close_code), unless the protocol documents its own."""
        return close_code(error)
