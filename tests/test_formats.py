"""Transcript formats of the command line (tools/formats.py), without the model; the caption cues it shares
with the server are tested in test_transcripts.py."""

from __future__ import annotations

import json

from captioner.server import transcripts
from captioner.tools import formats
from captioner.tools.formats import cues_to_srt, cues_to_vtt, transcript_to
from captioner.tools.transcribe import Segment, Transcript


def test_transcripts_render_in_every_format():
    segment = Segment(start=0.0, end=1.5, text=" Hello there.", tokens=[1, 2], avg_logprob=-0.2, no_speech_prob=0.01,
                      compression_ratio=1.0, temperature=0.0)
    transcript = Transcript(segments=[segment], duration=1.5)
    assert transcript_to(transcript, "text") == "Hello there.\n"
    assert json.loads(transcript_to(transcript, "json"))["segments"][0]["end"] == 1.5
    assert transcript_to(transcript, "srt") == cues_to_srt([(0.0, 1.5, "Hello there.", None)])
    assert transcript_to(transcript, "vtt") == cues_to_vtt([(0.0, 1.5, "Hello there.", None)])


def test_cues_are_rendered_as_the_server_renders_them():
    """The command line's captions and the server's srt and vtt responses share one implementation."""
    for name in ("Cue", "cues_of", "cues_to_srt", "cues_to_vtt"):
        assert getattr(formats, name) is getattr(transcripts, name)
