"""Transcripts and captions as text, JSON, SRT and WebVTT."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json

import srt
import webvtt

from .transcribe import Transcript

__all__ = ["transcript_to", "cues_to_srt", "cues_to_vtt", "Cue"]

Cue = tuple[float, float, str]  # start s, end s, text


def cues_to_srt(cues: list[Cue]) -> str:
    subtitles = [
        srt.Subtitle(i, datetime.timedelta(seconds=start), datetime.timedelta(seconds=end), text.strip())
        for i, (start, end, text) in enumerate(cues, 1)
    ]
    return srt.compose(subtitles)


def cues_to_vtt(cues: list[Cue]) -> str:
    vtt = webvtt.WebVTT()
    for start, end, text in cues:
        vtt.captions.append(webvtt.Caption(_vtt_time(start), _vtt_time(end), text.strip()))
    buffer = io.StringIO()
    vtt.write(buffer)
    return buffer.getvalue()


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def transcript_to(transcript: Transcript, fmt: str) -> str:
    """Render a transcript as text, json, srt or vtt."""
    cues = [(s.start, s.end, s.text) for s in transcript.segments]
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        payload = {"text": transcript.text, "duration": transcript.duration,
                   "segments": [dataclasses.asdict(s) for s in transcript.segments]}
        return json.dumps(payload, indent=1) + "\n"
    if fmt == "srt":
        return cues_to_srt(cues)
    if fmt == "vtt":
        return cues_to_vtt(cues)
    raise ValueError(f"unknown format {fmt!r}")
