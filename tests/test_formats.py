"""Caption and transcript formats (tools/formats.py), without the model."""

from __future__ import annotations

import io
import json

import srt
import webvtt

from captioner.tools.formats import cues_of, cues_to_srt, cues_to_vtt, transcript_to
from captioner.tools.transcribe import Segment, Transcript

CUES = [(0.0, 1.5, " Hello there.", None), (61.25, 3723.004, "An hour later ", None)]


def test_srt_numbers_cues_from_one_with_comma_millis():
    text = cues_to_srt(CUES)
    assert "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n" in text
    assert "2\n00:01:01,250 --> 01:02:03,004\nAn hour later\n" in text
    assert [s.content for s in srt.parse(text)] == ["Hello there.", "An hour later"]


def test_vtt_has_its_header_and_dot_millis():
    text = cues_to_vtt(CUES)
    assert text.startswith("WEBVTT")
    assert "00:01:01.250 --> 01:02:03.004\nAn hour later" in text
    assert [c.text for c in webvtt.from_buffer(io.StringIO(text))] == ["Hello there.", "An hour later"]


def test_vtt_rounds_to_the_millisecond_without_reaching_sixty_seconds():
    assert "00:01:00.000 --> 00:01:00.001" in cues_to_vtt([(59.9996, 60.0006, "x", None)])


def test_no_cues_make_empty_but_valid_files():
    assert cues_to_srt([]) == ""
    assert cues_to_vtt([]).startswith("WEBVTT")


def test_transcripts_render_in_every_format():
    segment = Segment(start=0.0, end=1.5, text=" Hello there.", tokens=[1, 2], avg_logprob=-0.2, no_speech_prob=0.01,
                      compression_ratio=1.0, temperature=0.0)
    transcript = Transcript(segments=[segment], duration=1.5)
    assert transcript_to(transcript, "text") == "Hello there.\n"
    assert json.loads(transcript_to(transcript, "json"))["segments"][0]["end"] == 1.5
    assert transcript_to(transcript, "srt") == cues_to_srt([(0.0, 1.5, "Hello there.", None)])
    assert transcript_to(transcript, "vtt") == cues_to_vtt([(0.0, 1.5, "Hello there.", None)])


def _word(word: str, start: float, speaker: str | None) -> dict:
    return {"word": word, "start": start, "end": start + 0.4, "probability": 0.9, "speaker": speaker}


def test_a_final_whose_speaker_changes_becomes_one_cue_per_speaker():
    finals = [{"text": "Yes. Who is it?", "start": 1.0, "end": 2.6, "speaker": "S1",
               "words": [_word("Yes.", 1.0, "S1"), _word("Who", 1.8, "S2"), _word("is", 2.0, "S2"),
                         _word("it?", 2.2, "S2")]},
              {"text": "", "start": 3.0, "end": 3.0, "words": []},
              {"text": "Plain.", "start": 4.0, "end": 4.4, "words": [_word("Plain.", 4.0, None)]}]
    cues = cues_of(finals)
    assert cues == [(1.0, 1.4, "Yes.", "S1"), (1.8, 2.6, "Who is it?", "S2"), (4.0, 4.4, "Plain.", None)]
    assert [s.content for s in srt.parse(cues_to_srt(cues))] == ["S1: Yes.", "S2: Who is it?", "Plain."]
    vtt = cues_to_vtt(cues)
    assert "<v S2>Who is it?" in vtt
    assert [c.voice for c in webvtt.from_buffer(io.StringIO(vtt))][:2] == ["S1", "S2"]
