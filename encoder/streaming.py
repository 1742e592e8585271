"""Streaming encoder with cached state: each completed chunk of audio is encoded once.

Block-causal attention: the positions of a completed chunk attend to every earlier completed
chunk (through per-layer key/value caches) and to their own chunk, never to later audio. The
incomplete chunk at the edge of the audio is encoded provisionally at each update, together with a
tail of 0.0 mel frames (Whisper's silence), as one block that attends to everything before it and
to itself. The convolution front-end is exact at chunk borders: a chunk is complete only once the
two mel frames its last position looks at have arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .network import AudioEncoder

__all__ = ["EncoderCache", "front_end", "encode_cached", "encode_after_context", "rounded_up", "ROUND_POSITIONS"]

# Blocks of provisional positions are rounded up with more silence to a multiple of this: their matmuls then
# take few shapes, and the CPU kernels compiled for a shape (oneDNN's, for bfloat16) are reused, not rebuilt
# at each partial update (a third of an update's encoder time, docs/benchmarks.md).
ROUND_POSITIONS = 50


def rounded_up(n_positions: int) -> int:
    return -(-n_positions // ROUND_POSITIONS) * ROUND_POSITIONS


@dataclass
class EncoderCache:
    """State of one stream's encoder: what its completed chunks produced."""

    keys: list[Tensor] = field(default_factory=list)  # per layer (1, H, n_done, hd)
    values: list[Tensor] = field(default_factory=list)
    output: Tensor | None = None  # (1, n_done, D) final-layer output of the completed positions
    n_done: int = 0  # completed encoder positions
    n_encoded: int = 0  # encoder positions computed so far, provisional ones included (a cost measure)

    def prefix(self, n: int) -> EncoderCache:
        """The state after its first n completed positions only (later blocks never change earlier ones)."""
        if n >= self.n_done:
            return self
        return EncoderCache([k[:, :, :n] for k in self.keys], [v[:, :, :n] for v in self.values],
                            None if self.output is None else self.output[:, :n], n, self.n_encoded)


def front_end(encoder: AudioEncoder, mel: Tensor, start: int, stop: int) -> Tensor:
    """Convolutions and positions for encoder positions [start, stop) of mel (n_mels, T), T >= 2 * stop.

    Only mel frames [2 * start - 4, 2 * stop + 4) are convolved; the result equals the same positions
    of a convolution over the whole of mel (zero padding only at its true ends). Returns (1, n, D).
    """
    lo = max(0, 2 * start - 4)
    hi = min(mel.shape[1], 2 * stop + 4)
    x = F.gelu(encoder.conv1(mel[None, :, lo:hi]))
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)
    first = start - lo // 2
    x = x[:, first : first + stop - start]
    return x + encoder.positional_embedding[start:stop].to(x.dtype)


def _run_block(encoder: AudioEncoder, x: Tensor, cache: EncoderCache, keep: int) -> Tensor:
    """Run a block of positions (1, n, D) that attends to the cache and to itself; its first `keep` positions
    join the cache (their keys, values and output, as this block computed them)."""
    for layer, block in enumerate(encoder.blocks):
        q, k, v = block.attn.project(block.attn_ln(x))
        if cache.n_done:
            keys = torch.cat([cache.keys[layer], k], dim=2)
            values = torch.cat([cache.values[layer], v], dim=2)
        else:
            keys, values = k, v
        if keep:
            kept = (keys[:, :, : cache.n_done + keep], values[:, :, : cache.n_done + keep])
            if layer < len(cache.keys):
                cache.keys[layer], cache.values[layer] = kept
            else:
                cache.keys.append(kept[0])
                cache.values.append(kept[1])
        x = x + block.attn.attend(q, keys, values)
        x = x + block.mlp(block.mlp_ln(x))
    out = encoder.ln_post(x)
    if keep:
        cache.output = out[:, :keep] if cache.output is None else torch.cat([cache.output, out[:, :keep]], dim=1)
        cache.n_done += keep
    cache.n_encoded += out.shape[1]
    return out


def encode_cached(encoder: AudioEncoder, cache: EncoderCache, mel: Tensor, chunk: int, tail: int) -> Tensor:
    """Encoder output (1, n_audio + tail, D) for the normalised mel (n_mels, T) of a stream so far.

    Completed chunks of `chunk` positions are encoded once and cached; the rest of the audio and
    `tail` positions of 0.0 frames are encoded provisionally. T is even; n_audio = T / 2.
    """
    # a chunk [a, a + chunk) is complete when the frames up to 2 * (a + chunk) have arrived
    while (cache.n_done + chunk) * 2 + 1 <= mel.shape[1]:
        _run_block(encoder, front_end(encoder, mel, cache.n_done, cache.n_done + chunk), cache, keep=chunk)
    return _encode_rest(encoder, cache, mel, tail)


def encode_after_context(encoder: AudioEncoder, cache: EncoderCache, mel: Tensor, n_context: int, tail: int,
                         n_frozen: int = 0) -> Tensor:
    """Encoder output (1, n_audio + tail, D) of mel (n_mels, T) whose first n_context positions are earlier audio.

    The earlier audio is encoded once, as a block of its own, and cached. Each call then encodes the
    rest and `tail` positions of 0.0 frames as one block that attends to the cached block and to
    itself; its positions up to n_frozen join the cache as this call computed them, with all the audio
    after them in view (a partial update's older audio, which later updates then take as it is).
    T is even; n_audio = T / 2.
    """
    if cache.n_done < n_context < mel.shape[1] // 2:
        _run_block(encoder, front_end(encoder, mel, cache.n_done, n_context), cache, keep=n_context - cache.n_done)
    return _encode_rest(encoder, cache, mel, tail, keep=max(0, min(n_frozen, mel.shape[1] // 2) - cache.n_done))


def _encode_rest(encoder: AudioEncoder, cache: EncoderCache, mel: Tensor, tail: int, keep: int = 0) -> Tensor:
    """The cached output, then the positions after it and at least `tail` of 0.0 frames encoded as one block, of
    which the first `keep` join the cache. The block is rounded up to a multiple of ROUND_POSITIONS."""
    start = cache.n_done
    stop = min(start + rounded_up(mel.shape[1] // 2 + tail - start), encoder.n_ctx)
    tail = stop - mel.shape[1] // 2
    before = cache.output
    rest = _run_block(encoder, front_end(encoder, F.pad(mel, (0, 2 * tail)), start, stop), cache, keep)
    return rest if before is None else torch.cat([before, rest], dim=1)
