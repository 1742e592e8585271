"""The root of captioner's exceptions, and the model's own.

    CaptionerError                      every error captioner raises on purpose (this module)
    ├── ModelError                      a checkpoint is missing, unreadable, corrupt or of an unknown kind (this module)
    ├── AudioError                      an audio file cannot be decoded (captioner.stream.audio)
    ├── ReplayError                     a client tool cannot reach a server or is refused (captioner.tools.replay)
    ├── UsageError                      a command line asks for what cannot be done (this module; exit status 2)
    └── ProtocolError                   a client broke the streaming protocol (captioner.server.errors)
        ├── BadRequest, Unauthorized, Forbidden, MessageTooBig, Throttled, Overloaded

Errors carry a short `code` slug; the server sends it to clients, with a status or close code it
decides in one place (captioner.server.protocols.base).
"""

from __future__ import annotations

__all__ = ["CaptionerError", "ModelError", "UsageError"]


class CaptionerError(Exception):
    """Base class of every error captioner raises on purpose."""

    code = "error"


class ModelError(CaptionerError):
    """A checkpoint cannot be loaded."""

    code = "model"


class UsageError(CaptionerError):
    """The command line asks for something that cannot be done: an unknown flag, a bad value, a missing file."""

    code = "usage"
