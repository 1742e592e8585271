"""Transcripts and captions as text, JSON, SRT and WebVTT (the cues are rendered as the server renders them)."""

from __future__ import annotations

import dataclasses
import json

from captioner.server.transcripts import Cue, cues_of, cues_to_srt, cues_to_vtt

from .transcribe import Transcript

__all__ = ["transcript_to", "cues_to_srt", "cues_to_vtt", "cues_of", "Cue"]


def transcript_to(transcript: Transcript, fmt: str) -> str:
    """Render a transcript as text, json, srt or vtt."""
    segments = [dataclasses.asdict(s) for s in transcript.segments]
    cues = cues_of([{**s, "text": s["text"].strip()} for s in segments])
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        payload = {"text": transcript.text, "duration": transcript.duration,
                   "segments": segments}
        return json.dumps(payload, indent=1) + "\n"
    if fmt == "srt":
        return cues_to_srt(cues)
    if fmt == "vtt":
        return cues_to_vtt(cues)
    raise ValueError(f"unknown format {fmt!r}")
