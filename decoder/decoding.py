"""Batched token search over encoder outputs: greedy, sampling and beam search with Whisper's rules.

`decode` runs one search configuration over a batch of audio items that may each have their own
prompt (previous text), forced prefix and token budget. The flow follows openai-whisper's
DecodingTask: initial tokens -> prefill (one pass, also giving the no-speech probability) ->
per step: logit filters -> token selection -> cache update -> ranking of finished sequences.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .network import Cross, KVCache, TextDecoder
from .rules import NEG_INF, LogitRules
from .tokenizer import Tokenizer
from .vocabulary import Vocabulary, boost

__all__ = ["DecodingOptions", "DecodingResult", "DraftResult", "decode", "decode_with_draft", "compression_ratio", "initial_tokens"]



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
    no_end_before_word: bool = False  # decoder/rules.py
    vocabulary: Vocabulary | None = None  # decoder/vocabulary.py
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
    tokenizer: Tokenizer, prompt: list[int] | None, prefix: list[int] | None, without_timestamps: bool, n_ctx: int,
    sot_sequence: tuple[int, ...] | None = None,
) -> list[int]:
    """[<|startofprev|> prompt] sot-sequence [<|notimestamps|>] [prefix]; the prompt is cut to its newest n_ctx/2 - 1.

    sot_sequence: the row's language and task (default: the tokenizer's)."""
    tokens: list[int] = []
    if prompt:
        tokens = [tokenizer.sot_prev, *prompt[-(n_ctx // 2 - 1) :]]
    tokens += sot_sequence or tokenizer.sot_sequence
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
    no_end_before_word: list[bool] | None = None,
    sot_sequences: list[tuple[int, ...]] | None = None,
    vocabularies: list[Vocabulary | None] | None = None,
) -> list[DecodingResult]:
    """Decode every row of memory (B, S, D): one result per row.

    prompts: previous-text tokens per row; prefixes: tokens forced at the start of each row's text;
    max_new_tokens: per-row caps on sampled tokens (None uses options.max_new_tokens).
    memory_lengths (B,): valid encoder positions per row when rows are padded to S.
    cross: the decoder's cross_memory(memory), when the caller has it already.
    no_end_before_word: per row, no end-of-text while only punctuation (or nothing) has been sampled
    (decoder/rules.py); none by default. sot_sequences: per row, its language and task (Tokenizer.sot_sequence_for).
    vocabularies: per row, the words and phrases to favour (decoder/vocabulary.py).
    """
    n_items = memory.shape[0]
    prompts = prompts or [None] * n_items
    prefixes = prefixes or [None] * n_items
    caps = max_new_tokens or [None] * n_items
    no_end = no_end_before_word or [False] * n_items
    sots = sot_sequences or [tokenizer.sot_sequence] * n_items
    vocabularies = vocabularies or [None] * n_items
    n_ctx = decoder.n_ctx
    items = []
    for prompt, prefix, cap, rule, sot, vocabulary in zip(prompts, prefixes, caps, no_end, sots, vocabularies):
        initial = initial_tokens(tokenizer, prompt, prefix, options.without_timestamps, n_ctx, sot)
        limit = cap if cap is not None else options.max_new_tokens or n_ctx // 2
        items.append(_Item(initial, len(prefix or []), max(0, min(limit, n_ctx - len(initial))), rule, vocabulary))
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
        self.device = decoder.token_embedding.weight.device
        self.rules = LogitRules(tokenizer, suppress_tokens, decoder.token_embedding.num_embeddings, self.device,
                                options.without_timestamps, options.suppress_blank, options.max_initial_timestamp)
        self.max_candidates = max(1, round(options.beam_size * options.patience)) if self.beam else 1
        self.biased = any(item.vocabulary is not None for item in items)

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
            logits = self.rules.apply(logits, rows.tokens, [self.items[i].no_end_before_word for i in rows.item])
            if self.biased:
                items = [self.items[i] for i in rows.item]
                boost(logits, [item.vocabulary for item in items],
                      [item.initial[len(item.initial) - item.prefix_length :] + tokens
                       for item, tokens in zip(items, rows.tokens)])
            source, next_tokens, rows = self._select(logits, rows)
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
    end_probability: float = 1.0  # of the end-of-text that ended it (when finished)
    no_speech_prob: float = 0.0  # as DecodingResult's (exact decoding only)

    @property
    def avg_logprob(self) -> float:
        """Mean log-probability of the sampled tokens and end-of-text, as DecodingResult's."""
        ends = [self.end_probability] if self.finished else []
        return sum(math.log(max(p, 1e-30)) for p in self.probabilities + ends) / (len(self.tokens) + 1)


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
    no_end_before_word: list[bool] | None = None,
    exact: bool = False,
    sot_sequences: list[tuple[int, ...]] | None = None,
    vocabularies: list[Vocabulary | None] | None = None,
) -> list[DraftResult]:
    """Greedy decoding without timestamps, verifying a guessed continuation (draft) in the first pass.

    Each row runs prompt + sot + prefix + draft in one batched pass. The draft is accepted up to the
    first token that greedy decoding would not pick; decoding then goes on token by token from there.
    The result is exactly what plain greedy decoding gives, at the cost of one pass for the part of
    the draft that still holds (in streaming, the previous hypothesis mostly does). The alignment
    heads' scores come along, so word timings need no extra pass. A row does not end while it has
    sampled only punctuation where no_end_before_word says so (decoder/rules.py; by default, a row
    with a prefix). exact: choose by full-precision logits, as `decode` does (not by the CPU's faster int8
    ones, which may break near-ties the other way), and give each result its no-speech probability.
    sot_sequences: per row, its language and task (default: the tokenizer's). vocabularies: per row, the words
    and phrases to favour (decoder/vocabulary.py); a draft is then checked against the boosted logits.
    """
    rows = []
    rules_of = no_end_before_word or [bool(prefix) for prefix in prefixes]
    sots = sot_sequences or [tokenizer.sot_sequence] * len(prefixes)
    vocabularies = vocabularies or [None] * len(prefixes)
    for prompt, prefix, draft, cap, rule, sot, vocabulary in zip(prompts, prefixes, drafts, max_new_tokens, rules_of,
                                                                   sots, vocabularies):
        initial = initial_tokens(tokenizer, prompt, prefix, True, decoder.n_ctx, sot)
        cap = max(0, min(cap, decoder.n_ctx - len(initial) - 1))
        # the <|notimestamps|> query predicts the first text token
        rows.append(_DraftRow(initial, draft[: max(0, cap - 1)], cap, rule, len(initial) - len(prefix) - 1,
                              vocabulary))
    rules = LogitRules(tokenizer, suppress_tokens, decoder.token_embedding.num_embeddings, memory.device)
    steps = _Steps(decoder, rules, alignment_heads, decoder.new_cache(memory, memory_lengths, cross), exact)
    live = steps.verify(rows)
    steps.greedy(rows, live)
    return [row.result for row in rows if row.result is not None]


@dataclass
class _DraftRow:
    """One row of decode_with_draft: its initial tokens and draft, and what it has decoded so far."""

    initial: list[int]
    draft: list[int]
    cap: int  # sampled tokens allowed
    no_end_before_word: bool
    begin: int  # the query that predicts the first text token
    vocabulary: Vocabulary | None = None
    tokens: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    pieces: list[Tensor] = field(default_factory=list)  # alignment heads' score rows (heads, k, S)
    accepted: int = 0
    next_token: int = -1
    no_speech_prob: float = 0.0
    result: DraftResult | None = None

    def text(self, sampled: list[int]) -> list[int]:
        """The prefix and `sampled`: the text a vocabulary continues."""
        return self.initial[self.begin + 1 :] + sampled

    def take(self, token: int, probability: float, eot: int, steps: int) -> bool:
        """Take the next predicted token; False when the row is done (end-of-text or its budget)."""
        if token == eot:
            self.result = DraftResult(self.tokens, True, self.accepted, steps, torch.cat(self.pieces, dim=1),
                                      self.probabilities, probability, self.no_speech_prob)
            return False
        self.tokens = self.tokens + [token]
        self.probabilities = self.probabilities + [probability]
        if len(self.tokens) >= self.cap:
            self.result = DraftResult(self.tokens, False, self.accepted, steps, _close_rows(self.pieces),
                                      self.probabilities, no_speech_prob=self.no_speech_prob)
            return False
        self.next_token = token
        return True


class _Steps:
    """The decoder passes of decode_with_draft: one that verifies every row's draft, then greedy steps."""

    def __init__(self, decoder: TextDecoder, rules: LogitRules, alignment_heads: list[tuple[int, int]],
                 cache: KVCache, exact: bool = False) -> None:
        self.decoder, self.rules, self.alignment_heads, self.cache = decoder, rules, alignment_heads, cache
        self.eot = rules.tokenizer.eot
        self.exact = exact
        self.logits = decoder.logits if exact else decoder.greedy_logits

    def heads(self, scores: list[Tensor]) -> Tensor:  # (B, heads, n, S)
        return torch.stack([scores[layer][:, head] for layer, head in self.alignment_heads], dim=1)

    def verify(self, rows: list[_DraftRow]) -> list[int]:
        """Run each row's initial tokens and draft; accept the draft as far as greedy decoding agrees with
        it, and take the token after. Returns the rows that go on."""
        device = self.rules.suppress.device
        sequences = [row.initial + row.draft for row in rows]
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        batch = torch.full((len(rows), int(lengths.max())), self.eot, dtype=torch.long, device=device)
        for r, sequence in enumerate(sequences):
            batch[r, : len(sequence)] = torch.tensor(sequence, device=device)
        hidden, scores = self.decoder(batch, self.cache, n_valid=lengths, want_weights=True)
        heads = self.heads(scores)
        # the logits that verify each row's draft, in one matmul: positions len(initial)-1 .. len(initial)+len(draft)-1
        picked = torch.cat([hidden[r, len(row.initial) - 1 : len(row.initial) + len(row.draft)]
                            for r, row in enumerate(rows)])
        sampled = [row.draft[:j] for row in rows for j in range(len(row.draft) + 1)]
        forced = [row.no_end_before_word for row in rows for _ in range(len(row.draft) + 1)]
        logits = self.rules.apply(self.logits(picked), sampled, forced)
        if any(row.vocabulary for row in rows):
            boost(logits, [row.vocabulary for row in rows for _ in range(len(row.draft) + 1)],
                  [row.text(row.draft[:j]) for row in rows for j in range(len(row.draft) + 1)])
        best = logits.softmax(dim=-1).max(dim=-1)
        predicted, probability = best.indices.tolist(), best.values.tolist()
        silent = self._no_speech(hidden, rows) if self.exact else [0.0] * len(rows)
        live, positions, offset = [], lengths.clone(), 0
        for r, row in enumerate(rows):
            verdicts = predicted[offset : offset + len(row.draft) + 1]
            odds = probability[offset : offset + len(row.draft) + 1]
            offset += len(row.draft) + 1
            while row.accepted < len(row.draft) and verdicts[row.accepted] == row.draft[row.accepted]:
                row.accepted += 1
            row.pieces.append(heads[r, :, row.begin : len(row.initial) + row.accepted])
            row.tokens, row.probabilities = row.draft[: row.accepted], odds[: row.accepted]
            row.no_speech_prob = silent[r]
            if row.cap == 0:
                row.result = DraftResult(row.tokens, verdicts[row.accepted] == self.eot, row.accepted, 0,
                                         torch.cat(row.pieces, dim=1), row.probabilities, odds[row.accepted],
                                         row.no_speech_prob)
            elif row.take(verdicts[row.accepted], odds[row.accepted], self.eot, 0):
                live.append(r)
                positions[r] = len(row.initial) + row.accepted  # rewind past rejected draft tokens
        self.cache.lengths = positions
        return live

    def _no_speech(self, hidden: Tensor, rows: list[_DraftRow]) -> list[float]:
        """Each row's probability of <|nospeech|> at its start-of-transcript query (full-precision logits)."""
        tokenizer = self.rules.tokenizer
        at_sot = torch.stack([hidden[r, row.initial.index(tokenizer.sot)] for r, row in enumerate(rows)])
        return self.decoder.logits(at_sot).softmax(dim=-1)[:, tokenizer.no_speech].tolist()

    def greedy(self, rows: list[_DraftRow], live: list[int]) -> None:
        """Greedy steps for the live rows until each ends. Rows stay in the batch after they finish (copying
        the cache to drop them costs more than running them) until at most half are live."""
        device = self.rules.suppress.device
        batch_rows, steps, cache = list(range(len(rows))), 0, self.cache
        while live:
            if len(live) <= len(batch_rows) // 2:
                cache = cache.select(torch.tensor([batch_rows.index(r) for r in live], dtype=torch.long, device=device))
                batch_rows = list(live)
            # a row that has finished goes on with its last token (or end-of-text): its output is not used
            step_tokens = torch.tensor([rows[r].next_token if rows[r].next_token >= 0 else self.eot
                                        for r in batch_rows], device=device)[:, None]
            hidden, scores = self.decoder(step_tokens, cache, want_weights=True)
            step_heads = self.heads(scores)
            steps += 1
            slots = [batch_rows.index(r) for r in live]
            logits = self.rules.apply(self.logits(hidden[slots, -1]), [rows[r].tokens for r in live],
                                      [rows[r].no_end_before_word for r in live])
            if any(rows[r].vocabulary for r in live):
                boost(logits, [rows[r].vocabulary for r in live], [rows[r].text(rows[r].tokens) for r in live])
            best = logits.softmax(dim=-1).max(dim=-1)
            still = []
            for slot, r, token, probability in zip(slots, live, best.indices.tolist(), best.values.tolist()):
                rows[r].pieces.append(step_heads[slot])
                if rows[r].take(token, probability, self.eot, steps):
                    still.append(r)
            live = still


def _close_rows(pieces: list[Tensor]) -> Tensor:
    """Scores of a sequence cut by the token budget lack the row that would predict end-of-text: repeat the last."""
    rows = torch.cat(pieces, dim=1)
    return torch.cat([rows, rows[:, -1:]], dim=1)
