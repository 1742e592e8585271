"""OpenAI's transcription responses from captioner's finals, and the caption cues the command line shares.

POST /v1/audio/transcriptions and /v1/audio/translations answer in one of RESPONSE_FORMATS, as OpenAI's
whisper-1 does; with stream=true, as server-sent events (sse_delta, then sse_done); and an error as OpenAI's
error body. Nothing here does I/O: each function returns the bytes to send.

verbose_json segments carry fields that Whisper's offline decoder fills and captioner's streaming one does
not keep; they are filled as follows (see _segment):

    tokens              [] (a final keeps its text and words, not its token ids)
    seek                the segment's start in mel frames (Whisper gives the start of the 30 s window it came from)
    temperature         0.0 (the streaming decoder does not sample)
    avg_logprob         the mean log-probability of its words (0.0 for a final without words)
    compression_ratio   of its text, as Whisper computes it (zlib)
    no_speech_prob      0.0 (a final is speech that voice activity detection let through and the decoder wrote)
"""

from __future__ import annotations

import datetime
import io
import json
import math
import zlib
from collections.abc import Collection

import srt
import webvtt

from captioner.stream.events import Final, Word, event_to_dict
from captioner.stream.features import FRAMES_PER_SECOND

__all__ = [
    "RESPONSE_FORMATS", "GRANULARITIES", "TASKS", "CONTENT_TYPES", "LANGUAGE_NAMES", "render", "sse_delta", "sse_done",
    "openai_error", "Cue", "cues_of", "cues_to_text", "cues_to_srt", "cues_to_vtt", "vtt_time",
]

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")  # timestamp_granularities[], for verbose_json
TASKS = ("transcribe", "translate")
# OpenAI sends srt as text/plain (it has no registered type); vtt gets its own, which browsers' <track> requires
CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
                 "srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
MIN_PROBABILITY = 1e-10  # floor of a word's probability before its log
# verbose_json names a language in English, in lower case, as Whisper's tokenizer does
LANGUAGE_NAMES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek",
    "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog", "mg": "malagasy",
    "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa", "ba": "bashkir",
    "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

Cue = tuple[float, float, str, str | None]  # start s, end s, text, speaker (None: not diarized)


def render(
    finals: list[Final], duration_s: float, response_format: str, granularities: Collection[str], task: str,
    language: str,
) -> tuple[bytes, str]:
    """A whole transcription's response body and its content type.

    `finals` are the stream's finals in order; `duration_s` is the audio's length; `granularities` the
    request's timestamp_granularities[] (used by verbose_json only); `task` one of TASKS; `language` the
    spoken language's code. Raises ValueError for a format, task or granularity outside the sets above.
    """
    if response_format not in RESPONSE_FORMATS or task not in TASKS or not set(granularities) <= set(GRANULARITIES):
        raise ValueError(f"cannot render {response_format!r} for {task!r} with granularities {sorted(granularities)}")
    finals = [final for final in finals if final.text]
    text = " ".join(final.text for final in finals)
    if response_format == "text":
        body = text + "\n"
    elif response_format == "srt":
        body = cues_to_srt(cues_of([event_to_dict(final) for final in finals]))
    elif response_format == "vtt":
        body = cues_to_vtt(cues_of([event_to_dict(final) for final in finals]))
    elif response_format == "json":
        body = _json({"text": text, **({"usage": _usage(duration_s)} if task == "transcribe" else {})})
    else:
        body = _json(_verbose(finals, text, duration_s, granularities, task, language))
    return body.encode(), CONTENT_TYPES[response_format]


def _verbose(
    finals: list[Final], text: str, duration_s: float, granularities: Collection[str], task: str, language: str
) -> dict:
    """verbose_json: segments unless only words were asked for, words only when asked for (as OpenAI does);
    a translation's language is that of its text, English, and it reports no usage (OpenAI's has none)."""
    language_name = "english" if task == "translate" else LANGUAGE_NAMES.get(language, language)
    body: dict = {"task": task, "language": language_name, "duration": duration_s, "text": text}
    if not granularities or "segment" in granularities:
        body["segments"] = [_segment(i, final) for i, final in enumerate(finals)]
    if "word" in granularities:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for final in finals for w in final.words]
    if task == "transcribe":
        body["usage"] = _usage(duration_s)
    return body


def _segment(segment_id: int, final: Final) -> dict:
    """A TranscriptionSegment; the module docstring says how the fields captioner does not keep are filled."""
    return {"id": segment_id, "seek": round(final.start * FRAMES_PER_SECOND), "start": final.start, "end": final.end,
            "text": " " + final.text,  # Whisper's segments start with their first token's space
            "tokens": [], "temperature": 0.0, "avg_logprob": _avg_logprob(final.words),
            "compression_ratio": _compression_ratio(final.text), "no_speech_prob": 0.0}


def _avg_logprob(words: list[Word]) -> float:
    if not words:
        return 0.0
    return sum(math.log(max(w.probability, MIN_PROBABILITY)) for w in words) / len(words)


def _compression_ratio(text: str) -> float:
    """Whisper's: above 2.4, the decoder is likely repeating itself."""
    data = text.encode()
    return len(data) / len(zlib.compress(data))


def _usage(duration_s: float) -> dict:
    """whisper-1 bills whole seconds, rounded up (rounded to the millisecond first, so 3.0000001 s is 3)."""
    return {"type": "duration", "seconds": math.ceil(round(duration_s, 3))}


def sse_delta(text: str) -> bytes:
    """A transcript.text.delta event: `text` is what follows the text sent so far (with its leading space)."""
    return _sse({"type": "transcript.text.delta", "delta": text})


def sse_done(text: str, duration_s: float) -> bytes:
    """The transcript.text.done event that ends a stream=true response, with the whole text.

    `duration_s` is not sent: OpenAI's done event reports usage only in tokens (`"type": "tokens"`; its SDK
    rejects a duration there), and captioner counts no billed tokens.
    """
    return _sse({"type": "transcript.text.done", "text": text})


def _sse(event: dict) -> bytes:
    return f"data: {_json(event)}\n\n".encode()  # JSON without indent is one line: one data field


def openai_error(message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    """OpenAI's error body; `type` such as invalid_request_error, `param` the request field at fault."""
    return _json({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def _json(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False)


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


def cues_to_text(cues: list[Cue]) -> str:
    """Plain text, a cue a line; a speaker's cue starts with its label ("S1: ...")."""
    return "".join(_labelled(text, speaker) + "\n" for _, _, text, speaker in cues)


def cues_to_srt(cues: list[Cue]) -> str:
    """SubRip; a speaker's cue starts with its label ("S1: ...")."""
    subtitles = [
        srt.Subtitle(i, datetime.timedelta(seconds=start), datetime.timedelta(seconds=end), _labelled(text, speaker))
        for i, (start, end, text, speaker) in enumerate(cues, 1)
    ]
    return srt.compose(subtitles)


def _labelled(text: str, speaker: str | None) -> str:
    return f"{speaker}: {text.strip()}" if speaker else text.strip()


def cues_to_vtt(cues: list[Cue]) -> str:
    """WebVTT; a speaker's cue carries a voice tag (<v S1>...)."""
    vtt = webvtt.WebVTT()
    for start, end, text, speaker in cues:
        body = f"<v {speaker}>{text.strip()}" if speaker else text.strip()
        vtt.captions.append(webvtt.Caption(vtt_time(start), vtt_time(end), body))
    buffer = io.StringIO()
    vtt.write(buffer)
    return buffer.getvalue()


def vtt_time(seconds: float) -> str:
    """A WebVTT timestamp, HH:MM:SS.mmm."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
