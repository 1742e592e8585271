"""Model work of streaming sessions, batched: encoder passes, decoding, word alignment.

Sessions describe the work they need as jobs; `Engine.run` does any list of jobs, from any
number of sessions, in as few forward passes as it can. A scheduler (captioner.server) batches
the jobs of all its sessions this way; a lone session runs its own jobs one list at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from captioner.decoder.decoding import DecodingOptions, DecodingResult, DecodingRow, DraftResult
from captioner.decoder.rules import is_punctuation
from captioner.decoder.timing import (
    Alignment,
    WordTiming,
    alignment_from_scores,
    attention_peaks,
    word_timings,
)
from captioner.decoder.tokenizer import Tokenizer
from captioner.model.whisper import Model

from .config import StreamConfig
from .covering import CoverageCheck, FinalDraft, Sots, said
from .encoding import Encoded, encoding_for
from .guards import repeat_start, supported_length, trim_repetition
from .jobs import FinalJob, Hypothesis, Job, UpdateJob
from .language import job_languages

__all__ = ["Engine"]

TimingHook = Callable[[str, float], None]  # (part, CPU seconds of this thread)


class Engine:
    """Owns the model for a set of sessions. Several worker threads may call `run` at once (each on its own
    jobs): the engine keeps no state between calls, and torch's modules are read-only here.

    on_timing: told the CPU time of each part of a run ("encoder", "partial decoding", "final decoding",
    "final word alignment", "coverage"); a part run inside another counts for the outer one (bench/profile.py).
    """

    def __init__(self, model: Model, config: StreamConfig = StreamConfig(), on_timing: TimingHook | None = None
                 ) -> None:
        self.model = model
        self.config = config
        self._encode = encoding_for(model, config)
        self._on_timing = on_timing
        self._coverage = CoverageCheck(self)
        self._timing = threading.local()  # per worker thread: the part being timed

    @property
    def tokenizer(self) -> Tokenizer:
        return self.model.tokenizer

    @property
    def n_mels(self) -> int:
        return self.model.n_mels

    @property
    def on_gpu(self) -> bool:
        """Passes run on a GPU (batching pays off differently there)."""
        return self.model.device.type == "cuda"

    def run(self, jobs: list[Job], final_beam: int | None = None) -> list[Hypothesis]:
        """Do the jobs; results come back in the same order. final_beam overrides the configured beam size
        of finals (a server behind real time decodes them greedily)."""
        results: list[Hypothesis | None] = [None] * len(jobs)
        with torch.inference_mode():
            for kind in (FinalJob, UpdateJob):  # each kind in a batch of its own (passes are usually of one kind)
                index = [i for i, job in enumerate(jobs) if isinstance(job, kind)]
                if index:
                    batch = [jobs[i] for i in index]
                    out = self._finals(batch, final_beam or self.config.final_beam) if kind is FinalJob else \
                        self._updates(batch)
                    for i, hypothesis in zip(index, out):
                        results[i] = hypothesis
        return [r for r in results if r is not None]

    @contextmanager
    def _part(self, name: str) -> Iterator[None]:
        """Time a part of the run for on_timing (outermost parts only)."""
        if self._on_timing is None or getattr(self._timing, "part", None):
            yield
            return
        self._timing.part = name
        started = time.thread_time()
        try:
            yield
        finally:
            self._timing.part = None
            self._on_timing(name, time.thread_time() - started)

    def encode(self, jobs: Sequence[Job]) -> Encoded:
        with self._part("encoder"):
            return self._encode(list(jobs))

    # -- decoding -----------------------------------------------------------------------------

    def _updates(self, jobs: list[UpdateJob]) -> list[Hypothesis]:
        audio, model = self.encode(jobs), self.model
        languages = job_languages(self.model, self.config.language_confidence, audio, jobs)
        sots = [model.tokenizer.sot_sequence_for(language, job.task) for job, (language, _) in zip(jobs, languages)]
        drafts = self._verify(audio, jobs, sots)
        tokens, words, probabilities = [], [], []
        for job, draft in zip(jobs, drafts):
            n_audio = job.mel.shape[1] // 2
            scores = draft.scores.float()
            decoded = job.prefix + draft.tokens
            new = draft.tokens[: supported_length(attention_peaks(scores), decoded, len(job.prefix), n_audio)]
            new = trim_repetition(new[: repeat_start(job.prefix + new, len(job.prefix), job.context) - len(job.prefix)])
            tokens.append(job.prefix + new)
            probabilities.append([1.0] * len(job.prefix) + draft.probabilities[: len(new)])
            words.append(word_timings(model.tokenizer, tokens[-1], scores[:, : len(tokens[-1]) + 1, :n_audio],
                                      probabilities[-1]))
        return [
            Hypothesis(*_without_context(job.context, t, w, p), d.finished,
                       stats={"encoder_positions": c, "decoder_steps": d.n_steps + 1}, language=lang[0],
                       language_probability=lang[1])
            for job, t, w, p, d, c, lang in zip(jobs, tokens, words, probabilities, drafts, audio.computed, languages)
        ]

    def _finals(self, jobs: list[FinalJob], beam: int) -> list[Hypothesis]:
        audio, model = self.encode(jobs), self.model
        languages = job_languages(model, self.config.language_confidence, audio, jobs)
        sots = [model.tokenizer.sot_sequence_for(language, job.task) for job, (language, _) in zip(jobs, languages)]
        options = DecodingOptions(beam_size=beam)
        # speech was heard: a final whose prefix holds no word of its own segment (only earlier segments' text,
        # as context) may not end on the punctuation that closes the context's sentence; one whose words are
        # all stable already may end at once
        no_end = [len(job.prefix) <= job.context for job in jobs]
        results: list[DecodingResult] | list[DraftResult]
        drafted = None
        if beam == 1:  # greedy (a server behind real time): verify the last hypothesis, keep the attention
            results = drafted = self._verify(audio, jobs, sots, no_end, exact=True)
        else:
            results = self.search(audio, jobs, sots, options, [job.prefix for job in jobs],
                                   [job.max_new_tokens for job in jobs], no_end)
        tokens = [said(job.prefix, result.tokens, job.context) for job, result in zip(jobs, results)]
        alignments = self.align_supported(audio, jobs, sots, tokens, [len(job.prefix) for job in jobs], drafted)
        drafts = [FinalDraft(t, a) for t, a in zip(tokens, alignments)]
        with self._part("coverage"):
            self._coverage.check(audio, jobs, sots, drafts, options)
        return [
            Hypothesis(*_without_context(job.context, d.tokens, d.alignment.words, [1.0] * len(d.tokens)), r.finished,
                       r.no_speech_prob, r.avg_logprob, stats={"encoder_positions": c}, coverage=d.coverage,
                       language=lang[0], language_probability=lang[1])
            for job, d, r, c, lang in zip(jobs, drafts, results, audio.computed, languages)
        ]

    def _verify(self, audio: Encoded, jobs: Sequence[Job], sots: Sots, no_end_before_word: list[bool] | None = None,
                exact: bool = False) -> list[DraftResult]:
        """Greedy decoding of the jobs, each checking its draft in the first pass (Model.decode_drafts). A row does
        not end while it has sampled only punctuation where no_end_before_word says so (by default: one with a
        prefix)."""
        no_end = no_end_before_word or [bool(job.prefix) for job in jobs]
        rows = [DecodingRow(job.prompt, job.prefix, job.draft, job.max_new_tokens, sot, job.vocabulary, rule)
                for job, sot, rule in zip(jobs, sots, no_end)]
        with self._part("final decoding" if exact else "partial decoding"):
            return self.model.decode_drafts(audio.memory, rows, audio.lengths, audio.cross, exact)

    def search(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, options: DecodingOptions,
                prefixes: list[list[int]], budgets: list[int], no_end_before_word: list[bool]) -> list[DecodingResult]:
        """The options' search over the jobs, each from its prefix within its budget (Model.decode)."""
        rows = [DecodingRow(job.prompt, prefix, [], budget, sot, job.vocabulary, rule)
                for job, prefix, budget, sot, rule in zip(jobs, prefixes, budgets, sots, no_end_before_word)]
        with self._part("final decoding"):
            return self.model.decode(audio.memory, rows, options, audio.lengths, audio.cross)

    def align_supported(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, tokens: list[list[int]],
                         n_forced: list[int], drafted: list[DraftResult] | None = None) -> list[Alignment]:
        """Alignments of the tokens; a final that reads part of its audio a second time (after its n_forced
        tokens) is cut where its attention jumps back, and aligned again (tokens are cut in place).
        drafted: the greedy decoding that gave the tokens, whose attention scores align them with no extra pass."""
        alignments = self.align(audio, jobs, sots, tokens, drafted=drafted)
        redo = []
        for i, (alignment, n) in enumerate(zip(alignments, n_forced)):
            keep = n + supported_length(alignment.peaks, tokens[i], n)
            if keep < len(tokens[i]):
                tokens[i] = tokens[i][:keep]
                redo.append(i)
        if redo:
            for i, again in zip(redo, self.align(audio, jobs, sots, tokens, redo, drafted)):
                alignments[i] = again
        return alignments

    def align(self, audio: Encoded, jobs: list[FinalJob], sots: Sots, tokens: list[list[int]],
               rows: list[int] | None = None, drafted: list[DraftResult] | None = None) -> list[Alignment]:
        """Alignments of tokens[i] for the jobs of `rows` (all by default). From a decoding's scores (drafted), each
        row's tokens must be a beginning of its prefix and decoded tokens: the decoder is causal, so the scores of
        a sequence hold those of each of its beginnings."""
        rows = list(range(len(jobs))) if rows is None else rows
        if drafted is None:
            frames = [jobs[i].mel.shape[1] for i in rows]
            part = audio.pick(rows)
            with self._part("final word alignment"):
                return self.model.align(part.memory, frames, [tokens[i] for i in rows], part.lengths, part.cross,
                                        [sots[i] for i in rows])
        out = []
        for i in rows:
            n, probabilities = len(tokens[i]), [1.0] * len(jobs[i].prefix) + drafted[i].probabilities
            scores = drafted[i].scores[:, : n + 1, : jobs[i].mel.shape[1] // 2].float()
            out.append(alignment_from_scores(self.model.tokenizer, tokens[i], scores, probabilities[:n]))
        return out

def _without_context(
    n: int, tokens: list[int], words: list[WordTiming], probabilities: list[float]
) -> tuple[list[int], list[WordTiming], list[float]]:
    """The hypothesis after its first n tokens (earlier segments' text, decoded as context).

    Punctuation right after the context ends the earlier segment's sentence: it is left out too.
    """
    k = covered = 0
    while k < len(words) and (covered < n or (n and is_punctuation(words[k].word))):
        covered += len(words[k].tokens)
        k += 1
    return tokens[covered:], words[k:], probabilities[covered:]
