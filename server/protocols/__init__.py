"""Wire protocols, sans-I/O: each maps a handshake to an accept or a refusal, client messages to session
commands, and caption events to its messages (base.py has the contract)."""

from .assemblyai import AssemblyAIProtocol
from .base import Accept, Audio, Command, End, Flush, Options, Protocol, Refusal, Reply, close_code, http_status
from .deepgram import DeepgramProtocol
from .native import NativeProtocol
from .openai_realtime import OpenAIRealtimeProtocol
from .parse import Request
from .vosk import VoskProtocol

__all__ = ["Protocol", "NativeProtocol", "VoskProtocol", "DeepgramProtocol", "OpenAIRealtimeProtocol",
           "AssemblyAIProtocol", "PROTOCOLS", "Request", "Options",
           "Accept", "Refusal", "Audio", "Flush", "End", "Reply", "Command", "close_code", "http_status"]

PROTOCOLS: dict[str, type[Protocol]] = {
    "/v1/stream": NativeProtocol,
    "/v1/listen": DeepgramProtocol,
    "/v1/realtime": OpenAIRealtimeProtocol,
    "/v3/ws": AssemblyAIProtocol,
    "/": VoskProtocol,
}
