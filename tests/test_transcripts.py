"""OpenAI's transcription responses, events and errors, and the caption cues (server/transcripts.py), checked
against the official openai SDK's own types."""

from __future__ import annotations

import io
import json
import math
import zlib

import pytest
import srt
import webvtt
from openai._streaming import SSEDecoder
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    Translation,
    TranslationVerbose,
)
from openai.types.shared import ErrorObject

from captioner.server.transcripts import (
    LANGUAGE_NAMES,
    RESPONSE_FORMATS,
    cues_of,
    cues_to_srt,
    cues_to_vtt,
    openai_error,
    render,
    sse_delta,
    sse_done,
)
from captioner.stream.events import Final, Word

FINALS = [
    Final(0, "Hello there.", 0.0, 1.5, [Word("Hello", 0.0, 0.6, 0.9), Word("there.", 0.7, 1.5, 0.8)]),
    Final(1, "", 2.0, 2.0),  # a final with no text: in no response
    Final(2, "An hour later, café.", 61.25, 3723.004,
          [Word("An", 61.25, 61.5, 1.0), Word("hour", 61.5, 62.0, 0.5), Word("later,", 62.0, 62.5, 0.25),
           Word("café.", 62.5, 3723.004, 0.0)]),
]
TEXT = "Hello there. An hour later, café."
DURATION_S = 3724.5


def rendered(response_format: str, granularities: set[str] = frozenset(), task: str = "transcribe",
             language: str = "en", finals: list[Final] = FINALS) -> tuple[bytes, str]:
    return render(finals, DURATION_S, response_format, granularities, task, language)


def verbose(granularities: set[str] = frozenset(), task: str = "transcribe", language: str = "en") -> dict:
    body, content_type = rendered("verbose_json", granularities, task, language)
    assert content_type == "application/json"
    return json.loads(body)


def test_json_is_openai_transcription_with_duration_usage():
    """json: the text and the seconds billed (rounded up), as whisper-1 answers."""
    body, content_type = rendered("json")
    assert content_type == "application/json"
    transcription = Transcription.model_validate(json.loads(body))
    assert transcription.text == TEXT
    assert transcription.usage.type == "duration" and transcription.usage.seconds == 3725
    assert json.loads(body) == {"text": TEXT, "usage": {"type": "duration", "seconds": 3725}}


def test_json_of_a_translation_is_its_text_only():
    """json for /translations: OpenAI's Translation has the text and nothing else."""
    body, _ = rendered("json", task="translate", language="fr")
    assert Translation.model_validate(json.loads(body)).text == TEXT
    assert json.loads(body) == {"text": TEXT}


def test_usage_rounds_whole_seconds_up_but_not_float_noise():
    """3.2 s bills 4 s; 3.0000001 s (float noise) bills 3."""
    assert json.loads(render([], 3.2, "json", set(), "transcribe", "en")[0])["usage"]["seconds"] == 4
    assert json.loads(render([], 3.0000001, "json", set(), "transcribe", "en")[0])["usage"]["seconds"] == 3


def test_text_is_the_plain_text_and_a_newline():
    """text: the finals' texts joined by spaces, UTF-8, as text/plain."""
    assert rendered("text") == ((TEXT + "\n").encode(), "text/plain; charset=utf-8")


def test_srt_parses_back_to_one_cue_per_final():
    """srt: numbered from 1, with the finals' times, as SubRip."""
    body, content_type = rendered("srt")
    assert content_type == "text/plain; charset=utf-8"
    subtitles = list(srt.parse(body.decode()))
    assert [s.index for s in subtitles] == [1, 2]
    assert [s.content for s in subtitles] == ["Hello there.", "An hour later, café."]
    assert [(s.start.total_seconds(), s.end.total_seconds()) for s in subtitles] == [(0.0, 1.5), (61.25, 3723.004)]


def test_vtt_parses_back_to_one_cue_per_final():
    """vtt: WebVTT with the finals' times, as text/vtt."""
    body, content_type = rendered("vtt")
    assert content_type == "text/vtt; charset=utf-8"
    captions = list(webvtt.from_buffer(io.StringIO(body.decode())))
    assert [c.text for c in captions] == ["Hello there.", "An hour later, café."]
    assert [(c.start, c.end) for c in captions] == [("00:00:00.000", "00:00:01.500"), ("00:01:01.250", "01:02:03.004")]


def test_verbose_json_is_openai_transcription_verbose():
    """verbose_json: task, the language's English name, duration, text, segments and usage; no words unasked."""
    body = verbose()
    parsed = TranscriptionVerbose.model_validate(body)
    assert (body["task"], parsed.language, parsed.duration, parsed.text) == ("transcribe", "english", DURATION_S, TEXT)
    assert [(s.id, s.start, s.end, s.text) for s in parsed.segments] == [
        (0, 0.0, 1.5, " Hello there."), (1, 61.25, 3723.004, " An hour later, café.")]
    assert "".join(s.text for s in parsed.segments).strip() == parsed.text
    assert parsed.usage.seconds == 3725
    assert "words" not in body


def test_verbose_json_segments_fill_what_captioner_does_not_keep():
    """seek in mel frames of the start, no tokens, temperature 0, mean word log-probability, Whisper's
    compression ratio, no-speech probability 0."""
    segment = verbose()["segments"][1]
    assert segment["seek"] == 6125
    assert (segment["tokens"], segment["temperature"], segment["no_speech_prob"]) == ([], 0.0, 0.0)
    assert segment["avg_logprob"] == pytest.approx(sum(map(math.log, [1.0, 0.5, 0.25, 1e-10])) / 4)
    text = "An hour later, café.".encode()
    assert segment["compression_ratio"] == pytest.approx(len(text) / len(zlib.compress(text)))


def test_a_segment_without_words_has_a_zero_log_probability():
    """A final without words (word timestamps off) still makes a valid segment."""
    body, _ = rendered("verbose_json", finals=[Final(0, "Hi.", 0.0, 0.5)])
    assert TranscriptionVerbose.model_validate_json(body).segments[0].avg_logprob == 0.0


@pytest.mark.parametrize(("granularities", "keys"), [
    (set(), {"segments"}), ({"segment"}, {"segments"}), ({"word"}, {"words"}),
    ({"word", "segment"}, {"segments", "words"}),
], ids=["none", "segment", "word", "both"])
def test_verbose_json_has_segments_and_words_as_granularities_ask(granularities, keys):
    """segments unless only words were asked for; words only when asked for, as OpenAI does."""
    body = verbose(granularities)
    assert {"segments", "words"} & body.keys() == keys
    TranscriptionVerbose.model_validate(body)


def test_verbose_json_words_have_their_times():
    """words: every word of every final, with its start and end, without probability or speaker."""
    words = TranscriptionVerbose.model_validate(verbose({"word"})).words
    assert [(w.word, w.start, w.end) for w in words] == [
        ("Hello", 0.0, 0.6), ("there.", 0.7, 1.5), ("An", 61.25, 61.5), ("hour", 61.5, 62.0), ("later,", 62.0, 62.5),
        ("café.", 62.5, 3723.004)]
    assert set(verbose({"word"})["words"][0]) == {"word", "start", "end"}


def test_verbose_json_of_a_translation_is_in_english_without_usage():
    """verbose_json for /translations: task translate, the text's language (english), no usage."""
    body = verbose(task="translate", language="fr")
    parsed = TranslationVerbose.model_validate(body)
    assert (body["task"], parsed.language, parsed.text, len(parsed.segments)) == ("translate", "english", TEXT, 2)
    assert "usage" not in body


@pytest.mark.parametrize(("code", "name"), [("fr", "french"), ("yue", "cantonese"), ("xx", "xx")],
                         ids=["fr", "yue", "unknown"])
def test_verbose_json_names_the_language(code, name):
    """A known code becomes its name; an unknown one is passed through."""
    assert verbose(language=code)["language"] == name


def test_language_names_are_whispers():
    """The names are openai-whisper's, which OpenAI's verbose_json uses."""
    from whisper.tokenizer import LANGUAGES

    assert LANGUAGE_NAMES == LANGUAGES


@pytest.mark.parametrize("response_format", RESPONSE_FORMATS)
def test_no_finals_make_valid_empty_bodies(response_format):
    """Silence (no finals) answers an empty text in every format."""
    body, _ = rendered(response_format, finals=[])
    if response_format == "json":
        assert Transcription.model_validate_json(body).text == ""
    elif response_format == "verbose_json":
        assert TranscriptionVerbose.model_validate_json(body).segments == []
    elif response_format == "vtt":
        assert body.decode().startswith("WEBVTT") and not list(webvtt.from_buffer(io.StringIO(body.decode())))
    else:
        assert body == (b"\n" if response_format == "text" else b"")


@pytest.mark.parametrize(("response_format", "granularities", "task"), [
    ("xml", set(), "transcribe"), ("json", set(), "summarize"), ("verbose_json", {"token"}, "transcribe"),
], ids=["format", "task", "granularity"])
def test_render_refuses_what_it_does_not_know(response_format, granularities, task):
    """The caller validates requests; render raises ValueError for anything else."""
    with pytest.raises(ValueError):
        render(FINALS, DURATION_S, response_format, granularities, task, "en")


def test_diarized_finals_make_one_cue_per_speaker():
    """srt and vtt of finals whose words carry speakers label each speaker's run of words."""
    final = Final(0, "Yes. Who is it?", 1.0, 2.6, [Word("Yes.", 1.0, 1.4, 0.9, "S1"), Word("Who", 1.8, 2.0, 0.9, "S2"),
                                                   Word("is", 2.0, 2.2, 0.9, "S2"), Word("it?", 2.2, 2.6, 0.9, "S2")],
                  speaker="S2")
    body, _ = rendered("srt", finals=[final])
    assert [s.content for s in srt.parse(body.decode())] == ["S1: Yes.", "S2: Who is it?"]
    body, _ = rendered("vtt", finals=[final])
    assert [c.voice for c in webvtt.from_buffer(io.StringIO(body.decode()))] == ["S1", "S2"]


def sse_events(data: bytes) -> list[dict]:
    """The events of a response body, as the openai SDK's own SSE decoder reads them."""
    return [event.json() for event in SSEDecoder().iter_bytes(iter([data]))]


def test_sse_delta_is_a_transcript_text_delta_event():
    """One data line, then a blank line; the SDK reads it as a TranscriptionTextDeltaEvent."""
    data = sse_delta(" there, café.")
    assert data.startswith(b"data: {") and data.endswith(b"}\n\n") and data.count(b"\n") == 2
    [event] = sse_events(data)
    parsed = TranscriptionTextDeltaEvent.model_validate(event)
    assert (parsed.type, parsed.delta) == ("transcript.text.delta", " there, café.")


def test_sse_done_is_a_transcript_text_done_event():
    """The done event carries the whole text, and no usage (OpenAI's is in tokens only)."""
    [event] = sse_events(sse_done(TEXT, DURATION_S))
    parsed = TranscriptionTextDoneEvent.model_validate(event)
    assert (parsed.type, parsed.text, parsed.usage) == ("transcript.text.done", TEXT, None)


def test_an_sse_stream_reads_back_in_order_even_with_newlines_in_the_text():
    """A text with newlines stays one data field per event; the SDK reads the stream back event by event."""
    stream = sse_delta("Line one\n") + sse_delta("line two") + sse_done("Line one\nline two", 2.0)
    events = sse_events(stream)
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"]
    assert "".join(e["delta"] for e in events[:2]) == events[2]["text"] == "Line one\nline two"


def test_openai_error_is_openai_error_body():
    """{"error": {message, type, param, code}}, with param null unless given."""
    body = json.loads(openai_error("the audio is too long", "invalid_request_error", "audio_too_long"))
    assert body == {"error": {"message": "the audio is too long", "type": "invalid_request_error", "param": None,
                              "code": "audio_too_long"}}
    error = ErrorObject.model_validate(json.loads(openai_error("bad", "invalid_request_error", None, "file"))["error"])
    assert (error.param, error.code) == ("file", None)


CUES = [(0.0, 1.5, " Hello there.", None), (61.25, 3723.004, "An hour later ", None)]


def test_srt_numbers_cues_from_one_with_comma_millis():
    """SubRip cues are numbered from 1, times with comma milliseconds, text stripped."""
    text = cues_to_srt(CUES)
    assert "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n" in text
    assert "2\n00:01:01,250 --> 01:02:03,004\nAn hour later\n" in text
    assert [s.content for s in srt.parse(text)] == ["Hello there.", "An hour later"]


def test_vtt_has_its_header_and_dot_millis():
    """WebVTT starts with its header; times have dot milliseconds and hours."""
    text = cues_to_vtt(CUES)
    assert text.startswith("WEBVTT")
    assert "00:01:01.250 --> 01:02:03.004\nAn hour later" in text
    assert [c.text for c in webvtt.from_buffer(io.StringIO(text))] == ["Hello there.", "An hour later"]


def test_vtt_rounds_to_the_millisecond_without_reaching_sixty_seconds():
    """59.9996 s rounds to 00:01:00.000, never 00:00:60.000."""
    assert "00:01:00.000 --> 00:01:00.001" in cues_to_vtt([(59.9996, 60.0006, "x", None)])


def test_no_cues_make_empty_but_valid_files():
    """No cues: an empty SubRip file, a WebVTT file with its header only."""
    assert cues_to_srt([]) == ""
    assert cues_to_vtt([]).startswith("WEBVTT")


def _word(word: str, start: float, speaker: str | None) -> dict:
    return {"word": word, "start": start, "end": start + 0.4, "probability": 0.9, "speaker": speaker}


def test_a_final_whose_speaker_changes_becomes_one_cue_per_speaker():
    """Native finals whose words change speaker become one labelled cue per run of words; empty finals none."""
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
