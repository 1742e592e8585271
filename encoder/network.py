"""The Whisper audio encoder, able to encode fewer than 3000 mel frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.layers import LayerNorm, SelfAttention

__all__ = ["EncoderBlock", "AudioEncoder"]


class EncoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = SelfAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = LayerNorm(n_state)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_ln(x), mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Two convolutions (the second with stride 2), sinusoidal positions, pre-LN transformer blocks.

    Unlike openai-whisper's encoder it accepts any even number of frames up to 2 * n_ctx and
    uses only the first T / 2 positions.
    """

    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.n_ctx = n_ctx
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList([EncoderBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln_post = LayerNorm(n_state)

    def forward(self, mel: Tensor, n_frames: Tensor | None = None) -> Tensor:
        """Encode mel (B, n_mels, T), T even and <= 2 * n_ctx, to (B, T / 2, n_state).

        n_frames (B,) gives each row's valid frame count when rows are padded to a common T:
        padded positions are masked out as keys, so each valid output equals that of the row
        encoded alone (the pad value is 0.0, the same value the convolutions pad with).
        """
        if mel.shape[-1] % 2 or mel.shape[-1] > 2 * self.n_ctx:
            raise ValueError(f"expected an even number of frames up to {2 * self.n_ctx}, got {mel.shape[-1]}")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        mask = None
        if n_frames is not None:
            positions = torch.arange(x.shape[1], device=x.device)
            mask = (positions[None, :] < (n_frames[:, None] + 1) // 2)[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_post(x)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal position table (sin half, then cos half), shape (length, channels)."""
    log_timescale_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)
