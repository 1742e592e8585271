"""Transcripts and captions as text, JSON, SRT and WebVTT."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json

import srt
import webvtt

from .transcribe import Transcript

__all__ = ["transcript_to", "cues_to_srt", "cues_to_vtt", "cues_of", "Cue"]

Cue = tuple[float, float, str, str | None]  # start s, end s, text, speaker (None: not diarized)


def cues_of(finals: list[dict]) -> list[Cue]:
    """Caption cues of finals (native protocol messages): one per final, or, where its words carry speakers,
    one per run of words of one speaker."""
    cues: list[Cue] = []
    for final in finals:
        words = final.get("words") or []
        if not final["text"]:
            continue
        if not words or words[0].get("speaker") is None:
            cues.append((final["start"], final["end"], final["text"], final.get("speaker")))
            continue
        run = [words[0]]
        for word in words[1:] + [None]:
            if word is not None and word.get("speaker") == run[0].get("speaker"):
                run.append(word)
                continue
            cues.append((run[0]["start"], run[-1]["end"], " ".join(w["word"] for w in run), run[0].get("speaker")))
            run = [word]
    return cues


def cues_to_srt(cues: list[Cue]) -> str:
    """SubRip; a speaker's cue starts with its label ("S1: ...")."""
    subtitles = [
        srt.Subtitle(i, datetime.timedelta(seconds=start), datetime.timedelta(seconds=end),
                     f"{speaker}: {text.strip()}" if speaker else text.strip())
        for i, (start, end, text, speaker) in enumerate(cues, 1)
    ]
    return srt.compose(subtitles)


def cues_to_vtt(cues: list[Cue]) -> str:
    """WebVTT; a speaker's cue carries a voice tag (<v S1>...)."""
    vtt = webvtt.WebVTT()
    for start, end, text, speaker in cues:
        body = f"<v {speaker}>{text.strip()}" if speaker else text.strip()
        vtt.captions.append(webvtt.Caption(_vtt_time(start), _vtt_time(end), body))
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
