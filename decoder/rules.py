"""Rules on next-token logits, written once: the searches (greedy, sampling, beam) and the draft verifier apply them.

- suppressed tokens (the checkpoint's list, and timestamps or <|notimestamps|> as the mode says);
- no blank and no end-of-text as the first sampled token;
- optionally, no end-of-text while the sampled tokens are only punctuation: after earlier text
  (a forced prefix) tiny.en tends to close that sentence and stop, however much speech follows;
- with timestamps, Whisper's pairing and ordering rules.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

from .tokenizer import TIME_PRECISION, Tokenizer

__all__ = ["NEG_INF", "PUNCTUATION", "LogitRules", "is_punctuation", "punctuation_only"]

NEG_INF = float("-inf")
PUNCTUATION = string.punctuation + "“”‘’¿¡…"


class LogitRules:
    def __init__(self, tokenizer: Tokenizer, suppress_tokens: Sequence[int], n_vocab: int, device: torch.device,
                 without_timestamps: bool = True, suppress_blank: bool = True,
                 max_initial_timestamp: float = 1.0) -> None:
        self.tokenizer = tokenizer
        suppress = torch.zeros(n_vocab, dtype=torch.bool, device=device)
        suppress[list(suppress_tokens)] = True
        if without_timestamps:
            suppress[tokenizer.timestamp_begin :] = True
        else:
            suppress[tokenizer.no_timestamps] = True
        self.suppress = suppress
        self.blank = torch.tensor(tokenizer.encode(" ") + [tokenizer.eot], device=device) if suppress_blank else None
        self.timestamps = not without_timestamps
        self.max_initial_timestamp = max_initial_timestamp

    def apply(self, logits: Tensor, sampled: Sequence[Sequence[int]], no_end_before_word: Sequence[bool]) -> Tensor:
        """The logits (R, V) of rows that have sampled `sampled[r]` so far, with the rules applied (a new tensor)."""
        logits = logits.masked_fill(self.suppress, NEG_INF)
        device = logits.device
        if self.blank is not None:
            first = [r for r, tokens in enumerate(sampled) if not tokens]
            if first:
                logits[torch.tensor(first, device=device)[:, None], self.blank[None, :]] = NEG_INF
        wordless = [r for r, (tokens, rule) in enumerate(zip(sampled, no_end_before_word))
                    if rule and punctuation_only(self.tokenizer, tokens)]
        if wordless:
            logits[torch.tensor(wordless, device=device), self.tokenizer.eot] = NEG_INF
        if self.timestamps:
            self._timestamp_rules(logits, sampled)
        return logits

    def _timestamp_rules(self, logits: Tensor, sampled: Sequence[Sequence[int]]) -> None:
        """Whisper's rules: timestamps come in pairs, never decrease, and the first is at most max_initial_timestamp."""
        begin = self.tokenizer.timestamp_begin
        eot = self.tokenizer.eot
        for r, tokens in enumerate(sampled):
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
                last_allowed = begin + round(self.max_initial_timestamp / TIME_PRECISION)
                logits[r, last_allowed + 1 :] = NEG_INF
        logprobs = logits.log_softmax(dim=-1)
        timestamp_logprob = logprobs[:, begin:].logsumexp(dim=-1)
        text_logprob = logprobs[:, :begin].max(dim=-1).values
        logits[timestamp_logprob > text_logprob, :begin] = NEG_INF


def is_punctuation(text: str) -> bool:
    """Text that is nothing but punctuation (and spaces), and not empty."""
    return bool(text.strip()) and all(c in PUNCTUATION for c in text.strip())


def punctuation_only(tokenizer: Tokenizer, tokens: Sequence[int]) -> bool:
    return all(_is_punctuation_token(tokenizer, t) for t in tokens)


@cache
def _is_punctuation_token(tokenizer: Tokenizer, token: int) -> bool:
    # a token of spaces alone counts as punctuation here (it says no word), unlike is_punctuation's text
    return token < tokenizer.eot and all(c in PUNCTUATION for c in tokenizer.decode([token]).strip())
