"""Model work of streaming sessions, batched: encoder passes, decoding, word alignment.

Sessions describe the work they need as jobs; `Engine.run` does any list of jobs, from any
number of sessions, in as few forward passes as it can. A scheduler (captioner.server) batches
the jobs of all its sessions this way; a lone session runs its own jobs one list at a time.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.decoder.decoding import PUNCTUATION, DecodingOptions, DecodingResult, decode_with_draft
from captioner.decoder.network import Cross
from captioner.decoder.timing import Alignment, WordTiming, attention_peaks, merge_punctuations, word_timings
from captioner.encoder.streaming import EncoderCache, encode_after_context, encode_cached
from captioner.model.whisper import Model

from .config import StreamConfig
from .coverage import Coverage, Voice, first_gap, unbacked, uncovered_s
from .features import FRAMES_PER_SECOND, PAD_VALUE

__all__ = ["UpdateJob", "FinalJob", "Job", "Hypothesis", "Engine"]

JUMP_BACK_POSITIONS = 50  # 1 s of encoder positions
LOOP_TOKENS = 8  # a jump back that lasts this many tokens (or to the end) is a loop
PEAK_WINDOW = 5  # tokens: how far the text has got is the running maximum of peaks' medians over this many
REPEAT_NGRAM = 10  # tokens: a run this long said twice in a segment is a decoding loop
TAIL_REPEAT = 5  # tokens: a segment that ends by saying this many of its tokens again is looping
COVERAGE_GAIN_S = 0.1  # a continuation of a final is kept when it covers at least this much more voiced audio...
CONTINUATION_PROBABILITY = 0.15  # ...and the words it found are this probable on average (not a forced guess)


@dataclass
class UpdateJob:
    """Re-decode an open segment after new audio: greedy, the stable prefix forced, the old tail as draft."""

    mel: Tensor  # (n_mels, n) normalised frames of the segment so far, n even
    prompt: list[int]  # previous finals' tokens
    prefix: list[int]  # stable tokens
    draft: list[int]  # the previous hypothesis after the prefix
    max_new_tokens: int
    encoder_cache: EncoderCache | None = None  # the segment's encoder state (cached strategy, or cached context)
    context: int = 0  # leading prefix tokens that are earlier segments' finals (mel starts with their audio)
    context_positions: int = 0  # encoder positions of that earlier audio


@dataclass
class FinalJob:
    """Decode a whole segment with full context: beam search, the stable prefix forced."""

    mel: Tensor  # (n_mels, n) the segment, n even
    prompt: list[int]
    prefix: list[int]
    max_new_tokens: int  # 0: the final is exactly the prefix
    context: int = 0  # leading prefix tokens that are earlier segments' finals (mel starts with their audio)
    encoder_cache: EncoderCache | None = None  # the segment's cached context block, when finals reuse it
    context_positions: int = 0
    voice: Voice | None = None  # the segment's voice activity, on the mel's clock: checks the final's coverage


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


class Engine:
    """Owns the model for a set of sessions; not thread-safe (one scheduler thread calls it)."""

    def __init__(self, model: Model, config: StreamConfig = StreamConfig()) -> None:
        self.model = model
        self.config = config
        self.pad_frames = 2 * round(config.padding_s * FRAMES_PER_SECOND / 2)
        self.partial_pad_frames = 2 * round(config.partial_padding_s * FRAMES_PER_SECOND / 2)
        self.chunk_positions = round(config.chunk_s * FRAMES_PER_SECOND / 2)

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

    # -- encoding -----------------------------------------------------------------------------

    def _window(self, mel: Tensor, pad_frames: int) -> Tensor:
        """Full-context encoder output of the frames plus pad_frames of 0.0: (1, S, D)."""
        total = min(mel.shape[1] + pad_frames, self.model.max_frames)
        return self.model.encode(F.pad(mel, (0, total - mel.shape[1]), value=PAD_VALUE)[None])

    def _encode(self, jobs: list[Job]) -> tuple[Tensor, Tensor, Cross, list[float]]:
        """Encoder outputs padded to one batch (B, S, D), their lengths, the decoder's cross-attention
        keys/values of them (padded alike), and the encoder positions computed per job."""
        outputs, crosses, computed = [], [], []
        for job in jobs:
            pad_frames = self.partial_pad_frames if isinstance(job, UpdateJob) else self.pad_frames
            if job.encoder_cache is not None:
                before = job.encoder_cache.n_encoded
                mel = job.mel.to(self.model.device, self.model.dtype)
                encoder, cache, tail = self.model.network.encoder, job.encoder_cache, pad_frames // 2
                if self.config.strategy == "cached":
                    out = encode_cached(encoder, cache, mel, self.chunk_positions, tail)
                else:
                    out = encode_after_context(encoder, cache, mel, job.context_positions, tail)
                computed.append(cache.n_encoded - before)
                crosses.append(self._cross_after_cache(cache, out))
            else:
                out = self._window(job.mel, pad_frames)
                computed.append(out.shape[1])
                crosses.append(self.model.network.decoder.cross_memory(out))
            outputs.append(out[0])
        lengths = torch.tensor([o.shape[0] for o in outputs], device=self.model.device)
        width = int(lengths.max())
        memory = torch.stack([F.pad(o, (0, 0, 0, width - o.shape[0])) for o in outputs])
        cross = crosses[0] if len(crosses) == 1 else [
            (torch.cat([F.pad(c[layer][0], (0, width - c[layer][0].shape[-1])) for c in crosses]),
             torch.cat([F.pad(c[layer][1], (0, 0, 0, width - c[layer][1].shape[-2])) for c in crosses]))
            for layer in range(len(crosses[0]))
        ]
        return memory, lengths, cross, computed

    def _cross_after_cache(self, cache: EncoderCache, out: Tensor) -> Cross:
        """Cross-attention keys/values of out (1, S, D), whose first cache.n_done positions are the cache's
        output: those are projected once, when they enter the cache, and kept there."""
        decoder = self.model.network.decoder
        kept = cache.cross[0][0].shape[-1] if cache.cross else 0
        if kept < cache.n_done:
            new = decoder.cross_memory(out[:, kept : cache.n_done])
            cache.cross = _joined(cache.cross, new) if kept else new
        rest = decoder.cross_memory(out[:, cache.n_done :])
        return _joined(cache.cross, rest) if cache.n_done else rest

    # -- decoding -----------------------------------------------------------------------------

    def _updates(self, jobs: list[UpdateJob]) -> list[Hypothesis]:
        memory, lengths, cross, computed = self._encode(jobs)
        model = self.model
        drafts = decode_with_draft(
            model.network.decoder, model.tokenizer, memory, model.suppress_tokens, model.alignment_heads,
            [job.prompt for job in jobs], [job.prefix for job in jobs], [job.draft for job in jobs],
            [job.max_new_tokens for job in jobs], lengths, cross,
        )
        tokens, words, probabilities = [], [], []
        for job, draft in zip(jobs, drafts):
            n_audio = job.mel.shape[1] // 2
            scores = draft.scores.float()
            said = job.prefix + draft.tokens
            new = draft.tokens[: supported_length(attention_peaks(scores), said, len(job.prefix), n_audio)]
            new = trim_repetition(new[: repeat_start(job.prefix + new, len(job.prefix)) - len(job.prefix)])
            tokens.append(job.prefix + new)
            probabilities.append([1.0] * len(job.prefix) + draft.probabilities[: len(new)])
            words.append(word_timings(model.tokenizer, tokens[-1], scores[:, : len(tokens[-1]) + 1, :n_audio],
                                      probabilities[-1]))
        return [
            Hypothesis(*_without_context(job.context, t, w, p), d.finished,
                       stats={"encoder_positions": c, "decoder_steps": d.n_steps + 1})
            for job, t, w, p, d, c in zip(jobs, tokens, words, probabilities, drafts, computed)
        ]

    def _finals(self, jobs: list[FinalJob], beam: int) -> list[Hypothesis]:
        memory, lengths, cross, computed = self._encode(jobs)
        audio = _Audio(memory, lengths, cross)
        options = DecodingOptions(beam_size=beam)
        results = self._search(audio, jobs, options, [job.prefix for job in jobs], [job.max_new_tokens for job in jobs])
        tokens = [_said(job.prefix, result.tokens) for job, result in zip(jobs, results)]
        alignments = self._align_supported(audio, jobs, tokens, [len(job.prefix) for job in jobs])
        drafts = [_Draft(t, a) for t, a in zip(tokens, alignments)]
        self._cover(audio, jobs, drafts, options)
        return [
            Hypothesis(*_without_context(job.context, d.tokens, d.alignment.words, [1.0] * len(d.tokens)), r.finished,
                       r.no_speech_prob, r.avg_logprob, stats={"encoder_positions": c}, coverage=d.coverage)
            for job, d, r, c in zip(jobs, drafts, results, computed)
        ]

    def _search(
        self, audio: _Audio, jobs: list[FinalJob], options: DecodingOptions, prefixes: list[list[int]],
        budgets: list[int],
    ) -> list[DecodingResult]:
        return self.model.decode(
            audio.memory, options, prompts=[job.prompt for job in jobs], prefixes=prefixes, max_new_tokens=budgets,
            memory_lengths=audio.lengths, cross=audio.cross,
        )

    def _align_supported(
        self, audio: _Audio, jobs: list[FinalJob], tokens: list[list[int]], n_forced: list[int]
    ) -> list[Alignment]:
        """Alignments of the tokens; a final that reads part of its audio a second time (after its n_forced
        tokens) is cut where its attention jumps back, and aligned again (tokens are cut in place)."""
        alignments = self._align(audio, jobs, tokens)
        redo = []
        for i, (alignment, n) in enumerate(zip(alignments, n_forced)):
            keep = n + supported_length(alignment.peaks, tokens[i], n)
            if keep < len(tokens[i]):
                tokens[i] = tokens[i][:keep]
                redo.append(i)
        if redo:
            again = self._align(audio.pick(redo), [jobs[i] for i in redo], [tokens[i] for i in redo])
            for i, alignment in zip(redo, again):
                alignments[i] = alignment
        return alignments

    def _align(self, audio: _Audio, jobs: list[FinalJob], tokens: list[list[int]]) -> list[Alignment]:
        frames = [job.mel.shape[1] for job in jobs]
        return self.model.align(audio.memory, frames, tokens, audio.lengths, audio.cross)

    # -- coverage of finals ---------------------------------------------------------------------

    def _cover(self, audio: _Audio, jobs: list[FinalJob], drafts: list[_Draft], options: DecodingOptions) -> None:
        """Finals say what was said, all of it: words no audio backs are removed, and decoding goes on over
        voiced audio that no word covers (stream/coverage.py), at most max_continuations times."""
        checked = [i for i, job in enumerate(jobs) if job.voice is not None and job.max_new_tokens > 0]
        self._drop_unbacked(audio, jobs, drafts, checked)
        for _ in range(self.config.max_continuations):
            gaps = {}
            for i in checked:
                words = merge_punctuations(drafts[i].alignment.words)
                n_fixed = _n_words(words, len(jobs[i].prefix))
                k = first_gap(words, jobs[i].voice, self.config.coverage_gap_s, n_fixed)
                if k is not None:
                    gaps[i] = ([t for word in words[:k] for t in word.tokens], words[k - 1].end)
            if not gaps:
                break
            index = list(gaps)
            part, part_jobs = audio.pick(index), [jobs[i] for i in index]
            prefixes = [gaps[i][0] for i in index]
            budgets = [max_new_tokens(self.config, jobs[i].mel.shape[1] / FRAMES_PER_SECOND - gaps[i][1], 0)
                       for i in index]
            results = self._search(part, part_jobs, replace(options, no_end_before_word=True), prefixes, budgets)
            tokens = [_said(prefix, result.tokens) for prefix, result in zip(prefixes, results)]
            alignments = self._align_supported(part, part_jobs, tokens, [len(p) for p in prefixes])
            candidates = [_Draft(t, a) for t, a in zip(tokens, alignments)]
            self._drop_unbacked(part, part_jobs, candidates, list(range(len(index))))
            checked = []
            for i, candidate, prefix in zip(index, candidates, prefixes):
                voice = jobs[i].voice
                assert voice is not None
                old, new = merge_punctuations(drafts[i].alignment.words), merge_punctuations(candidate.alignment.words)
                found = new[_n_words(new, len(prefix)) :]
                sure = statistics.fmean(w.probability for w in found) >= CONTINUATION_PROBABILITY if found else False
                if sure and uncovered_s(new, voice) < uncovered_s(old, voice) - COVERAGE_GAIN_S:
                    drafts[i] = replace(candidate, coverage=replace(
                        drafts[i].coverage, continuations=drafts[i].coverage.continuations + 1,
                        words_added=drafts[i].coverage.words_added + max(0, len(new) - len(old)),
                        words_removed=drafts[i].coverage.words_removed + candidate.coverage.words_removed))
                    checked.append(i)
        for i, job in enumerate(jobs):
            if job.voice is not None:
                words = merge_punctuations(drafts[i].alignment.words)
                shown = range(_n_words(words, job.context), _n_words(words, len(job.prefix)))
                kept = len(unbacked(words, job.voice).intersection(shown))
                drafts[i].coverage = replace(drafts[i].coverage, unbacked_kept=kept)

    def _drop_unbacked(self, audio: _Audio, jobs: list[FinalJob], drafts: list[_Draft], index: list[int]) -> None:
        """Remove the words of drafts[index] that no audio backs (never the job's prefix), and align again."""
        changed = []
        for i in index:
            voice = jobs[i].voice
            assert voice is not None
            words = merge_punctuations(drafts[i].alignment.words)
            n_fixed = _n_words(words, len(jobs[i].prefix))
            drop = {k for k in unbacked(words, voice) if k >= n_fixed}
            if drop:
                drafts[i].tokens = [t for k, word in enumerate(words) if k not in drop for t in word.tokens]
                drafts[i].coverage = replace(drafts[i].coverage,
                                             words_removed=drafts[i].coverage.words_removed + len(drop))
                changed.append(i)
        if changed:
            again = self._align(audio.pick(changed), [jobs[i] for i in changed], [drafts[i].tokens for i in changed])
            for i, alignment in zip(changed, again):
                drafts[i].alignment = alignment


@dataclass(frozen=True)
class _Audio:
    """Encoder outputs of a batch of jobs (B, S, D), their valid lengths (B,) and cross-attention keys/values."""

    memory: Tensor
    lengths: Tensor
    cross: Cross

    def pick(self, index: list[int]) -> _Audio:
        if index == list(range(self.memory.shape[0])):
            return self
        rows = torch.tensor(index, device=self.memory.device)
        return _Audio(self.memory[rows], self.lengths[rows], [(k[rows], v[rows]) for k, v in self.cross])


@dataclass
class _Draft:
    """A final in the making: its tokens (the job's prefix first), their alignment, and what coverage did."""

    tokens: list[int]
    alignment: Alignment
    coverage: Coverage = Coverage()


def _said(prefix: list[int], tokens: list[int]) -> list[int]:
    """The prefix and decoded tokens, without a trailing loop or a run that says again what was said."""
    said = prefix + trim_repetition(tokens)
    return said[: max(len(prefix), repeat_start(said, len(prefix)))]


def _n_words(words: list[WordTiming], n_tokens: int) -> int:
    """Leading words that hold any of the first n_tokens tokens."""
    count = covered = 0
    for word in words:
        if covered >= n_tokens:
            break
        covered += len(word.tokens)
        count += 1
    return count


def _joined(first: Cross, second: Cross) -> Cross:
    """Cross-attention keys/values of two runs of encoder positions, one after the other."""
    return [(torch.cat([k1, k2], dim=-1), torch.cat([v1, v2], dim=-2)) for (k1, v1), (k2, v2) in zip(first, second)]


def _without_context(
    n: int, tokens: list[int], words: list[WordTiming], probabilities: list[float]
) -> tuple[list[int], list[WordTiming], list[float]]:
    """The hypothesis after its first n tokens (earlier segments' text, decoded as context).

    Punctuation right after the context ends the earlier segment's sentence: it is left out too.
    """
    k = covered = 0
    while k < len(words) and (covered < n or (n and _is_punctuation(words[k].word))):
        covered += len(words[k].tokens)
        k += 1
    return tokens[covered:], words[k:], probabilities[covered:]


def _is_punctuation(word: str) -> bool:
    return bool(word.strip()) and all(c in PUNCTUATION for c in word.strip())


def max_new_tokens(config: StreamConfig, seconds: float, n_prefix: int, extra: int = 10) -> int:
    """Loop guard: at most max_tokens_per_s per second of audio plus `extra`, the prefix included."""
    return max(1, math.ceil(config.max_tokens_per_s * seconds) + extra - n_prefix)


def supported_length(peaks: list[int], tokens: list[int], n_prefix: int, n_audio: int | None = None) -> int:
    """How many new tokens (after n_prefix) the audio supports, judged by where the alignment heads look.

    peaks[k] is the audio position the query predicting tokens[k] attends to most. A hypothesis may
    run on into text the audio does not hold: words read into the silence padding (a peak at or
    past n_audio), or a loop back over earlier words: the peaks jump back more than a second behind
    the text so far, for LOOP_TOKENS tokens or up to the end, and the text there says again what it
    said before. A short jump back is not a loop: repeated phrases ("it was the ...") and the last
    tokens of a segment draw the heads back for a token or two. How far the text has got is judged
    on peaks smoothed over PEAK_WINDOW tokens: a single query may look far ahead (the full stop of
    "Mr." at a later "Mr."), and taken alone, that would make all that follows look like a loop.
    Tokens from the first unsupported one on are dropped (after AlignAtt's stopping rule in SimulStreaming).
    """
    n_tokens = len(tokens)
    smoothed = [statistics.median_low(peaks[max(0, k - PEAK_WINDOW // 2) : k + PEAK_WINDOW // 2 + 1])
                for k in range(n_tokens)]
    furthest = max(smoothed[:n_prefix], default=0)
    for k in range(n_prefix, n_tokens):
        if n_audio is not None and peaks[k] >= n_audio:
            return k - n_prefix
        ahead = peaks[k : min(n_tokens, k + LOOP_TOKENS)]
        if tokens[k] in tokens[:k] and all(peak < furthest - JUMP_BACK_POSITIONS for peak in ahead):
            return k - n_prefix
        furthest = max(furthest, smoothed[k])
    return n_tokens - n_prefix


def repeat_start(tokens: list[int], start: int) -> int:
    """Where, at or after `start`, tokens begin to say again what they said before; len(tokens) if nowhere.

    A decoder that has lost its place in the audio reads the segment again. Speech within one
    segment practically never repeats REPEAT_NGRAM tokens anywhere, nor ends by repeating
    TAIL_REPEAT tokens of its own (the tail loop of a final that runs past the speech).
    """
    n = REPEAT_NGRAM
    seen: set[tuple[int, ...]] = set()
    found = len(tokens)
    for j in range(len(tokens) - n + 1):
        run = tuple(tokens[j : j + n])
        if j >= start and run in seen:
            found = j
            break
        seen.add(run)
    for j in range(start, min(found, len(tokens) - TAIL_REPEAT + 1)):
        tail = tokens[j:]
        if any(tokens[i : i + len(tail)] == tail for i in range(j - len(tail) + 1)):
            return j
    return found


def trim_repetition(tokens: list[int], times: int = 3, longest: int = 12) -> list[int]:
    """Cut a trailing loop: a run of 1..longest tokens repeated `times` times or more keeps one copy."""
    for period in range(1, longest + 1):
        if len(tokens) < period * times:
            break
        unit = tokens[len(tokens) - period :]
        repeats = 1
        while (repeats + 1) * period <= len(tokens) and tokens[len(tokens) - (repeats + 1) * period : len(tokens) - repeats * period] == unit:
            repeats += 1
        if repeats >= times:
            return tokens[: len(tokens) - (repeats - 1) * period]
    return tokens
