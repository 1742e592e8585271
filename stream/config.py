"""Settings of the streaming core, one frozen record; the server nests it in its own (server/settings.py).

Each field's comment is its documentation (`captioner serve --help` shows it), and the comment
lines above a run of fields name their group.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any, Literal

__all__ = ["StreamConfig", "FieldDoc", "documented_fields", "convert", "parse_overrides"]


@dataclass(frozen=True)
class StreamConfig:
    # Encoder
    strategy: Literal["window", "cached"] = "window"  # how partial updates encode (docs/streaming.md)
    padding_s: float = 4.0  # seconds of 0.0 mel frames after a final's audio; tiny.en loops with less
    partial_padding_s: float = 4.0  # the same for partial updates (the cached strategy's tail)
    chunk_s: float = 2.0  # cached strategy: audio per cached chunk
    cache_context: bool = True  # window strategy: earlier segments' audio encoded once per segment, not per update
    final_cached_context: bool = True  # ...and finals reuse that block (the segment itself still full-context)
    partial_window_s: float = 5.0  # window strategy: a partial update re-encodes its segment's last this many seconds, older audio keeps the states an earlier update gave it (0: all)
    # Updates and commits
    update_interval_s: float = 0.5  # audio between partial updates while a segment is open
    first_update_s: float = 0.3  # first update after speech starts
    retry_s: float = 0.25  # ...and, when it found no text, another this much later
    commit_margin_s: float = 1.0  # a word becomes stable only once it ends this far before the audio edge
    agreement: int = 3  # ...and the last `agreement` hypotheses agree on it and on the word after it
    unsure_probability: float = 0.4  # a word with a token less probable than this needs one more agreement
    quiet_s: float = 0.1  # silence after which agreed words need neither the margin nor an agreed word after them
    quiet_agreement: int = 2  # ...and words with every token at least quiet_probability need only this many
    quiet_probability: float = 0.9  # agreeing hypotheses
    # Endpointing
    vad_threshold: float = 0.5  # Silero speech probability that starts speech
    vad_release: float = 0.35  # probability below which silence starts counting
    vad_reset_s: float = 1.0  # non-speech after which the VAD hears afresh (a quieter voice after a loud one; 0: never)
    min_speech_s: float = 0.064  # speech needed to open a segment
    silence_s: float = 0.5  # silence that ends a segment
    long_silence_s: float = 0.3  # ...once its speech has lasted long_speech_s (a shorter pause ends long speech)
    long_speech_s: float = 10.0  # speech this long counts as long (see long_silence_s)
    max_segment_s: float = 15.0  # a longer segment is cut at its last stable word
    context_s: float = 10.0  # earlier segments' audio and finals (this far back) decoded before a final, as context
    update_context_s: float = 10.0  # the same for partial updates
    preroll_s: float = 0.3  # audio kept before detected speech
    # Decoding
    final_beam: int = 5  # beam size of finals; partials are greedy
    prompt_tokens: int = 0  # previous finals' tokens given as context to finals (0: none; tiny.en does worse with it)
    partial_prompt: bool = True  # ...and to partial updates
    max_tokens_per_s: float = 6.0  # loop guard: tokens allowed per second of audio, plus 10
    no_speech_threshold: float = 0.6  # a final this likely silent (and unsure) is dropped
    language_confidence: float = 0.7  # language=auto: a detection this probable settles a segment's language
    keyword_bonus: float = 3.0  # logit bonus of a token that continues one of the stream's keywords
    keyword_start_bonus: float = 1.0  # ...and of one that starts a keyword
    # Coverage of finals (stream/coverage.py)
    coverage_gap_s: float = 0.25  # voiced audio that no word of a final covers for this long is decoded again
    max_continuations: int = 2  # ...at most this many times per final
    # Speakers (diarize=true; stream/speakers.py)
    max_speakers: int = 8  # speakers per stream; past it, a new speaker's speech goes to the nearest known one
    new_speaker_similarity: float = 0.75  # a stretch less similar than this to every known speaker is a new one
    change_similarity: float = 0.65  # a final's words split where the speech before and after is less similar
    min_new_speaker_windows: int = 3  # speaker windows a stretch needs to enrol a new speaker (3: 3.2 s of speech)
    speaker_window_s: float = 1.6  # speech per speaker embedding (the encoder was trained on 1.6 s)
    speaker_hop_s: float = 0.8  # ...one every this much speech
    max_speaker_wait_s: float = 0.3  # a final waits about this long at most for its labels (fewer windows if long)
    # Batching (stream/batching.py)
    max_batch: int = 16  # jobs per model pass on a GPU
    cpu_batch: int = 1  # jobs per model pass on a CPU (each inference thread takes the next pass, finals first)
    shed_after_s: float = 0.5  # audio waiting longer for the model means behind real time: skip obsolete updates,...
    shed_update_gap_s: float = 1.0  # ...give each stream at most one update per this much audio, decode finals greedily

    @property
    def segment_cache(self) -> bool:
        """Whether a segment keeps encoder state between its jobs (stream/encoding.py)."""
        return self.strategy == "cached" or self.cache_context

    @property
    def finals_reuse_context(self) -> bool:
        """Whether a final reuses its segment's cached context block (window strategy only)."""
        return self.strategy == "window" and self.cache_context and self.final_cached_context

    def __post_init__(self) -> None:
        if self.strategy not in ("window", "cached"):
            raise ValueError(f"strategy must be 'window' or 'cached', not {self.strategy!r}")
        if not 0 < self.update_interval_s <= 5:
            raise ValueError("update_interval_s must be in (0, 5]")
        if self.max_segment_s > 25:
            raise ValueError("max_segment_s must leave room for padding in a 30 s window (<= 25)")
        if self.partial_window_s < 0 or self.vad_reset_s < 0:
            raise ValueError("partial_window_s >= 0 and vad_reset_s >= 0 are required")
        if self.padding_s < 0 or self.silence_s <= 0 or self.final_beam < 1 or self.agreement < 1:
            raise ValueError("padding_s >= 0, silence_s > 0, final_beam >= 1 and agreement >= 1 are required")
        if self.coverage_gap_s <= 0 or self.max_continuations < 0:
            raise ValueError("coverage_gap_s > 0 and max_continuations >= 0 are required")
        if not 0 < self.language_confidence <= 1:
            raise ValueError("language_confidence must be in (0, 1]")
        if self.max_speakers < 1 or self.min_new_speaker_windows < 1 or self.max_speaker_wait_s <= 0:
            raise ValueError("max_speakers >= 1, min_new_speaker_windows >= 1 and max_speaker_wait_s > 0 are required")
        if not (-1 <= self.change_similarity <= 1 and -1 <= self.new_speaker_similarity <= 1):
            raise ValueError("change_similarity and new_speaker_similarity must be cosine similarities in [-1, 1]")
        if not 0 < self.speaker_hop_s <= self.speaker_window_s <= 10:
            raise ValueError("0 < speaker_hop_s <= speaker_window_s <= 10 is required")
        if self.max_batch < 1 or self.cpu_batch < 1 or self.shed_after_s < 0 or self.shed_update_gap_s < 0:
            raise ValueError("max_batch >= 1, cpu_batch >= 1, shed_after_s >= 0 and shed_update_gap_s >= 0 are required")


@dataclass(frozen=True)
class FieldDoc:
    """A field of a settings record, as documented in its class body."""

    name: str
    kind: str  # the annotation, e.g. "float" or "str | None"
    default: Any
    help: str
    group: str  # the comment line above its run of fields


def documented_fields(cls: type) -> list[FieldDoc]:
    """The fields of a settings dataclass with the help and group its source comments give them."""
    helps, groups, group = {}, {}, ""
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            group = text.lstrip("# ")
        elif ":" in text and "#" in text:
            name = text.split(":", 1)[0]
            helps[name], groups[name] = text.split("#", 1)[1].strip(), group
    defaults = cls()
    return [FieldDoc(f.name, str(f.type), getattr(defaults, f.name), helps.get(f.name, ""), groups.get(f.name, ""))
            for f in fields(cls) if f.name in helps]


def convert(kind: str, value: Any) -> Any:
    """A setting's value from text (a flag, a variable) or TOML, as the annotation `kind` says."""
    if isinstance(value, list):
        return tuple(value)
    if not isinstance(value, str):
        return value
    if "tuple" in kind:
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if kind.startswith("bool"):
        return value.lower() in ("1", "true", "yes", "on")
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """StreamConfig field values from FIELD=VALUE strings (benchmarks' --set), each converted to its field's type."""
    kinds = {f.name: str(f.type) for f in fields(StreamConfig)}
    return {key: convert(kinds[key], value) for key, value in (item.split("=", 1) for item in items)}
