"""Word timestamps from the cross-attention of alignment heads, by dynamic time warping.

As in openai-whisper: teacher-force the text, take the alignment heads' attention over the
audio, normalise it per audio frame, median-filter it over time, and find the monotonic path of
least cost through (tokens x frames); a word starts where the path first enters its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .network import Cross, TextDecoder
from .tokenizer import Tokenizer

__all__ = ["Alignment", "attention_peaks", "WordTiming", "TOKENS_PER_SECOND", "dtw", "median_filter", "find_alignment",
           "alignment_from_scores", "word_timings", "merge_punctuations"]

TOKENS_PER_SECOND = 50  # encoder positions per second of audio
MEDFILT_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class Alignment:
    words: list["WordTiming"]
    peaks: list[int]  # per text token: the audio position its predicting query attends to most


@dataclass
class WordTiming:
    word: str  # with its leading space, as decoded
    tokens: list[int]
    start: float  # seconds from the start of the encoded audio
    end: float
    probability: float  # mean probability of the word's tokens


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-cost monotonic path through cost (N, M) from (0, 0) to (N-1, M-1).

    Returns the row and column index of each step. Each row of the accumulated cost is computed
    in one vectorised pass: within a row, D[i, j] = S[j] + min over k <= j of (A[k] - S[k-1]),
    where S is the running sum of cost[i-1] and A[k] the best of the two cells above.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    trace[0, :] = 2
    trace[:, 0] = 1
    for i in range(1, n + 1):
        diag, up = acc[i - 1, :-1], acc[i - 1, 1:]
        best_above = np.minimum(diag, up)
        running = np.cumsum(cost[i - 1])
        shifted = np.concatenate([[0.0], running[:-1]])
        acc[i, 1:] = running + np.minimum.accumulate(best_above - shifted)
        left = acc[i, :-1]
        row = np.full(m, 2, dtype=np.int8)
        row[(up < diag) & (up < left)] = 1
        row[(diag < up) & (diag < left)] = 0
        trace[i, 1:] = row
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of odd width along the last dimension, reflect-padded.

    An odd-even transposition sorting network over the window's shifted views: elementwise min/max
    only, several times faster on CPUs than a median over unfolded windows, and exact.
    """
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    flat = x.reshape(-1, x.shape[-1])
    padded = torch.nn.functional.pad(flat, (pad, pad), mode="reflect")
    n = flat.shape[-1]
    lanes = [padded[:, k : k + n] for k in range(width)]
    for round_ in range(width):
        for i in range(round_ % 2, width - 1, 2):
            lanes[i], lanes[i + 1] = torch.minimum(lanes[i], lanes[i + 1]), torch.maximum(lanes[i], lanes[i + 1])
    return lanes[pad].reshape(x.shape)


def find_alignment(
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    memory: Tensor,
    n_frames: list[int],
    text_tokens: list[list[int]],
    alignment_heads: list[tuple[int, int]],
    memory_lengths: Tensor | None = None,
    cross: Cross | None = None,
    sot_sequences: list[tuple[int, ...]] | None = None,
) -> list[Alignment]:
    """Word timings of text_tokens[b] over memory[b], whose first n_frames[b] mel frames are audio.

    memory is (B, S, D), rows padded to S have memory_lengths (B,) valid positions. Times are in
    seconds from the start of each row's audio. cross: the decoder's cross_memory(memory), when the caller has it.
    sot_sequences: per row, its language and task (default: the tokenizer's).
    """
    sots = sot_sequences or [tokenizer.sot_sequence] * len(text_tokens)
    prefixes = [[*sot, tokenizer.no_timestamps] for sot in sots]
    sequences = [prefix + tokens + [tokenizer.eot] for prefix, tokens in zip(prefixes, text_tokens)]
    width = max(len(s) for s in sequences)
    batch = torch.tensor([s + [tokenizer.eot] * (width - len(s)) for s in sequences], device=memory.device)
    lengths = torch.tensor([len(s) for s in sequences], device=memory.device)
    cache = decoder.new_cache(memory, memory_lengths, cross)
    hidden, scores = decoder(batch, cache, n_valid=lengths, want_weights=True)
    probs = decoder.logits(hidden).softmax(dim=-1)
    results = []
    for b, (prefix, tokens) in enumerate(zip(prefixes, text_tokens)):
        rows = slice(len(prefix) - 1, int(lengths[b]) - 1)  # the queries that predict each text token and eot
        heads = torch.stack([scores[layer][b, head, rows, : n_frames[b] // 2] for layer, head in alignment_heads])
        picked = torch.tensor(tokens, device=memory.device)[:, None]
        token_probs = probs[b, len(prefix) - 1 : len(prefix) - 1 + len(tokens)].gather(-1, picked)
        results.append(alignment_from_scores(tokenizer, tokens, heads, token_probs.squeeze(-1).tolist()))
    return results


def alignment_from_scores(
    tokenizer: Tokenizer, tokens: list[int], scores: Tensor, token_probs: list[float]
) -> Alignment:
    """The alignment of text tokens from alignment-head scores (heads, len(tokens) + 1, n_audio), as word_timings."""
    return Alignment(word_timings(tokenizer, tokens, scores, token_probs), attention_peaks(scores)[: len(tokens)])


def attention_peaks(scores: Tensor) -> list[int]:
    """Per query row of alignment-head scores (heads, rows, positions): the position attended to most."""
    if scores.shape[-1] == 0:
        return [0] * scores.shape[1]
    return scores.softmax(dim=-1).mean(dim=0).argmax(dim=-1).tolist()


def word_timings(
    tokenizer: Tokenizer, tokens: list[int], scores: Tensor, token_probs: list[float] | None = None
) -> list[WordTiming]:
    """Word timings of text tokens from alignment-head scores (heads, len(tokens) + 1, n_audio).

    Row k holds the scaled q.k of the query that predicts token k (the last row predicts end-of-text).
    Without token_probs, word probabilities are 0.
    """
    if not tokens or scores.shape[-1] == 0:
        return []
    weights = scores.float().cpu().softmax(dim=-1)  # small: the many steps below are cheaper off an accelerator
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std.clamp(min=1e-8), MEDFILT_WIDTH)
    return _words(tokenizer, tokens, weights.mean(dim=0), token_probs or [0.0] * len(tokens))


def _words(tokenizer: Tokenizer, tokens: list[int], matrix: Tensor, token_probs: list[float]) -> list[WordTiming]:
    text_indices, time_indices = dtw(-matrix.double().numpy())
    words, word_tokens = tokenizer.split_to_word_tokens(tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    starts = jump_times[boundaries[:-1]]
    ends = jump_times[boundaries[1:]]
    return [
        WordTiming(word, word_tokens[k], float(starts[k]), float(ends[k]), float(np.mean(token_probs[lo:hi])))
        for k, (word, lo, hi) in enumerate(zip(words[:-1], boundaries[:-1], boundaries[1:]))
    ]


def merge_punctuations(words: list[WordTiming]) -> list[WordTiming]:
    """Attach opening punctuation to the following word and closing punctuation to the preceding one.

    The merged word keeps the timing of the word that is not punctuation.
    """
    words = [replace(w, tokens=list(w.tokens)) for w in words]
    following = len(words) - 1
    for i in range(len(words) - 2, -1, -1):
        word = words[i]
        if word.word.startswith(" ") and word.word.strip() in PREPEND_PUNCTUATIONS:
            nxt = words[following]
            words[following] = replace(nxt, word=word.word + nxt.word, tokens=word.tokens + nxt.tokens)
            words[i] = replace(word, word="", tokens=[])
        else:
            following = i
    previous = 0
    for j in range(1, len(words)):
        word = words[j]
        prev = words[previous]
        if not prev.word.endswith(" ") and word.word in APPEND_PUNCTUATIONS:
            words[previous] = replace(prev, word=prev.word + word.word, tokens=prev.tokens + word.tokens)
            words[j] = replace(word, word="", tokens=[])
        else:
            previous = j
    return [w for w in words if w.word]
