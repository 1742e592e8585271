"""The Whisper text decoder with an explicit key/value cache.

The cache belongs to the caller (one per decoding batch), not to the model: self-attention
keys/values grow by one entry per token, and cross-attention keys/values are computed once per
encoder output, because they depend only on the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.layers import LayerNorm, SelfAttention, attend

__all__ = ["Cross", "KVCache", "TextDecoder"]

CACHE_GROWTH = 64  # self-attention cache slots added at a time

Cross = list[tuple[Tensor, Tensor]]  # per layer, cross-attention keys (B, H, D / H, S, transposed) and values


@dataclass
class KVCache:
    """Decoder state of a batch of B token sequences.

    cross: per layer, keys (B, H, D / H, S, transposed) and values (B, H, S, D / H) of the encoder output.
    memory_mask: (B, S) True at valid encoder positions, or None when every row's audio fills S.
    keys, values: per layer, self-attention buffers (B, H, capacity, D / H).
    lengths: (B,) tokens stored per row; row b's next token goes to position lengths[b].
    """

    cross: Cross
    memory_mask: Tensor | None
    keys: list[Tensor]
    values: list[Tensor]
    lengths: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    def select(self, rows: Tensor) -> "KVCache":
        """The cache of rows `rows` (beam reordering, dropping finished rows).

        Cross-attention keys/values of a single encoder output stay shared by all rows (beams of one item)."""
        shared = self.cross[0][0].shape[0] == 1
        mask = self.memory_mask if self.memory_mask is None or shared else self.memory_mask[rows]
        return KVCache(
            cross=self.cross if shared else [(k[rows], v[rows]) for k, v in self.cross],
            memory_mask=mask,
            keys=[k[rows] for k in self.keys],
            values=[v[rows] for v in self.values],
            lengths=self.lengths[rows],
        )

    def reserve(self, n_ctx: int) -> None:
        """Make room for positions up to n_ctx."""
        capacity = self.keys[0].shape[2]
        if n_ctx <= capacity:
            return
        extra = max(CACHE_GROWTH, n_ctx - capacity)
        grow = lambda t: F.pad(t, (0, 0, 0, extra))  # noqa: E731
        self.keys = [grow(k) for k in self.keys]
        self.values = [grow(v) for v in self.values]


class CrossAttention(nn.Module):
    """Attention of the text over the encoder output; keys/values are fused (the key has no bias)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.kv = nn.Linear(n_state, 2 * n_state)
        self.out = nn.Linear(n_state, n_state)

    def memory(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """Keys, transposed, (B, H, D / H, S) and values (B, H, S, D / H) of the encoder output xa (B, S, D).

        Both are made contiguous once here: every decoding step multiplies by them.
        """
        batch, n_ctx, n_state = xa.shape
        kv = self.kv(xa).view(batch, n_ctx, 2, self.n_head, n_state // self.n_head)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k.transpose(-1, -2).contiguous(), v.contiguous()

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, want_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        batch, n_ctx, n_state = x.shape
        q = self.query(x).view(batch, n_ctx, self.n_head, -1).transpose(1, 2)
        if k.shape[0] == 1 < batch:  # rows share one encoder output: fold them into the queries of one matmul
            folded = q.transpose(0, 1).reshape(1, self.n_head, batch * n_ctx, -1)
            y, scores = attend(folded, k, v, mask, transposed=True)
            y = y.view(self.n_head, batch, n_ctx, -1).transpose(0, 1)
            scores = scores.view(self.n_head, batch, n_ctx, -1).transpose(0, 1)
        else:
            y, scores = attend(q, k, v, mask, transposed=True)
        return self.out(y.transpose(1, 2).reshape(batch, n_ctx, n_state)), scores if want_weights else None


class DecoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = SelfAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = CrossAttention(n_state, n_head)
        self.cross_attn_ln = LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = LayerNorm(n_state)


class TextDecoder(nn.Module):
    """Token and learned position embeddings, pre-LN blocks with cross-attention, tied output projection."""

    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.n_ctx = n_ctx
        self.n_head = n_head
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList([DecoderBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln = LayerNorm(n_state)
        self.greedy_output: nn.Module | None = None  # a faster copy of the output projection (model/int8.py)
        self.activations: torch.dtype | None = None  # when not the weights' dtype (float32 with int8 layers)

    def cross_memory(self, memory: Tensor) -> Cross:
        """Per layer, the cross-attention keys (transposed) and values of the encoder output memory (B, S, D)."""
        cross = [block.cross_attn.memory(memory) for block in self.blocks]
        if self.activations is None:
            return cross
        return [(k.to(self.activations), v.to(self.activations)) for k, v in cross]

    def new_cache(
        self, memory: Tensor, memory_lengths: Tensor | None = None, cross: Cross | None = None
    ) -> KVCache:
        """A fresh cache over the encoder output memory (B, S, D).

        memory_lengths (B,) gives each row's valid encoder positions when rows are padded to S.
        cross: memory's cross_memory(), when the caller has it already.
        """
        batch, n_audio, n_state = memory.shape
        mask = None
        if memory_lengths is not None and bool((memory_lengths < n_audio).any()):
            mask = torch.arange(n_audio, device=memory.device)[None, :] < memory_lengths[:, None]
        head_dim = n_state // self.n_head
        cross = cross if cross is not None else self.cross_memory(memory)
        empty = memory.new_zeros(batch, self.n_head, CACHE_GROWTH, head_dim, dtype=cross[0][0].dtype)
        return KVCache(
            cross=cross,
            memory_mask=mask,
            keys=[empty.clone() for _ in self.blocks],
            values=[empty.clone() for _ in self.blocks],
            lengths=torch.zeros(batch, dtype=torch.long, device=memory.device),
        )

    def forward(
        self, tokens: Tensor, cache: KVCache, n_valid: Tensor | None = None, want_weights: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Run tokens (B, n) after what the cache holds; return the final hidden states (B, n, D).

        Row b's tokens go to positions lengths[b] .. lengths[b] + n - 1; n_valid (B,) says how
        many of them are real (the rest is right padding), and lengths advance by n_valid.
        With want_weights, also return each layer's scaled cross-attention scores q.k (B, H, n, S), float32,
        before the softmax.
        """
        batch, n_new = tokens.shape
        start = cache.lengths
        n_valid = n_valid if n_valid is not None else torch.full_like(start, n_new)
        positions = start[:, None] + torch.arange(n_new, device=tokens.device)[None, :]  # (B, n)
        if int(positions.max()) >= self.n_ctx:
            raise ValueError(f"decoder context of {self.n_ctx} tokens exceeded")
        n_keys = int(positions.max()) + 1
        cache.reserve(n_keys)
        x = self.token_embedding(tokens) + self.positional_embedding[positions]
        x = x.to(cache.cross[0][0].dtype)
        key_positions = torch.arange(n_keys, device=tokens.device)
        self_mask = (key_positions[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, n, n_keys)
        cross_mask = None if cache.memory_mask is None else cache.memory_mask[:, None, None, :]
        rows = torch.arange(batch, device=tokens.device)[:, None]
        weights = []
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.project(block.attn_ln(x))
            # write this step's keys/values at each row's own positions
            cache.keys[layer][rows, :, positions] = k.transpose(1, 2)
            cache.values[layer][rows, :, positions] = v.transpose(1, 2)
            keys = cache.keys[layer][:, :, :n_keys]
            values = cache.values[layer][:, :, :n_keys]
            y, _ = attend(q, keys, values, self_mask)
            x = x + block.attn.out(y.transpose(1, 2).reshape(batch, n_new, -1))
            cross_k, cross_v = cache.cross[layer]
            y, w = block.cross_attn(block.cross_attn_ln(x), cross_k, cross_v, cross_mask, want_weights)
            x = x + y
            x = x + block.mlp(block.mlp_ln(x))
            if w is not None:
                weights.append(w)
        cache.lengths = start + n_valid
        return self.ln(x), weights

    def logits(self, hidden: Tensor) -> Tensor:
        """Next-token logits (..., V) in float32 from hidden states (..., D)."""
        weight = self.token_embedding.weight
        return (hidden.to(weight.dtype) @ weight.T).float()

    def greedy_logits(self, hidden: Tensor) -> Tensor:
        """Logits for greedy choices: from the int8 copy of the output projection where the model has one (each
        decoding step reads the whole vocabulary's weights, and int8 is the fastest way to), else logits()."""
        if self.greedy_output is None:
            return self.logits(hidden)
        return self.greedy_output(hidden).float()
