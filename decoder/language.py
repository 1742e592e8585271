"""Spoken-language identification: Whisper's one decoder step on <|startoftranscript|>.

The logits that follow the start-of-transcript token choose the language token of a multilingual
checkpoint; restricted to the language tokens, their softmax is the probability of each language.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .network import Cross, TextDecoder
from .tokenizer import Tokenizer

__all__ = ["detect_language"]


def detect_language(
    decoder: TextDecoder, tokenizer: Tokenizer, memory: Tensor, memory_lengths: Tensor | None = None,
    cross: Cross | None = None,
) -> list[dict[str, float]]:
    """Per row of memory (B, S, D): {language code: probability}, most probable first.

    An English-only checkpoint knows one language: {"en": 1.0} for every row, with no model pass.
    """
    if not tokenizer.multilingual:
        return [{"en": 1.0} for _ in range(memory.shape[0])]
    codes = list(tokenizer.language_tokens)
    ids = torch.tensor(list(tokenizer.language_tokens.values()), device=memory.device)
    tokens = torch.full((memory.shape[0], 1), tokenizer.sot, dtype=torch.long, device=memory.device)
    hidden, _ = decoder(tokens, decoder.new_cache(memory, memory_lengths, cross))
    probabilities = decoder.logits(hidden[:, -1])[:, ids].float().softmax(dim=-1)
    ranked = probabilities.sort(dim=-1, descending=True)
    return [{codes[i]: p for i, p in zip(order, values)}
            for order, values in zip(ranked.indices.tolist(), ranked.values.tolist())]
