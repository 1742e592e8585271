"""Layers the encoder and the decoder share; captioner.model assembles the network above both."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm", "SelfAttention", "attend"]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activations' dtype, as Whisper does."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).type(
            x.dtype
        )


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused query/key/value projection (the key has no bias)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_state, 3 * n_state)
        self.out = nn.Linear(n_state, n_state)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of x (B, T, D), each (B, H, T, D / H)."""
        batch, n_ctx, n_state = x.shape
        qkv = self.qkv(x).view(batch, n_ctx, 3, self.n_head, n_state // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention of q over k/v; mask (B or 1, 1, Tq, Tk) is True where attending is allowed."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        batch, _, n_ctx, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, n_ctx, -1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(*self.project(x), mask)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, transposed: bool = False) -> tuple[Tensor, Tensor]:
    """Attention for few queries: returns the output (B, H, n, hd) and the scaled scores (B, H, n, S).

    k is (B, H, S, hd), or (B, H, hd, S) when transposed. Explicit matmuls with a float32 softmax:
    for the decoder's few queries this is several times faster on CPUs than
    scaled_dot_product_attention in bfloat16, and as exact.
    """
    # the queries are scaled, not the scores (one pass less over them): by 1/8 for Whisper's 64-wide heads, exact
    scores = ((q * q.shape[-1] ** -0.5) @ (k if transposed else k.transpose(-1, -2))).float()
    masked = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    return masked.softmax(dim=-1).to(v.dtype) @ v, scores
