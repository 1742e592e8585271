"""Exceptions raised by captioner.

    CaptionerError
    ├── ModelError          a checkpoint is missing, unreadable, corrupt or of an unknown kind
    ├── AudioError          an audio file or stream cannot be decoded
    └── ProtocolError       a client broke the streaming protocol (raised in captioner.server)
        ├── BadRequest      bad parameters or malformed data (close 1003)
        ├── Unauthorized    missing or wrong token (close 1008)
        ├── MessageTooBig   a frame over the size limit (close 1009)
        └── Overloaded      over capacity, retry later (close 1013)

Errors carry a short `code` slug that the server sends to clients.
"""

from __future__ import annotations

__all__ = [
    "CaptionerError",
    "ModelError",
    "AudioError",
    "ProtocolError",
    "BadRequest",
    "Unauthorized",
    "MessageTooBig",
    "Overloaded",
]


class CaptionerError(Exception):
    """Base class of every error captioner raises on purpose."""

    code = "error"


class ModelError(CaptionerError):
    """A checkpoint cannot be loaded."""

    code = "model"


class AudioError(CaptionerError):
    """Audio cannot be read or decoded."""

    code = "bad_audio"


class ProtocolError(CaptionerError):
    """A client broke the protocol; `code` is the slug sent in the error message."""

    code = "protocol"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(ProtocolError):
    code = "bad_request"


class Unauthorized(ProtocolError):
    code = "unauthorized"


class MessageTooBig(ProtocolError):
    code = "too_big"

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"frame of {size} bytes is over the limit of {max_size} bytes")
        self.size = size
        self.max_size = max_size


class Overloaded(ProtocolError):
    code = "overloaded"
