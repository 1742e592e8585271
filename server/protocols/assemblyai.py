"""AssemblyAI's v3 streaming protocol at /v3/ws (docs/protocol.md)."""

from __future__ import annotations

from .base import Protocol

__all__ = ["AssemblyAIProtocol"]


class AssemblyAIProtocol(Protocol):
    name = "assemblyai"
