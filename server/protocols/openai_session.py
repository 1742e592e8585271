"""An OpenAI Realtime transcription session's configuration: `session.update` (or the beta
`transcription_session.update`) parsed and checked into a `SessionConfig`, and the session object that
`session.created`/`session.updated` send back (docs/protocol.md).

Nothing here touches the stream: the protocol (openai_realtime.py) applies a configuration, or refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from captioner.server.errors import BadRequest

from .base import parse_rate
from .parse import parse_number

__all__ = ["InvalidEvent", "ServerVad", "SessionConfig", "updated", "session_object", "FORMATS", "PCM_RATE"]

PCM_RATE = 24000  # OpenAI's audio/pcm rate (other rates from 8 kHz to 48 kHz are accepted as an extension)
G711_RATE = 8000
FORMATS = {"audio/pcm": "s16le", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}  # OpenAI's name: captioner's encoding
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
DEFAULT_SILENCE_MS = 500  # OpenAI's default, and the stream's (StreamConfig.silence_s)
MAX_SILENCE_MS = 60_000
TRANSCRIPTION = "session.audio.input.transcription"  # the param of its fields' errors


class InvalidEvent(Exception):
    """A client event the session refuses: it gets an error event and changes nothing."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ServerVad:
    """server_vad turn detection as configured (only silence_duration_ms is used: see docs/protocol.md)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int | None = None  # None: the server's endpointing silence


@dataclass(frozen=True)
class SessionConfig:
    """A transcription session's configuration, as the client set it."""

    format: str = "audio/pcm"  # a key of FORMATS
    rate: int = PCM_RATE  # Hz
    model: str | None = None  # None: the served model's own name
    language: str | None = None
    languages: tuple[str, ...] = ()
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    vad: ServerVad | None = field(default_factory=ServerVad)  # None: turns committed by the client


def updated(config: SessionConfig, event: dict[str, Any], beta: bool) -> SessionConfig:
    """The configuration with a session.update's fields applied (those absent are kept; beta: the fields of a
    transcription_session.update). Raises InvalidEvent."""
    session = event.get("session")
    if not isinstance(session, dict):
        raise InvalidEvent("session must be an object", "session", "invalid_type")
    if beta:
        session = _from_beta(session)
    if session.get("type", "transcription") != "transcription":
        raise InvalidEvent("only transcription sessions are served here (session.type must be 'transcription')",
                           "session.type")
    audio = _object(session.get("audio"), "session.audio")
    audio_input = _object(audio.get("input"), "session.audio.input")
    if "format" in audio_input:
        config = _with_format(config, _object(audio_input["format"], "session.audio.input.format"))
    if "transcription" in audio_input:
        config = _with_transcription(config, _object(audio_input["transcription"], TRANSCRIPTION))
    if "turn_detection" in audio_input:
        config = replace(config, vad=_vad(audio_input["turn_detection"], config.vad))
    return config


def session_object(config: SessionConfig, session_id: str, model_name: str, beta: bool) -> dict[str, Any]:
    """The session as session.created/updated show it, in the GA shape (or the beta one); model_name: the served
    model's, shown when the client named none."""
    transcription = {"model": config.model or model_name, "language": config.language, "prompt": config.prompt}
    if config.keywords:
        transcription["keywords"] = list(config.keywords)
    if config.languages:
        transcription["languages"] = list(config.languages)
    vad = None if config.vad is None else {
        "type": "server_vad", "threshold": config.vad.threshold, "prefix_padding_ms": config.vad.prefix_padding_ms,
        "silence_duration_ms": config.vad.silence_duration_ms or DEFAULT_SILENCE_MS}
    if beta:
        beta_format = next(name for name, ga in BETA_FORMATS.items() if ga == config.format)
        return {"id": session_id, "object": "realtime.transcription_session", "input_audio_format": beta_format,
                "input_audio_transcription": transcription, "turn_detection": vad,
                "input_audio_noise_reduction": None, "include": None}
    audio_format: dict[str, Any] = {"type": config.format}
    if config.format == "audio/pcm":
        audio_format["rate"] = config.rate
    return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
            "audio": {"input": {"format": audio_format, "noise_reduction": None, "transcription": transcription,
                                "turn_detection": vad}},
            "include": None}


def _from_beta(session: dict[str, Any]) -> dict[str, Any]:
    """A beta transcription_session.update's session in the GA shape."""
    audio_input: dict[str, Any] = {}
    if "input_audio_format" in session:
        beta_format = session["input_audio_format"]
        if not isinstance(beta_format, str) or beta_format not in BETA_FORMATS:
            raise InvalidEvent(f"input_audio_format must be one of {', '.join(BETA_FORMATS)}",
                               "session.input_audio_format")
        audio_input["format"] = {"type": BETA_FORMATS[beta_format]}
    for beta_name, name in (("input_audio_transcription", "transcription"), ("turn_detection", "turn_detection")):
        if beta_name in session:
            audio_input[name] = session[beta_name]
    return {"type": "transcription", "audio": {"input": audio_input}}


def _object(value: object, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(f"{param} must be an object", param, "invalid_type")
    return value


def _with_format(config: SessionConfig, audio_format: dict[str, Any]) -> SessionConfig:
    kind = audio_format.get("type", "audio/pcm")
    if not isinstance(kind, str) or kind not in FORMATS:
        raise InvalidEvent(f"format {str(kind)[:40]!r} is not supported ({', '.join(FORMATS)})",
                           "session.audio.input.format.type")
    if kind != "audio/pcm":
        return replace(config, format=kind, rate=G711_RATE)
    try:
        rate = parse_rate(audio_format.get("rate"), PCM_RATE)
    except BadRequest as e:
        raise InvalidEvent(str(e), "session.audio.input.format.rate") from None
    return replace(config, format=kind, rate=rate)


def _with_transcription(config: SessionConfig, transcription: dict[str, Any]) -> SessionConfig:
    changes: dict[str, Any] = {}
    for name in ("model", "language", "prompt"):
        if name in transcription:
            value = transcription[name]
            if value is not None and not isinstance(value, str):
                raise InvalidEvent(f"{name} must be a string", f"{TRANSCRIPTION}.{name}", "invalid_type")
            changes[name] = value if name != "prompt" else value or ""
    for name in ("keywords", "languages"):
        if name in transcription:
            values = transcription[name] or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise InvalidEvent(f"{name} must be a list of strings", f"{TRANSCRIPTION}.{name}", "invalid_type")
            changes[name] = tuple(values)
    return replace(config, **changes)


def _vad(turn_detection: object, current: ServerVad | None) -> ServerVad | None:
    """server_vad settings (semantic_vad is served as server_vad), or None for turns committed by the client."""
    if turn_detection is None:
        return None
    param = "session.audio.input.turn_detection"
    if not isinstance(turn_detection, dict):
        raise InvalidEvent("turn_detection must be an object or null", param, "invalid_type")
    if turn_detection.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
        raise InvalidEvent("turn_detection.type must be server_vad (or semantic_vad)", f"{param}.type")
    changes: dict[str, float] = {}
    limits = (("threshold", 1), ("prefix_padding_ms", MAX_SILENCE_MS), ("silence_duration_ms", MAX_SILENCE_MS))
    for name, high in limits:
        if turn_detection.get(name) is not None:
            try:
                number = parse_number(turn_detection[name], name, 0, high, "invalid_value")
            except BadRequest as e:
                raise InvalidEvent(str(e), f"{param}.{name}") from None
            changes[name] = number if name == "threshold" else int(number)
    return replace(current or ServerVad(), **changes)
