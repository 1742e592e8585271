"""The model work a session asks for, and what comes back: the contract between sessions and the engine."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor

from captioner.decoder.network import Cross
from captioner.decoder.timing import WordTiming
from captioner.decoder.tokenizer import Tokenizer
from captioner.decoder.vocabulary import Vocabulary
from captioner.encoder.streaming import EncoderCache

from .config import StreamConfig
from .coverage import Coverage, SpeechActivity

__all__ = ["AUTO", "Speech", "clean_keywords", "SegmentCache", "UpdateJob", "FinalJob", "Job", "Hypothesis",
           "max_new_tokens"]

AUTO = "auto"


def clean_keywords(terms: Iterable[str]) -> tuple[str, ...]:
    """Keywords as a stream uses them: inner whitespace collapsed, blank terms and repeats dropped, in order."""
    return tuple(dict.fromkeys(term for term in (" ".join(t.split()) for t in terms) if term))


@dataclass(frozen=True)
class Speech:
    """What a stream asks of the model: the language spoken ("auto": detected), the task and its vocabulary."""

    language: str = "en"
    task: str = "transcribe"  # or "translate": English captions of speech in any language
    keywords: tuple[str, ...] = ()  # words and phrases the stream is likely to contain, favoured in decoding
    diarize: bool = False  # label each final and word with its speaker (stream/speakers.py)
    partials: bool = True  # partial captions while a segment is open (False: finals only, for less model time)

    @property
    def detect(self) -> bool:
        return self.language == AUTO

    def check(self, tokenizer: Tokenizer) -> None:
        """ValueError, with the reason, for a language or task the checkpoint lacks."""
        if not self.detect:
            tokenizer.sot_sequence_for(self.language, self.task)
        elif self.task != "transcribe" and not tokenizer.multilingual:
            raise ValueError("this checkpoint is English-only; it cannot translate")


@dataclass
class SegmentCache:
    """What a segment's jobs share across model calls, kept with the segment: the encoder's state of its
    cached audio, and the decoder's cross-attention keys/values of that audio (projected once)."""

    encoder: EncoderCache = field(default_factory=EncoderCache)
    cross: Cross = field(default_factory=list)

    def prefix(self, n: int) -> SegmentCache:
        """The cache of its first n encoder positions only (a final's: the context block, not the segment's audio)."""
        if n >= self.encoder.n_done:
            return self
        return SegmentCache(self.encoder.prefix(n), [(k[..., :n], v[:, :, :n]) for k, v in self.cross])


@dataclass
class UpdateJob:
    """Re-decode an open segment after new audio: greedy, the stable prefix forced, the old tail as draft."""

    mel: Tensor  # (n_mels, n) normalised frames of the segment so far, n even
    prompt: list[int]  # previous finals' tokens
    prefix: list[int]  # stable tokens
    draft: list[int]  # the previous hypothesis after the prefix
    max_new_tokens: int
    cache: SegmentCache | None = None  # the segment's cache (cached strategy, or cached context)
    context: int = 0  # leading prefix tokens that are earlier segments' finals (mel starts with their audio)
    context_positions: int = 0  # encoder positions of that earlier audio
    frozen_positions: int = 0  # ...and of the segment's older audio after it, whose states this pass leaves cached
    language: str | None = "en"  # None: detect it from the audio (language=auto)...
    fallback_language: str | None = None  # ...and decode in this one unless the detection is confident
    task: str = "transcribe"
    vocabulary: Vocabulary | None = None  # the stream's keywords


@dataclass
class FinalJob:
    """Decode a whole segment with full context: beam search (greedy when behind), the stable prefix forced."""

    mel: Tensor  # (n_mels, n) the segment, n even
    prompt: list[int]
    prefix: list[int]
    max_new_tokens: int  # 0: the final is exactly the prefix
    context: int = 0  # leading prefix tokens that are earlier segments' finals (mel starts with their audio)
    cache: SegmentCache | None = None  # the segment's cached context block, when finals reuse it
    context_positions: int = 0
    activity: SpeechActivity | None = None  # the segment's, on the mel's clock: checks the final's coverage
    draft: list[int] = field(default_factory=list)  # the last hypothesis after the prefix: a greedy final verifies it
    language: str | None = "en"  # as UpdateJob's
    fallback_language: str | None = None
    task: str = "transcribe"
    vocabulary: Vocabulary | None = None


Job = UpdateJob | FinalJob


@dataclass
class Hypothesis:
    tokens: list[int]  # text tokens: the prefix, then the decoded ones (the job's context left out)
    words: list[WordTiming]  # one per word unit of tokens, times from the start of the job's mel
    probabilities: list[float]  # per token; 1.0 for forced prefix tokens
    finished: bool  # decoding ended with end-of-text
    no_speech_prob: float = 0.0  # finals only
    avg_logprob: float = 0.0  # finals only
    stats: dict[str, float] = field(default_factory=dict)  # encoder positions etc., for benchmarks
    coverage: Coverage = Coverage()  # finals only: what the coverage checks did
    language: str = "en"  # the language it was decoded in
    language_probability: float | None = None  # of that language, when the job detected it


def max_new_tokens(config: StreamConfig, seconds: float, n_prefix: int, extra: int = 10) -> int:
    """Loop guard: at most max_tokens_per_s per second of audio plus `extra`, the prefix included."""
    return max(1, math.ceil(config.max_tokens_per_s * seconds) + extra - n_prefix)
