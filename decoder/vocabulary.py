"""A stream's vocabulary: words and phrases it is likely to contain, favoured in decoding (shallow fusion).

The terms' tokens form a trie. At each step, a row whose text ends inside a term (its last tokens
are the beginning of a term's tokens) gets `bonus` added to the logits of the tokens that continue
that term, and every row gets `start_bonus` on the tokens that begin one (long ones only, see MIN_START_CHARS). Only the next step is
boosted: a term left unfinished stops being favoured at once, so nothing is withdrawn by hand in
greedy decoding, and beam search keeps the few points a started term earned.

Each term is tried as written and capitalised, after a space, since Whisper writes words with a
leading space and capitalises names and the start of sentences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .tokenizer import Tokenizer

__all__ = ["Vocabulary", "term_variants", "boost"]

_END = -1  # key of a trie node: a term ends here
# a term's first token gets start_bonus only when it has this many characters: short ones (" I", " An") are words
# of their own far more often than the start of a listed term, and boosting them makes the decoder invent
MIN_START_CHARS = 3


def term_variants(term: str) -> list[str]:
    """The spellings of a term that decoding may produce: as given and capitalised, each after a space."""
    term = " ".join(term.split())
    forms = {term, term[:1].upper() + term[1:]} if term else set()
    return sorted(f" {form}" for form in forms)


class Vocabulary:
    def __init__(self, tokenizer: Tokenizer, terms: Sequence[str], bonus: float, start_bonus: float) -> None:
        self.terms = tuple(terms)
        self.bonus = bonus
        self.start_bonus = start_bonus
        self.root: dict[int, dict] = {}
        self.starts: dict[int, float] = {}  # start_bonus of each first token long enough to get it
        self.depth = 0  # tokens of the longest spelling
        for term in terms:
            for form in term_variants(term):
                tokens = tokenizer.encode(form)
                node = self.root
                for token in tokens:
                    node = node.setdefault(token, {})
                node[_END] = {}
                self.depth = max(self.depth, len(tokens))
                if tokens and len(tokenizer.decode(tokens[:1]).strip()) >= MIN_START_CHARS and start_bonus:
                    self.starts[tokens[0]] = start_bonus

    def boosts(self, text: Sequence[int]) -> dict[int, float]:
        """Bonus per next token for a row whose text tokens so far are `text`."""
        out = dict(self.starts)
        for start in range(max(0, len(text) - self.depth + 1), len(text)):
            node = self.root
            for token in text[start:]:
                node = node.get(token)
                if node is None:
                    break
            else:
                for token in node:
                    if token != _END:
                        out[token] = max(out.get(token, 0.0), self.bonus)
        return out


def boost(logits: Tensor, vocabularies: Sequence[Vocabulary | None], texts: Sequence[Sequence[int]]) -> Tensor:
    """logits (R, V) with each row's vocabulary bonuses added (in place); texts[r]: row r's text tokens so far."""
    rows, tokens, values = [], [], []
    for r, (vocabulary, text) in enumerate(zip(vocabularies, texts)):
        if vocabulary is not None:
            for token, bonus in vocabulary.boosts(text).items():
                rows.append(r)
                tokens.append(token)
                values.append(bonus)
    if rows:
        device = logits.device
        index = (torch.tensor(rows, device=device), torch.tensor(tokens, device=device))
        logits.index_put_(index, torch.tensor(values, device=device, dtype=logits.dtype), accumulate=True)
    return logits
