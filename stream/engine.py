"""Model work of streaming sessions, batched: encoder passes, decoding, word alignment.

Sessions describe the work they need as jobs; `Engine.run` does any list of jobs, from any
number of sessions, in as few forward passes as it can. A scheduler (captioner.server) batches
the jobs of all its sessions this way; a lone session runs its own jobs one list at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.decoder.decoding import PUNCTUATION, DecodingOptions, decode_with_draft
from captioner.decoder.model import Cross
from captioner.decoder.timing import Alignment, WordTiming, attention_peaks, word_timings
from captioner.encoder.streaming import EncoderCache, encode_after_context, encode_cached

from .config import StreamConfig
from .features import FRAMES_PER_SECOND, PAD_VALUE
from .model import Model

__all__ = ["UpdateJob", "FinalJob", "Job", "Hypothesis", "Engine"]

JUMP_BACK_POSITIONS = 50  # 1 s of encoder positions
LOOP_TOKENS = 8  # a jump back that lasts this many tokens (or to the end) is a loop
REPEAT_NGRAM = 10  # tokens: a run this long said twice in a segment is a decoding loop
TAIL_REPEAT = 5  # tokens: a segment that ends by saying this many of its tokens again is looping


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
            for kind in (FinalJob, UpdateJob):  # finals first: they are the ones users wait for
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
        options = DecodingOptions(beam_size=beam)
        results = self.model.decode(
            memory, options, prompts=[job.prompt for job in jobs], prefixes=[job.prefix for job in jobs],
            max_new_tokens=[job.max_new_tokens for job in jobs], memory_lengths=lengths, cross=cross,
        )
        tokens = []
        for job, result in zip(jobs, results):
            said = job.prefix + trim_repetition(result.tokens)
            tokens.append(said[: max(len(job.prefix), repeat_start(said, len(job.prefix)))])
        alignments = self._align(memory, lengths, cross, jobs, tokens)
        # a final that reads part of its audio a second time is cut where its attention jumps back
        redo = []
        for i, (job, alignment) in enumerate(zip(jobs, alignments)):
            keep = len(job.prefix) + supported_length(alignment.peaks, tokens[i], len(job.prefix))
            if keep < len(tokens[i]):
                tokens[i] = tokens[i][:keep]
                redo.append(i)
        if redo:
            picked = torch.tensor(redo, device=memory.device)
            again = self._align(memory[picked], lengths[picked], [(k[picked], v[picked]) for k, v in cross],
                                [jobs[i] for i in redo], [tokens[i] for i in redo])
            for i, alignment in zip(redo, again):
                alignments[i] = alignment
        words = [a.words for a in alignments]
        return [
            Hypothesis(*_without_context(job.context, t, w, [1.0] * len(t)), r.finished, r.no_speech_prob,
                       r.avg_logprob, stats={"encoder_positions": c})
            for job, t, w, r, c in zip(jobs, tokens, words, results, computed)
        ]

    def _align(
        self, memory: Tensor, lengths: Tensor, cross: Cross, jobs: list[Job], tokens: list[list[int]]
    ) -> list[Alignment]:
        frames = [job.mel.shape[1] for job in jobs]
        return self.model.align(memory, frames, tokens, lengths, cross)


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
    tokens of a segment draw the heads back for a token or two. Tokens from the first unsupported
    one on are dropped (after AlignAtt's stopping rule in SimulStreaming).
    """
    n_tokens = len(tokens)
    furthest = max(peaks[:n_prefix], default=0)
    for k in range(n_prefix, n_tokens):
        if n_audio is not None and peaks[k] >= n_audio:
            return k - n_prefix
        ahead = peaks[k : min(n_tokens, k + LOOP_TOKENS)]
        if tokens[k] in tokens[:k] and all(peak < furthest - JUMP_BACK_POSITIONS for peak in ahead):
            return k - n_prefix
        furthest = max(furthest, peaks[k])
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
