"""What OpenAI's two APIs share here (the Realtime WebSocket and audio over HTTP): its transcription models' names,
each an alias of the one model the server runs, and prompts taken as keywords."""

from __future__ import annotations

import re

__all__ = ["MODEL_ALIASES", "model_known", "prompt_keywords"]

MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize")
_DATED = re.compile(r"(gpt-4o(-mini)?-transcribe)-\d{4}-\d{2}-\d{2}")


def model_known(name: str, served: str) -> bool:
    """Whether a client's model name means the served model: its own name or an alias of OpenAI's models."""
    return name == served or name in MODEL_ALIASES or _DATED.fullmatch(name) is not None


def prompt_keywords(prompt: str) -> list[str]:
    """The keywords of an OpenAI prompt: its comma-, semicolon- or line-separated items (a prompt of prose is one
    long item, which clean_keywords bounds)."""
    return [item.strip() for item in re.split(r"[,;\n]", prompt) if item.strip()]
