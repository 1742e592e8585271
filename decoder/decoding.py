"""Batched token search over encoder outputs: greedy, sampling, beam search and draft verification.

Every decoding takes a list of rows (`DecodingRow`): one per row of encoder output, each with its own
prompt (previous text), language and task, forced prefix, draft, token budget and vocabulary.

`decode` runs one search strategy over the rows, as openai-whisper's DecodingTask: initial tokens ->
prefill (one pass, also giving the no-speech probability) -> per step: logit rules -> token selection
(`Greedy`, `Sampling` or `BeamSearch`) -> cache update -> ranking of finished sequences.
`decode_drafts` is greedy decoding that first verifies each row's draft in one pass (`DraftVerification`),
keeping the attention that word timings need.
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

__all__ = [
    "DecodingOptions", "DecodingRow", "DecodingResult", "DraftResult", "TokenSelector", "Greedy", "Sampling",
    "BeamSearch", "DraftVerification", "decode", "decode_drafts", "compression_ratio",
]


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


@dataclass(frozen=True)
class DecodingRow:
    """One row of a batched decoding: what conditions it and what it may produce.

    A row decodes `[<|startofprev|> prompt] sot-sequence [<|notimestamps|>] [prefix]` and goes on from there.
    """

    prompt: list[int] | None = None  # previous-text tokens; the newest n_ctx/2 - 1 are kept
    prefix: list[int] = field(default_factory=list)  # tokens forced at the start of the row's text
    draft: list[int] = field(default_factory=list)  # a guess at what follows the prefix (decode_drafts verifies it)
    max_new_tokens: int | None = None  # cap on sampled tokens; None: the options' cap (or half the context)
    sot_sequence: tuple[int, ...] | None = None  # language and task (Tokenizer.sot_sequence_for); None: the default
    vocabulary: Vocabulary | None = None  # words and phrases to favour (decoder/vocabulary.py)
    no_end_before_word: bool = False  # no end-of-text while only punctuation (or nothing) is sampled (rules.py)

    def initial_tokens(self, tokenizer: Tokenizer, without_timestamps: bool, n_ctx: int) -> list[int]:
        """The tokens the row starts from: prompt, sot sequence, <|notimestamps|> and prefix."""
        tokens: list[int] = []
        if self.prompt:
            tokens = [tokenizer.sot_prev, *self.prompt[-(n_ctx // 2 - 1) :]]
        tokens += self.sot_sequence or tokenizer.sot_sequence
        if without_timestamps:
            tokens.append(tokenizer.no_timestamps)
        if self.prefix:
            if not without_timestamps:
                tokens.append(tokenizer.timestamp_begin)
            tokens += self.prefix
        return tokens


@dataclass
class _RowState:
    """A row being decoded: its initial tokens, budget and what the strategy found so far."""

    row: DecodingRow
    initial: list[int]  # DecodingRow.initial_tokens
    cap: int  # sampled tokens allowed
    # search (decode): finished sequences and whether one ran out of budget
    finished: list[tuple[list[int], float]] = field(default_factory=list)  # (tokens, sum_logprob)
    truncated: bool = False
    # draft verification (decode_drafts): the tokens taken so far, their probabilities and attention
    tokens: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    pieces: list[Tensor] = field(default_factory=list)  # alignment heads' score rows (heads, k, S)
    accepted: int = 0  # draft tokens confirmed
    next_token: int = -1  # the token the next greedy step feeds
    no_speech_prob: float = 0.0
    result: DraftResult | None = None

    def text(self, sampled: list[int]) -> list[int]:
        """The prefix and `sampled`: the text a vocabulary continues."""
        return self.row.prefix + sampled

    def take(self, token: int, probability: float, eot: int, steps: int) -> bool:
        """Take the next predicted token (draft verification); False when the row is done (end-of-text or its
        budget)."""
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


@dataclass
class _Live:
    """Live sequences: sequence r extends row[r] with tokens[r], of cumulative log-probability logprob[r]."""

    row: list[int]
    tokens: list[list[int]]
    logprob: list[float]


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def decode(
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    memory: Tensor,
    rows: list[DecodingRow],
    options: DecodingOptions,
    suppress_tokens: tuple[int, ...],
    memory_lengths: Tensor | None = None,
    cross: Cross | None = None,
    generator: torch.Generator | None = None,
) -> list[DecodingResult]:
    """Decode rows[b] over memory[b] (B, S, D): one result per row, by the strategy the options choose
    (greedy, sampling or beam search). Drafts are not used here (see decode_drafts).

    memory_lengths (B,): valid encoder positions per row when rows are padded to S.
    cross: the decoder's cross_memory(memory), when the caller has it already.
    """
    n_ctx = decoder.n_ctx
    states = []
    for row in rows:
        initial = row.initial_tokens(tokenizer, options.without_timestamps, n_ctx)
        limit = row.max_new_tokens if row.max_new_tokens is not None else options.max_new_tokens or n_ctx // 2
        states.append(_RowState(row, initial, max(0, min(limit, n_ctx - len(initial)))))
    search = _Search(decoder, tokenizer, options, suppress_tokens, states, _selector(options, tokenizer, generator))
    return search.run(decoder.new_cache(memory, memory_lengths, cross))


class _Search:
    """One batched search over rows; its live sequences are (row, beam or sample) pairs."""

    def __init__(
        self,
        decoder: TextDecoder,
        tokenizer: Tokenizer,
        options: DecodingOptions,
        suppress_tokens: tuple[int, ...],
        states: list[_RowState],
        selector: TokenSelector,
    ) -> None:
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.options = options
        self.states = states
        self.selector = selector
        self.device = decoder.token_embedding.weight.device
        self.rules = LogitRules(tokenizer, suppress_tokens, decoder.token_embedding.num_embeddings, self.device,
                                options.without_timestamps, options.suppress_blank, options.max_initial_timestamp)
        self.biased = any(state.row.vocabulary is not None for state in states)

    def run(self, cache: KVCache) -> list[DecodingResult]:
        no_speech, logits = self._prefill(cache)
        for state in self.states:
            if state.cap == 0:
                state.finished.append(([], 0.0))
        rows = [i for i, state in enumerate(self.states) if state.cap > 0]
        index = torch.tensor(rows, dtype=torch.long, device=self.device).repeat_interleave(self.selector.n_sequences)
        if index.tolist() != list(range(len(self.states))):
            cache = cache.select(index)
            logits = logits[index]
        live = _Live(index.tolist(), [[] for _ in index], [0.0] * len(index))
        while live.row:
            states = [self.states[i] for i in live.row]
            logits = self.rules.apply(logits, live.tokens, [state.row.no_end_before_word for state in states])
            if self.biased:
                boost(logits, [state.row.vocabulary for state in states],
                      [state.text(tokens) for state, tokens in zip(states, live.tokens)])
            source, next_tokens, live = self.selector.select(logits, live, self.states)
            if not source:
                break
            if source != list(range(cache.batch_size)):
                cache = cache.select(torch.tensor(source, device=self.device))
            hidden, _ = self.decoder(torch.tensor(next_tokens, device=self.device)[:, None], cache)
            logits = self.decoder.logits(hidden[:, -1])
        return [self._result(state, float(no_speech[i])) for i, state in enumerate(self.states)]

    def _prefill(self, cache: KVCache) -> tuple[Tensor, Tensor]:
        """Run every row's initial tokens; return no-speech probabilities and next-token logits."""
        width = max(len(state.initial) for state in self.states)
        padded = [state.initial + [self.tokenizer.eot] * (width - len(state.initial)) for state in self.states]
        tokens = torch.tensor(padded, device=self.device)
        lengths = torch.tensor([len(state.initial) for state in self.states], device=self.device)
        hidden, _ = self.decoder(tokens, cache, n_valid=lengths)
        rows = torch.arange(len(self.states), device=self.device)
        sot_index = torch.tensor([state.initial.index(self.tokenizer.sot) for state in self.states],
                                 device=self.device)
        picked = self.decoder.logits(torch.stack([hidden[rows, sot_index], hidden[rows, lengths - 1]]))
        no_speech = picked[0].softmax(dim=-1)[:, self.tokenizer.no_speech]
        return no_speech, picked[1]

    def _result(self, state: _RowState, no_speech_prob: float) -> DecodingResult:
        options = self.options
        if not state.finished:
            state.finished.append(([], 0.0))
        penalty = options.length_penalty

        def score(entry: tuple[list[int], float]) -> float:
            tokens, logprob = entry
            length = len(tokens)
            if penalty is None:
                return logprob / max(length, 1)
            return logprob / ((5 + length) / 6) ** penalty

        tokens, sum_logprob = max(state.finished, key=score)
        text = self.tokenizer.decode(state.text(tokens))
        return DecodingResult(
            tokens=tokens,
            text=text,
            sum_logprob=sum_logprob,
            avg_logprob=sum_logprob / (len(tokens) + 1),
            no_speech_prob=no_speech_prob,
            temperature=options.temperature,
            compression_ratio=compression_ratio(text.strip()),
            finished=not state.truncated,
        )


Selection = tuple[list[int], list[int], _Live]  # the source sequence of each continuing one, its token, the new live


class TokenSelector:
    """A search strategy: picks the next token of each live sequence and retires the finished ones."""

    n_sequences = 1  # live sequences per row at the start

    def __init__(self, eot: int) -> None:
        self.eot = eot

    def select(self, logits: Tensor, live: _Live, states: list[_RowState]) -> Selection:
        raise NotImplementedError


class Greedy(TokenSelector):
    """The most probable token."""

    def choose(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1)

    def select(self, logits: Tensor, live: _Live, states: list[_RowState]) -> Selection:
        logprobs = logits.log_softmax(dim=-1)
        chosen = self.choose(logits)
        chosen_logprobs = logprobs.gather(1, chosen[:, None]).squeeze(1).tolist()
        source, next_tokens, kept = [], [], _Live([], [], [])
        for r, (token, logprob) in enumerate(zip(chosen.tolist(), chosen_logprobs)):
            state = states[live.row[r]]
            total = live.logprob[r] + logprob
            if token == self.eot:
                state.finished.append((live.tokens[r], total))
                continue
            tokens = live.tokens[r] + [token]
            if len(tokens) >= state.cap:
                state.finished.append((tokens, total))
                state.truncated = True
                continue
            source.append(r)
            next_tokens.append(token)
            kept.row.append(live.row[r])
            kept.tokens.append(tokens)
            kept.logprob.append(total)
        return source, next_tokens, kept


class Sampling(Greedy):
    """A token drawn at the temperature; best_of independent samples per row."""

    def __init__(self, eot: int, temperature: float, best_of: int, generator: torch.Generator | None) -> None:
        super().__init__(eot)
        self.temperature, self.n_sequences, self.generator = temperature, best_of, generator

    def choose(self, logits: Tensor) -> Tensor:
        probs = (logits / self.temperature).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


class BeamSearch(TokenSelector):
    """beam_size sequences per row, until beam_size * patience of them finish."""

    def __init__(self, eot: int, beam_size: int, patience: float) -> None:
        super().__init__(eot)
        self.beam_size = self.n_sequences = beam_size
        self.max_candidates = max(1, round(beam_size * patience))

    def select(self, logits: Tensor, live: _Live, states: list[_RowState]) -> Selection:
        top_logprobs, top_tokens = (t.tolist() for t in logits.log_softmax(dim=-1).topk(self.beam_size + 1, dim=-1))
        by_row: dict[int, list[int]] = {}
        for r, row in enumerate(live.row):
            by_row.setdefault(row, []).append(r)
        source, next_tokens, kept = [], [], _Live([], [], [])
        for row, sequences in by_row.items():
            candidates = sorted(
                (
                    (live.logprob[r] + logprob, r, token)
                    for r in sequences
                    for logprob, token in zip(top_logprobs[r], top_tokens[r])
                    if logprob != NEG_INF
                ),
                key=lambda c: -c[0],
            )
            for score, r, token in self._survivors(candidates, live, states[row]):
                source.append(r)
                next_tokens.append(token)
                kept.row.append(row)
                kept.tokens.append(live.tokens[r] + [token])
                kept.logprob.append(score)
        return source, next_tokens, kept

    def _survivors(self, candidates: list[tuple[float, int, int]], live: _Live, state: _RowState
                   ) -> list[tuple[float, int, int]]:
        """The best beam_size continuations of one row, best first; finished ones go to state.finished."""
        survivors: list[tuple[float, int, int]] = []
        seen: set[tuple[int, ...]] = set()
        for score, r, token in candidates:
            sequence = (*live.tokens[r], token)
            if sequence in seen:
                continue  # beams that are still the same sequence (all of them, at the first step) count once
            seen.add(sequence)
            if token == self.eot:
                if len(state.finished) < self.max_candidates:
                    state.finished.append((live.tokens[r], score))
            elif len(live.tokens[r]) + 1 >= state.cap:
                if len(state.finished) < self.max_candidates:
                    state.finished.append((live.tokens[r] + [token], score))
                    state.truncated = True
            else:
                survivors.append((score, r, token))
            if len(survivors) == self.beam_size:
                break
        if len(state.finished) >= self.max_candidates:
            return []  # enough sequences finished: this row's beams stop
        return survivors


def _selector(options: DecodingOptions, tokenizer: Tokenizer, generator: torch.Generator | None) -> TokenSelector:
    """The strategy the options ask for, as whisper's DecodingTask assembles its decoder."""
    if options.temperature > 0:
        return Sampling(tokenizer.eot, options.temperature, options.best_of, generator)
    if options.beam_size > 1:
        return BeamSearch(tokenizer.eot, options.beam_size, options.patience)
    return Greedy(tokenizer.eot)


def decode_drafts(
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    memory: Tensor,
    rows: list[DecodingRow],
    suppress_tokens: tuple[int, ...],
    alignment_heads: list[tuple[int, int]],
    memory_lengths: Tensor | None = None,
    cross: Cross | None = None,
    exact: bool = False,
) -> list[DraftResult]:
    """Greedy decoding without timestamps, verifying each row's draft (a guessed continuation) in the first pass.

    Each row runs prompt + sot + prefix + draft in one batched pass. The draft is accepted up to the
    first token that greedy decoding would not pick; decoding then goes on token by token from there.
    The result is exactly what plain greedy decoding gives (with a float decoder; int8 layers, model/int8.py,
    quantise activations per call, so one pass of many tokens rounds a little differently from steps of
    one), at the cost of one pass for the part of the draft that still holds (in streaming, the previous
    hypothesis mostly does). The alignment
    heads' scores come along, so word timings need no extra pass. exact: choose by full-precision logits,
    as `decode` does (not by the CPU's faster int8 ones, which may break near-ties the other way), and give
    each result its no-speech probability. A row's vocabulary checks its draft against the boosted logits.
    """
    states = []
    for row in rows:
        initial = row.initial_tokens(tokenizer, True, decoder.n_ctx)
        cap = row.max_new_tokens if row.max_new_tokens is not None else decoder.n_ctx // 2
        states.append(_RowState(row, initial, max(0, min(cap, decoder.n_ctx - len(initial) - 1))))
    rules = LogitRules(tokenizer, suppress_tokens, decoder.token_embedding.num_embeddings, memory.device)
    verification = DraftVerification(decoder, rules, alignment_heads, decoder.new_cache(memory, memory_lengths, cross),
                                     exact)
    live = verification.verify(states)
    verification.greedy(states, live)
    return [state.result for state in states if state.result is not None]


class DraftVerification:
    """The decoder passes of decode_drafts: one that verifies every row's draft, then greedy steps."""

    def __init__(self, decoder: TextDecoder, rules: LogitRules, alignment_heads: list[tuple[int, int]],
                 cache: KVCache, exact: bool = False) -> None:
        self.decoder, self.rules, self.alignment_heads, self.cache = decoder, rules, alignment_heads, cache
        self.eot = rules.tokenizer.eot
        self.exact = exact
        self.logits = decoder.logits if exact else decoder.greedy_logits

    def heads(self, scores: list[Tensor]) -> Tensor:  # (B, heads, n, S)
        return torch.stack([scores[layer][:, head] for layer, head in self.alignment_heads], dim=1)

    def verify(self, states: list[_RowState]) -> list[int]:
        """Run each row's initial tokens and draft; accept the draft as far as greedy decoding agrees with
        it, and take the token after. Returns the rows that go on."""
        device = self.rules.suppress.device
        drafts = [state.row.draft[: max(0, state.cap - 1)] for state in states]
        sequences = [state.initial + draft for state, draft in zip(states, drafts)]
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        batch = torch.full((len(states), int(lengths.max())), self.eot, dtype=torch.long, device=device)
        for r, sequence in enumerate(sequences):
            batch[r, : len(sequence)] = torch.tensor(sequence, device=device)
        hidden, scores = self.decoder(batch, self.cache, n_valid=lengths, want_weights=True)
        heads = self.heads(scores)
        # the logits that verify each row's draft, in one matmul: positions len(initial)-1 .. len(initial)+len(draft)-1
        picked = torch.cat([hidden[r, len(state.initial) - 1 : len(state.initial) + len(draft)]
                            for r, (state, draft) in enumerate(zip(states, drafts))])
        sampled = [draft[:j] for draft in drafts for j in range(len(draft) + 1)]
        forced = [state.row.no_end_before_word for state, draft in zip(states, drafts) for _ in range(len(draft) + 1)]
        logits = self.rules.apply(self.logits(picked), sampled, forced)
        if any(state.row.vocabulary for state in states):
            boost(logits, [state.row.vocabulary for state, draft in zip(states, drafts) for _ in range(len(draft) + 1)],
                  [state.text(draft[:j]) for state, draft in zip(states, drafts) for j in range(len(draft) + 1)])
        best = logits.softmax(dim=-1).max(dim=-1)
        predicted, probability = best.indices.tolist(), best.values.tolist()
        silent = self._no_speech(hidden, states) if self.exact else [0.0] * len(states)
        live, positions, offset = [], lengths.clone(), 0
        for r, (state, draft) in enumerate(zip(states, drafts)):
            verdicts = predicted[offset : offset + len(draft) + 1]
            odds = probability[offset : offset + len(draft) + 1]
            offset += len(draft) + 1
            while state.accepted < len(draft) and verdicts[state.accepted] == draft[state.accepted]:
                state.accepted += 1
            begin = len(state.initial) - len(state.row.prefix) - 1  # the <|notimestamps|> query: the first text token
            state.pieces.append(heads[r, :, begin : len(state.initial) + state.accepted])
            state.tokens, state.probabilities = draft[: state.accepted], odds[: state.accepted]
            state.no_speech_prob = silent[r]
            if state.cap == 0:
                state.result = DraftResult(state.tokens, verdicts[state.accepted] == self.eot, state.accepted, 0,
                                           torch.cat(state.pieces, dim=1), state.probabilities, odds[state.accepted],
                                           state.no_speech_prob)
            elif state.take(verdicts[state.accepted], odds[state.accepted], self.eot, 0):
                live.append(r)
                positions[r] = len(state.initial) + state.accepted  # rewind past rejected draft tokens
        self.cache.lengths = positions
        return live

    def _no_speech(self, hidden: Tensor, states: list[_RowState]) -> list[float]:
        """Each row's probability of <|nospeech|> at its start-of-transcript query (full-precision logits)."""
        tokenizer = self.rules.tokenizer
        at_sot = torch.stack([hidden[r, state.initial.index(tokenizer.sot)] for r, state in enumerate(states)])
        return self.decoder.logits(at_sot).softmax(dim=-1)[:, tokenizer.no_speech].tolist()

    def greedy(self, states: list[_RowState], live: list[int]) -> None:
        """Greedy steps for the live rows until each ends. Rows stay in the batch after they finish (copying
        the cache to drop them costs more than running them) until at most half are live."""
        device = self.rules.suppress.device
        batch_rows, steps, cache = list(range(len(states))), 0, self.cache
        while live:
            if len(live) <= len(batch_rows) // 2:
                cache = cache.select(torch.tensor([batch_rows.index(r) for r in live], dtype=torch.long, device=device))
                batch_rows = list(live)
            # a row that has finished goes on with its last token (or end-of-text): its output is not used
            step_tokens = torch.tensor([states[r].next_token if states[r].next_token >= 0 else self.eot
                                        for r in batch_rows], device=device)[:, None]
            hidden, scores = self.decoder(step_tokens, cache, want_weights=True)
            step_heads = self.heads(scores)
            steps += 1
            slots = [batch_rows.index(r) for r in live]
            logits = self.rules.apply(self.logits(hidden[slots, -1]), [states[r].tokens for r in live],
                                      [states[r].row.no_end_before_word for r in live])
            if any(states[r].row.vocabulary for r in live):
                boost(logits, [states[r].row.vocabulary for r in live],
                      [states[r].text(states[r].tokens) for r in live])
            best = logits.softmax(dim=-1).max(dim=-1)
            still = []
            for slot, r, token, probability in zip(slots, live, best.indices.tolist(), best.values.tolist()):
                states[r].pieces.append(step_heads[slot])
                if states[r].take(token, probability, self.eot, steps):
                    still.append(r)
            live = still


def _close_rows(pieces: list[Tensor]) -> Tensor:
    """Scores of a sequence cut by the token budget lack the row that would predict end-of-text: repeat the last."""
    rows = torch.cat(pieces, dim=1)
    return torch.cat([rows, rows[:, -1:]], dim=1)
