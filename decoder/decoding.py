"""Batched token search over encoder outputs: greedy, sampling and beam search with Whisper's rules.

`decode` runs one search configuration over a batch of audio items that may each have their own
prompt (previous text), forced prefix and token budget. The flow follows openai-whisper's
DecodingTask: initial tokens -> prefill (one pass, also giving the no-speech probability) ->
per step: logit filters -> token selection -> cache update -> ranking of finished sequences.
"""

from __future__ import annotations

import string
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

from .network import Cross, KVCache, TextDecoder
from .tokenizer import TIME_PRECISION, Tokenizer

__all__ = ["DecodingOptions", "DecodingResult", "DraftResult", "decode", "decode_with_draft", "compression_ratio", "initial_tokens"]

NEG_INF = float("-inf")
PUNCTUATION = string.punctuation + "“”‘’¿¡…"


@dataclass(frozen=True)
class DecodingOptions:
    temperature: float = 0.0  # 0 selects greedily (or by beam search); above 0 samples
    beam_size: int = 1  # beams per item when temperature is 0; 1 is greedy
    best_of: int = 5  # independent samples per item when temperature > 0
    patience: float = 1.0  # beam search keeps going until beam_size * patience sequences finish
    length_penalty: float | None = None  # None ranks by mean log-probability per token
    max_new_tokens: int | None = None  # None: half the decoder context (224), as CTranslate2 caps it
    suppress_blank: bool = True  # forbid a blank or end-of-text as the first sampled token
    without_timestamps: bool = True  # False predicts timestamp tokens under Whisper's rules
    max_initial_timestamp: float = 1.0  # seconds; latest first timestamp allowed
    no_end_before_word: bool = False  # end-of-text only after a sampled token that is not punctuation (going on from a prefix)


@dataclass(frozen=True)
class DecodingResult:
    tokens: list[int]  # sampled tokens after the prefix (text and timestamps, no end-of-text)
    text: str  # text of the prefix and the sampled tokens
    sum_logprob: float  # of the sampled tokens and end-of-text
    avg_logprob: float  # sum_logprob / (sampled tokens + 1)
    no_speech_prob: float  # probability of <|nospeech|> at the start-of-transcript position
    temperature: float
    compression_ratio: float  # of text, by zlib; above ~2.4 means a repetition loop
    finished: bool = True  # False when the token budget ran out before end-of-text


@dataclass
class _Item:
    """Search state of one audio item."""

    initial: list[int]  # prompt + sot sequence (+ notimestamps) + prefix
    prefix_length: int  # forced prefix tokens at the end of initial
    max_new: int  # sampled tokens allowed
    finished: list[tuple[list[int], float]] = field(default_factory=list)  # (tokens, sum_logprob)
    truncated: bool = False  # a finished sequence ran out of token budget


@dataclass
class _Rows:
    """Live sequences: row r extends item[r] with tokens[r], of cumulative log-probability logprob[r]."""

    item: list[int]
    tokens: list[list[int]]
    logprob: list[float]


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def initial_tokens(
    tokenizer: Tokenizer, prompt: list[int] | None, prefix: list[int] | None, without_timestamps: bool, n_ctx: int
) -> list[int]:
    """[<|startofprev|> prompt] sot-sequence [<|notimestamps|>] [prefix]; the prompt is cut to its newest n_ctx/2 - 1."""
    tokens: list[int] = []
    if prompt:
        tokens = [tokenizer.sot_prev, *prompt[-(n_ctx // 2 - 1) :]]
    tokens += tokenizer.sot_sequence
    if without_timestamps:
        tokens.append(tokenizer.no_timestamps)
    if prefix:
        if not without_timestamps:
            tokens.append(tokenizer.timestamp_begin)
        tokens += prefix
    return tokens


def decode(
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    memory: Tensor,
    options: DecodingOptions,
    suppress_tokens: tuple[int, ...],
    prompts: list[list[int] | None] | None = None,
    prefixes: list[list[int] | None] | None = None,
    max_new_tokens: list[int | None] | None = None,
    memory_lengths: Tensor | None = None,
    generator: torch.Generator | None = None,
    cross: Cross | None = None,
) -> list[DecodingResult]:
    """Decode every row of memory (B, S, D): one result per row.

    prompts: previous-text tokens per row; prefixes: tokens forced at the start of each row's text;
    max_new_tokens: per-row caps on sampled tokens (None uses options.max_new_tokens).
    memory_lengths (B,): valid encoder positions per row when rows are padded to S.
    cross: the decoder's cross_memory(memory), when the caller has it already.
    """
    n_items = memory.shape[0]
    prompts = prompts or [None] * n_items
    prefixes = prefixes or [None] * n_items
    caps = max_new_tokens or [None] * n_items
    n_ctx = decoder.n_ctx
    items = []
    for prompt, prefix, cap in zip(prompts, prefixes, caps):
        initial = initial_tokens(tokenizer, prompt, prefix, options.without_timestamps, n_ctx)
        limit = cap if cap is not None else options.max_new_tokens or n_ctx // 2
        items.append(_Item(initial, len(prefix or []), max(0, min(limit, n_ctx - len(initial)))))
    search = _Search(decoder, tokenizer, options, suppress_tokens, items, generator)
    return search.run(decoder.new_cache(memory, memory_lengths, cross))


class _Search:
    """One batched search; rows are (item, beam or sample) pairs."""

    def __init__(
        self,
        decoder: TextDecoder,
        tokenizer: Tokenizer,
        options: DecodingOptions,
        suppress_tokens: tuple[int, ...],
        items: list[_Item],
        generator: torch.Generator | None,
    ) -> None:
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.options = options
        self.items = items
        self.generator = generator
        self.beam = options.temperature == 0 and options.beam_size > 1
        self.n_rows = options.beam_size if self.beam else options.best_of if options.temperature > 0 else 1
        self.device = device = decoder.token_embedding.weight.device
        n_vocab = decoder.token_embedding.num_embeddings
        suppress = torch.zeros(n_vocab, dtype=torch.bool, device=device)
        suppress[list(suppress_tokens)] = True
        if options.without_timestamps:
            suppress[tokenizer.timestamp_begin :] = True
        else:
            suppress[tokenizer.no_timestamps] = True
        self.suppress = suppress
        self.max_candidates = max(1, round(options.beam_size * options.patience)) if self.beam else 1
        self.blank = torch.tensor(tokenizer.encode(" ") + [tokenizer.eot], device=device)

    def run(self, cache: KVCache) -> list[DecodingResult]:
        no_speech, logits = self._prefill(cache)
        for item in self.items:
            if item.max_new == 0:
                item.finished.append(([], 0.0))
        live = [i for i, item in enumerate(self.items) if item.max_new > 0]
        index = torch.tensor(live, dtype=torch.long, device=self.device).repeat_interleave(self.n_rows)
        if index.tolist() != list(range(len(self.items))):
            cache = cache.select(index)
            logits = logits[index]
        rows = _Rows(index.tolist(), [[] for _ in index], [0.0] * len(index))
        while rows.item:
            source, next_tokens, rows = self._select(self._filtered_logprobs(logits, rows), rows)
            if not source:
                break
            if source != list(range(cache.batch_size)):
                cache = cache.select(torch.tensor(source, device=self.device))
            hidden, _ = self.decoder(torch.tensor(next_tokens, device=self.device)[:, None], cache)
            logits = self.decoder.logits(hidden[:, -1])
        return [self._result(item, float(no_speech[i])) for i, item in enumerate(self.items)]

    def _prefill(self, cache: KVCache) -> tuple[Tensor, Tensor]:
        """Run every item's initial tokens; return no-speech probabilities and next-token logits."""
        width = max(len(item.initial) for item in self.items)
        padded = [item.initial + [self.tokenizer.eot] * (width - len(item.initial)) for item in self.items]
        tokens = torch.tensor(padded, device=self.device)
        lengths = torch.tensor([len(item.initial) for item in self.items], device=self.device)
        hidden, _ = self.decoder(tokens, cache, n_valid=lengths)
        rows = torch.arange(len(self.items), device=self.device)
        sot_index = torch.tensor([item.initial.index(self.tokenizer.sot) for item in self.items], device=self.device)
        picked = self.decoder.logits(torch.stack([hidden[rows, sot_index], hidden[rows, lengths - 1]]))
        no_speech = picked[0].softmax(dim=-1)[:, self.tokenizer.no_speech]
        return no_speech, picked[1]

    def _filtered_logprobs(self, logits: Tensor, rows: _Rows) -> Tensor:
        logits = logits.masked_fill(self.suppress, NEG_INF)
        if self.options.suppress_blank:
            first = [r for r, tokens in enumerate(rows.tokens) if not tokens]
            if first:
                logits[torch.tensor(first, device=self.device)[:, None], self.blank[None, :]] = NEG_INF
        if self.options.no_end_before_word:
            wordless = [r for r, tokens in enumerate(rows.tokens) if _punctuation_only(self.tokenizer, tokens)]
            if wordless:
                logits[torch.tensor(wordless, device=self.device), self.tokenizer.eot] = NEG_INF
        if not self.options.without_timestamps:
            self._timestamp_rules(logits, rows.tokens)
        return logits

    def _timestamp_rules(self, logits: Tensor, row_tokens: list[list[int]]) -> None:
        """Whisper's rules: timestamps come in pairs, never decrease, and the first is at most max_initial_timestamp."""
        begin = self.tokenizer.timestamp_begin
        eot = self.tokenizer.eot
        for r, tokens in enumerate(row_tokens):
            last_was_timestamp = len(tokens) >= 1 and tokens[-1] >= begin
            penultimate_was_timestamp = len(tokens) < 2 or tokens[-2] >= begin
            if last_was_timestamp:
                if penultimate_was_timestamp:
                    logits[r, begin:] = NEG_INF
                else:
                    logits[r, :eot] = NEG_INF
            timestamps = [t for t in tokens if t >= begin]
            if timestamps:
                floor = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
                logits[r, begin:floor] = NEG_INF
            if not tokens:
                logits[r, :begin] = NEG_INF
                last_allowed = begin + round(self.options.max_initial_timestamp / TIME_PRECISION)
                logits[r, last_allowed + 1 :] = NEG_INF
        logprobs = logits.log_softmax(dim=-1)
        timestamp_logprob = logprobs[:, begin:].logsumexp(dim=-1)
        text_logprob = logprobs[:, :begin].max(dim=-1).values
        logits[timestamp_logprob > text_logprob, :begin] = NEG_INF

    def _select(self, logits: Tensor, rows: _Rows) -> tuple[list[int], list[int], _Rows]:
        """Pick next tokens; return the source row of each continuing row, its new token, and the new rows."""
        logprobs = logits.log_softmax(dim=-1)
        if self.beam:
            return self._select_beam(logprobs, rows)
        if self.options.temperature > 0:
            probs = (logits / self.options.temperature).softmax(dim=-1)
            chosen = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        else:
            chosen = logits.argmax(dim=-1)
        chosen_logprobs = logprobs.gather(1, chosen[:, None]).squeeze(1).tolist()
        source, next_tokens, kept = [], [], _Rows([], [], [])
        for r, (token, logprob) in enumerate(zip(chosen.tolist(), chosen_logprobs)):
            item = self.items[rows.item[r]]
            total = rows.logprob[r] + logprob
            if token == self.tokenizer.eot:
                item.finished.append((rows.tokens[r], total))
                continue
            tokens = rows.tokens[r] + [token]
            if len(tokens) >= item.max_new:
                item.finished.append((tokens, total))
                item.truncated = True
                continue
            source.append(r)
            next_tokens.append(token)
            kept.item.append(rows.item[r])
            kept.tokens.append(tokens)
            kept.logprob.append(total)
        return source, next_tokens, kept

    def _select_beam(self, logprobs: Tensor, rows: _Rows) -> tuple[list[int], list[int], _Rows]:
        beam_size = self.options.beam_size
        top_logprobs, top_tokens = (t.tolist() for t in logprobs.topk(beam_size + 1, dim=-1))
        by_item: dict[int, list[int]] = {}
        for r, item_index in enumerate(rows.item):
            by_item.setdefault(item_index, []).append(r)
        source, next_tokens, kept = [], [], _Rows([], [], [])
        for item_index, item_rows in by_item.items():
            item = self.items[item_index]
            candidates = sorted(
                (
                    (rows.logprob[r] + logprob, r, token)
                    for r in item_rows
                    for logprob, token in zip(top_logprobs[r], top_tokens[r])
                    if logprob != NEG_INF
                ),
                key=lambda c: -c[0],
            )
            live: list[tuple[float, int, int]] = []
            seen: set[tuple[int, ...]] = set()
            for score, r, token in candidates:
                sequence = (*rows.tokens[r], token)
                if sequence in seen:
                    continue  # beams that are still the same sequence (all of them, at the first step) count once
                seen.add(sequence)
                if token == self.tokenizer.eot:
                    if len(item.finished) < self.max_candidates:
                        item.finished.append((rows.tokens[r], score))
                elif len(rows.tokens[r]) + 1 >= item.max_new:
                    if len(item.finished) < self.max_candidates:
                        item.finished.append((rows.tokens[r] + [token], score))
                        item.truncated = True
                else:
                    live.append((score, r, token))
                if len(live) == beam_size:
                    break
            if len(item.finished) >= self.max_candidates:
                continue  # enough sequences finished: this item's beams stop
            for score, r, token in live:
                source.append(r)
                next_tokens.append(token)
                kept.item.append(item_index)
                kept.tokens.append(rows.tokens[r] + [token])
                kept.logprob.append(score)
        return source, next_tokens, kept

    def _result(self, item: _Item, no_speech_prob: float) -> DecodingResult:
        options = self.options
        if not item.finished:
            item.finished.append(([], 0.0))
        penalty = options.length_penalty

        def score(entry: tuple[list[int], float]) -> float:
            tokens, logprob = entry
            length = len(tokens)
            if penalty is None:
                return logprob / max(length, 1)
            return logprob / ((5 + length) / 6) ** penalty

        tokens, sum_logprob = max(item.finished, key=score)
        prefix = item.initial[len(item.initial) - item.prefix_length :]
        text = self.tokenizer.decode(prefix + tokens)
        return DecodingResult(
            tokens=tokens,
            text=text,
            sum_logprob=sum_logprob,
            avg_logprob=sum_logprob / (len(tokens) + 1),
            no_speech_prob=no_speech_prob,
            temperature=options.temperature,
            compression_ratio=compression_ratio(text.strip()),
            finished=not item.truncated,
        )


@dataclass(frozen=True)
class DraftResult:
    tokens: list[int]  # sampled text tokens after the prefix (no end-of-text)
    finished: bool  # ended with end-of-text (False: the token budget ran out)
    n_accepted: int  # draft tokens confirmed by the verification pass
    n_steps: int  # sequential decoder passes after the first (the cost the draft saves)
    scores: Tensor  # alignment heads' q.k (heads, len(prefix + tokens) + 1, S) for word timings
    probabilities: list[float]  # of each token in `tokens`


def decode_with_draft(
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    memory: Tensor,
    suppress_tokens: tuple[int, ...],
    alignment_heads: list[tuple[int, int]],
    prompts: list[list[int] | None],
    prefixes: list[list[int]],
    drafts: list[list[int]],
    max_new_tokens: list[int],
    memory_lengths: Tensor | None = None,
    cross: Cross | None = None,
) -> list[DraftResult]:
    """Greedy decoding without timestamps, verifying a guessed continuation (draft) in the first pass.

    Each row runs prompt + sot + prefix + draft in one batched pass. The draft is accepted up to the
    first token that greedy decoding would not pick; decoding then goes on token by token from there.
    The result is exactly what plain greedy decoding gives, at the cost of one pass for the part of
    the draft that still holds (in streaming, the previous hypothesis mostly does). The alignment
    heads' scores come along, so word timings need no extra pass.
    """
    device = memory.device
    initials = [initial_tokens(tokenizer, p, f, True, decoder.n_ctx) for p, f in zip(prompts, prefixes)]
    caps = [max(0, min(cap, decoder.n_ctx - len(init) - 1)) for cap, init in zip(max_new_tokens, initials)]
    drafts = [draft[: max(0, cap - 1)] for draft, cap in zip(drafts, caps)]
    suppress = torch.zeros(decoder.token_embedding.num_embeddings, dtype=torch.bool, device=device)
    suppress[list(suppress_tokens)] = True
    suppress[tokenizer.timestamp_begin :] = True
    blank = torch.tensor(tokenizer.encode(" ") + [tokenizer.eot], device=device)

    def heads_of(scores: list[Tensor]) -> Tensor:  # (B, heads, n, S)
        return torch.stack([scores[layer][:, head] for layer, head in alignment_heads], dim=1)

    cache = decoder.new_cache(memory, memory_lengths, cross)
    sequences = [init + draft for init, draft in zip(initials, drafts)]
    lengths = torch.tensor([len(s) for s in sequences], device=device)
    batch = torch.full((len(sequences), int(lengths.max())), tokenizer.eot, dtype=torch.long, device=device)
    for row, sequence in enumerate(sequences):
        batch[row, : len(sequence)] = torch.tensor(sequence, device=device)
    hidden, scores = decoder(batch, cache, n_valid=lengths, want_weights=True)
    prefill_heads = heads_of(scores)
    # the logits that verify each row's draft, in one matmul: positions len(init)-1 .. len(init)+len(draft)-1
    spans = [(len(init) - 1, len(init) + len(draft)) for init, draft in zip(initials, drafts)]
    picked = torch.cat([hidden[row, lo:hi] for row, (lo, hi) in enumerate(spans)])
    logits = decoder.greedy_logits(picked).masked_fill(suppress, NEG_INF)
    firsts = torch.tensor([0] + [hi - lo for lo, hi in spans[:-1]], device=device).cumsum(0)
    logits[firsts[:, None], blank[None, :]] = NEG_INF  # suppress a blank first token
    # ...and end-of-text after nothing but punctuation: after earlier segments' text, tiny.en tends to close
    # their sentence and stop, however much new speech there is
    for row, draft in enumerate(drafts):
        for j, token in enumerate(draft if prefixes[row] else [], 1):
            if not _is_punctuation_token(tokenizer, token):
                break
            logits[int(firsts[row]) + j, tokenizer.eot] = NEG_INF
    best = logits.softmax(dim=-1).max(dim=-1)
    predicted_all, probability_all = best.indices.tolist(), best.values.tolist()

    results: list[DraftResult | None] = [None] * len(sequences)
    n_accepted = [0] * len(sequences)
    pieces: list[list[Tensor]] = [[] for _ in sequences]  # per row: (heads, k, S) score rows
    tokens_of: list[list[int]] = [[] for _ in sequences]
    probs_of: list[list[float]] = [[] for _ in sequences]
    live, next_tokens = [], [tokenizer.eot] * len(sequences)
    positions = lengths.clone()
    offset = 0
    for row, (init, draft, cap) in enumerate(zip(initials, drafts, caps)):
        predicted = predicted_all[offset : offset + len(draft) + 1]
        probability = probability_all[offset : offset + len(draft) + 1]
        offset += len(draft) + 1
        begin = len(init) - len(prefixes[row]) - 1  # the <|notimestamps|> query predicts the first text token
        accepted = 0
        while accepted < len(draft) and predicted[accepted] == draft[accepted]:
            accepted += 1
        n_accepted[row] = accepted
        pieces[row].append(prefill_heads[row, :, begin : len(init) + accepted])
        token = predicted[accepted]
        tokens_of[row] = draft[:accepted]
        probs_of[row] = probability[:accepted]
        if cap == 0 or token == tokenizer.eot:
            results[row] = DraftResult(tokens_of[row], token == tokenizer.eot, accepted, 0,
                                       torch.cat(pieces[row], dim=1), probs_of[row])
            continue
        tokens_of[row] = tokens_of[row] + [token]
        probs_of[row] = probs_of[row] + [probability[accepted]]
        if len(tokens_of[row]) >= cap:
            results[row] = DraftResult(tokens_of[row], False, accepted, 0, _close_rows(pieces[row]), probs_of[row])
            continue
        live.append(row)
        next_tokens[row] = token
        positions[row] = len(init) + accepted  # rewind past rejected draft tokens
    cache.lengths = positions
    # rows stay in the batch after they finish (copying the cache to drop them costs more than
    # running them) until at most half are live
    batch_rows = list(range(len(sequences)))
    steps = 0
    while live:
        if len(live) <= len(batch_rows) // 2:
            cache = cache.select(torch.tensor([batch_rows.index(r) for r in live], dtype=torch.long, device=device))
            batch_rows = list(live)
        step_tokens = torch.tensor([next_tokens[r] for r in batch_rows], device=device)[:, None]
        hidden, scores = decoder(step_tokens, cache, want_weights=True)
        step_heads = heads_of(scores)
        steps += 1
        slots = [batch_rows.index(r) for r in live]
        logits = decoder.greedy_logits(hidden[slots, -1]).masked_fill(suppress, NEG_INF)
        for k, row in enumerate(live):
            if prefixes[row] and _punctuation_only(tokenizer, tokens_of[row]):
                logits[k, tokenizer.eot] = NEG_INF
        best = logits.softmax(dim=-1).max(dim=-1)
        still = []
        for slot, row, token, probability in zip(slots, live, best.indices.tolist(), best.values.tolist()):
            pieces[row].append(step_heads[slot])
            if token == tokenizer.eot:
                results[row] = DraftResult(tokens_of[row], True, n_accepted[row], steps,
                                           torch.cat(pieces[row], dim=1), probs_of[row])
                continue
            tokens_of[row] = tokens_of[row] + [token]
            probs_of[row] = probs_of[row] + [probability]
            if len(tokens_of[row]) >= caps[row]:
                results[row] = DraftResult(tokens_of[row], False, n_accepted[row], steps, _close_rows(pieces[row]),
                                           probs_of[row])
                continue
            next_tokens[row] = token
            still.append(row)
        live = still
    return [r for r in results if r is not None]


def _punctuation_only(tokenizer: Tokenizer, tokens: list[int]) -> bool:
    return all(_is_punctuation_token(tokenizer, t) for t in tokens)


@lru_cache(maxsize=4096)
def _is_punctuation_token(tokenizer: Tokenizer, token: int) -> bool:
    return token < tokenizer.eot and all(c in PUNCTUATION for c in tokenizer.decode([token]).strip())


def _close_rows(pieces: list[Tensor]) -> Tensor:
    """Scores of a sequence cut by the token budget lack the row that would predict end-of-text: repeat the last."""
    rows = torch.cat(pieces, dim=1)
    return torch.cat([rows, rows[:, -1:]], dim=1)
