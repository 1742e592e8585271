"""Errors of clients that break the streaming protocols, raised at the edge and in the protocol objects.

    ProtocolError       a client broke the streaming protocol
    ├── BadRequest      bad parameters or malformed data (HTTP 400 before the upgrade, close 1003 after)
    ├── Unauthorized    missing or wrong token (HTTP 401)
    ├── Forbidden       a Host, Origin or topic this server does not serve for this client (HTTP 403)
    ├── MessageTooBig   a frame over the size limit (close 1009)
    ├── Throttled       a client over its own limits: streams per address or token (HTTP 429), text
    │                   messages per second (an error message; the session carries on)
    └── Overloaded      over capacity, retry later (HTTP 503 before the upgrade, close 1013 after)

ProtocolError is a CaptionerError (captioner.model.errors draws the whole tree). Which status or
close code each class gets is decided in one place, captioner.server.protocols.base.
"""

from __future__ import annotations

from captioner.model.errors import CaptionerError

__all__ = ["ProtocolError", "BadRequest", "Unauthorized", "Forbidden", "MessageTooBig", "Throttled", "Overloaded"]


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


class Forbidden(ProtocolError):
    code = "forbidden"


class MessageTooBig(ProtocolError):
    code = "too_big"

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"message of {size} bytes is over the limit of {max_size} bytes")
        self.size = size
        self.max_size = max_size


class Throttled(ProtocolError):
    code = "rate_limited"

    def __init__(self, message: str, code: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


class Overloaded(ProtocolError):
    code = "overloaded"

    def __init__(self, message: str, code: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s
