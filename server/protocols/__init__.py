"""Wire protocols: each maps its client messages to stream commands and stream events to its messages."""

from .base import Protocol
from .deepgram import DeepgramProtocol
from .native import NativeProtocol
from .vosk import VoskProtocol

__all__ = ["Protocol", "NativeProtocol", "VoskProtocol", "DeepgramProtocol", "PROTOCOLS"]

PROTOCOLS: dict[str, type[Protocol]] = {
    "/v1/stream": NativeProtocol,
    "/v1/listen": DeepgramProtocol,
    "/": VoskProtocol,
}
