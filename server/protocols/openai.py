"""What OpenAI's two APIs share here, the Realtime WebSocket (openai_realtime.py) and audio over HTTP
(server/files.py, server/api.py): the names of its transcription models, each an alias of the one model the server
runs, and the rule that takes a prompt's keywords."""

from __future__ import annotations

import re

__all__ = ["MODEL_ALIASES", "model_known", "prompt_keywords", "MAX_PROMPT_ITEM_WORDS"]

MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize",
                 "gpt-transcribe", "gpt-live-transcribe", "gpt-realtime-whisper")  # as of the openai SDK 3.51.0
MAX_PROMPT_ITEM_WORDS = 4  # a longer piece of a prompt is free text, not a keyword
_VERSIONED = re.compile(r"(.+?)(-\d{4}-\d{2}-\d{2}|-latest)?")  # a snapshot's name: the model's, dated or -latest
_PROMPT_ITEMS = re.compile(r"[,;\n]")


def model_known(name: str, served: str) -> bool:
    """Whether a client's model name stands for the served model: its own name, or one of MODEL_ALIASES (a
    snapshot's name too: gpt-4o-transcribe-2025-03-20, gpt-4o-transcribe-latest)."""
    match = _VERSIONED.fullmatch(name)
    return name == served or (match is not None and match.group(1) in MODEL_ALIASES)


def prompt_keywords(prompt: str) -> list[str]:
    """The keywords of a prompt: its comma-, semicolon- or line-separated pieces of at most MAX_PROMPT_ITEM_WORDS
    words, inner whitespace collapsed (whisper-1's "list of keywords" style); longer pieces are free text, which
    captioner does not use."""
    pieces = (" ".join(piece.split()) for piece in _PROMPT_ITEMS.split(prompt))
    return [piece for piece in pieces if piece and len(piece.split()) <= MAX_PROMPT_ITEM_WORDS]
