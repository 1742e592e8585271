"""The coverage check of finals, with the model: a final says what was said, all of it.

Words that no voiced audio backs are removed, and decoding goes on over voiced audio that no word
covers, at most max_continuations times (the rules, without the model, are in stream/coverage.py).
The engine runs it on each batch of finals after their first decoding and alignment.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Protocol

from captioner.decoder.decoding import DecodingOptions, DecodingResult
from captioner.decoder.timing import Alignment, WordTiming, merge_punctuations

from .config import StreamConfig
from .coverage import Coverage, first_gap, retime, unbacked, uncovered_s
from .encoding import Encoded
from .features import FRAMES_PER_SECOND
from .guards import repeat_start, trim_repetition
from .jobs import FinalJob, max_new_tokens

__all__ = ["CoverageCheck", "FinalDecoder", "FinalDraft", "Sots", "said", "n_words"]

Sots = list[tuple[int, ...]]  # per job, the start-of-transcript sequence: its language and task
COVERAGE_GAIN_S = 0.1  # a continuation of a final is kept when it covers at least this much more voiced audio...
CONTINUATION_PROBABILITY = 0.15  # ...and the words it found are this probable on average (not a forced guess)


@dataclass
class FinalDraft:
    """A final in the making: its tokens (the job's prefix first), their alignment, and what coverage did."""

    tokens: list[int]
    alignment: Alignment
    coverage: Coverage = Coverage()


class FinalDecoder(Protocol):
    """What the check needs of the engine: its configuration, its search and its alignment of finals."""

    config: StreamConfig

    def search(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, options: DecodingOptions,
               prefixes: list[list[int]], budgets: list[int], no_end_before_word: list[bool]
               ) -> list[DecodingResult]: ...

    def align_supported(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, tokens: list[list[int]],
                        n_forced: list[int]) -> list[Alignment]: ...

    def align(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, tokens: list[list[int]]) -> list[Alignment]: ...


class CoverageCheck:
    """Runs the coverage check of finals through an engine's search and alignment."""

    def __init__(self, engine: FinalDecoder) -> None:
        self.engine = engine

    def check(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, drafts: list[FinalDraft],
              options: DecodingOptions) -> None:
        """Check each job's draft (in place): unbacked words removed, uncovered voiced audio decoded again."""
        checked = [i for i, job in enumerate(jobs) if job.activity is not None and job.max_new_tokens > 0]
        self._drop_unbacked(audio, jobs, sots, drafts, checked)
        for _ in range(self.engine.config.max_continuations):
            gaps = {}
            for i in checked:
                words = merge_punctuations(drafts[i].alignment.words)
                n_fixed = n_words(words, len(jobs[i].prefix))
                k = first_gap(words, jobs[i].activity, self.engine.config.coverage_gap_s, n_fixed)
                if k is not None:
                    gaps[i] = ([t for word in words[:k] for t in word.tokens], words[k - 1].end)
            if not gaps:
                break
            index = list(gaps)
            part, part_jobs, part_sots = audio.pick(index), [jobs[i] for i in index], [sots[i] for i in index]
            prefixes = [gaps[i][0] for i in index]
            budgets = [max_new_tokens(self.engine.config, jobs[i].mel.shape[1] / FRAMES_PER_SECOND - gaps[i][1], 0)
                       for i in index]
            # voiced audio that no word covers waits after the prefix: the search may not end before a word
            results = self.engine.search(part, part_jobs, part_sots, options, prefixes, budgets, [True] * len(index))
            tokens = [said(prefix, result.tokens, job.context)
                      for prefix, result, job in zip(prefixes, results, part_jobs)]
            alignments = self.engine.align_supported(part, part_jobs, part_sots, tokens, [len(p) for p in prefixes])
            candidates = [FinalDraft(t, a) for t, a in zip(tokens, alignments)]
            self._drop_unbacked(part, part_jobs, part_sots, candidates, list(range(len(index))))
            checked = []
            for i, candidate, prefix in zip(index, candidates, prefixes):
                activity = jobs[i].activity
                assert activity is not None
                old, new = merge_punctuations(drafts[i].alignment.words), merge_punctuations(candidate.alignment.words)
                found = new[n_words(new, len(prefix)) :]
                sure = statistics.fmean(w.probability for w in found) >= CONTINUATION_PROBABILITY if found else False
                if sure and uncovered_s(new, activity) < uncovered_s(old, activity) - COVERAGE_GAIN_S:
                    drafts[i] = replace(candidate, coverage=replace(
                        drafts[i].coverage, continuations=drafts[i].coverage.continuations + 1,
                        words_added=drafts[i].coverage.words_added + max(0, len(new) - len(old)),
                        words_removed=drafts[i].coverage.words_removed + candidate.coverage.words_removed))
                    checked.append(i)
        for i, job in enumerate(jobs):
            if job.activity is not None:
                alignment = drafts[i].alignment
                drafts[i].alignment = replace(alignment, words=retime(alignment.words, job.activity))
                words = merge_punctuations(drafts[i].alignment.words)
                shown = range(n_words(words, job.context), n_words(words, len(job.prefix)))
                kept = len(unbacked(words, job.activity).intersection(shown))
                drafts[i].coverage = replace(drafts[i].coverage, unbacked_kept=kept)

    def _drop_unbacked(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, drafts: list[FinalDraft],
                       index: list[int]) -> None:
        """Remove the words of drafts[index] that no audio backs (never the job's prefix), and align again."""
        changed = []
        for i in index:
            activity = jobs[i].activity
            assert activity is not None
            words = merge_punctuations(drafts[i].alignment.words)
            n_fixed = n_words(words, len(jobs[i].prefix))
            drop = {k for k in unbacked(words, activity) if k >= n_fixed}
            if drop:
                drafts[i].tokens = [t for k, word in enumerate(words) if k not in drop for t in word.tokens]
                drafts[i].coverage = replace(drafts[i].coverage,
                                             words_removed=drafts[i].coverage.words_removed + len(drop))
                changed.append(i)
        if changed:
            again = self.engine.align(audio.pick(changed), [jobs[i] for i in changed], [sots[i] for i in changed],
                                [drafts[i].tokens for i in changed])
            for i, alignment in zip(changed, again):
                drafts[i].alignment = alignment


def said(prefix: list[int], tokens: list[int], context: int) -> list[int]:
    """The prefix and decoded tokens, without a trailing loop or a run that says again what the segment said
    (the prefix's first `context` tokens are earlier segments' text)."""
    said = prefix + trim_repetition(tokens)
    return said[: max(len(prefix), repeat_start(said, len(prefix), context))]


def n_words(words: list[WordTiming], n_tokens: int) -> int:
    """Leading words that hold any of the first n_tokens tokens."""
    count = covered = 0
    for word in words:
        if covered >= n_tokens:
            break
        covered += len(word.tokens)
        count += 1
    return count
