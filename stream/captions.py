"""The event builder: a segment's model results as caption events (partials, finals), with ids and word times."""

from __future__ import annotations

from dataclasses import replace

from captioner.decoder.timing import WordTiming, merge_punctuations
from captioner.decoder.tokenizer import Tokenizer

from .config import StreamConfig
from .coverage import Coverage
from .events import Event, Final, Partial, Word
from .features import FRAMES_PER_SECOND
from .jobs import FinalJob, Hypothesis
from .segments import Said, Segment

__all__ = ["Captions"]

LOG_PROB_THRESHOLD = -1.0  # with no_speech_threshold: a final this unsure and likely silent is dropped
SHORTFALL_WORDS = 3  # a final's first decoding this many words (and a fifth) short of the last partial is reported


class Captions:
    def __init__(self, config: StreamConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.coverage: list[tuple[int, Coverage]] = []  # (segment id, what its final's coverage checks did)
        self._next_id = 0

    def partial(self, segment: Segment, edge: float, result: Hypothesis) -> list[Event]:
        """The partial caption of a segment just updated with `result` (none while it has no text)."""
        text = self.tokenizer.decode(segment.tokens).strip()
        if not text:
            return []
        if segment.id is None:
            segment.id = self._new_id()
        stable = self.tokenizer.decode(segment.stable_tokens).strip()
        words = words_from(segment.update_start / FRAMES_PER_SECOND, result.words[: segment.n_stable])
        return [Partial(segment.id, text, stable, segment.start / FRAMES_PER_SECOND, edge, words, result.language)]

    def final(self, segment: Segment, job: FinalJob, result: Hypothesis, last_update: float
              ) -> tuple[list[Event], Said | None]:
        """The final caption of a segment, and what it said (None when nothing was sent).

        A final with no stable words that the model finds likely silent and is unsure of is dropped;
        last_update: when the segment's last partial was due (seconds), to report a short final."""
        start = segment.start / FRAMES_PER_SECOND
        offset = segment.context_start / FRAMES_PER_SECOND
        end = offset + job.mel.shape[1] / FRAMES_PER_SECOND
        stable = job.prefix[job.context :]
        silent = (
            not stable
            and result.no_speech_prob > self.config.no_speech_threshold
            and result.avg_logprob < LOG_PROB_THRESHOLD
        )
        tokens = stable if silent else result.tokens
        text = self.tokenizer.decode(tokens).strip()
        words = [] if silent else words_from(offset, result.words)
        if not text and segment.id is None:
            return [], None
        if segment.id is None:
            segment.id = self._new_id()
        span = (words[0].start, words[-1].end) if words else (start, end)
        shortfall = self._shortfall(segment, result, words, last_update)
        self.coverage.append((segment.id, replace(result.coverage, shortfall=shortfall)))
        said = Said(tokens, [] if silent else result.words, offset, result.language)
        return [Final(segment.id, text, span[0], span[1], words, result.language)], said

    def carried(self, segment: Segment, edge: float, language: str) -> Partial:
        """The partial of a segment that carries on the words after a cut at the maximum length."""
        segment.id = self._new_id()
        return Partial(segment.id, self.tokenizer.decode(segment.tokens).strip(), "", segment.start / FRAMES_PER_SECOND,
                       edge, language=language)

    def _shortfall(self, segment: Segment, result: Hypothesis, words: list[Word], last_update: float) -> int:
        """Words the segment's last partial showed that the final's first decoding lacked over the same audio,
        when that is substantial (else 0): a sign that the decoding stopped early."""
        shown = len(self.tokenizer.decode(segment.tokens).split())
        decoded = sum(w.start < last_update for w in words) - result.coverage.words_added
        short = shown - max(0, decoded)
        return short if short >= max(SHORTFALL_WORDS, shown / 5) else 0

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1


def words_from(offset: float, timings: list[WordTiming]) -> list[Word]:
    """Caption words from word timings `offset` seconds into the stream, punctuation merged into its word."""
    return [
        Word(w.word.strip(), round(offset + w.start, 3), round(offset + w.end, 3), round(w.probability, 3))
        for w in merge_punctuations(timings)
    ]
