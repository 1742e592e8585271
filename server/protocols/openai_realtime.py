"""OpenAI's Realtime API in transcription mode at /v1/realtime?intent=transcription (docs/protocol.md)."""

from __future__ import annotations

from .base import Protocol

__all__ = ["OpenAIRealtimeProtocol"]


class OpenAIRealtimeProtocol(Protocol):
    name = "openai-realtime"
