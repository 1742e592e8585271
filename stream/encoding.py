"""How jobs' audio is encoded for decoding: the encoder strategies, one chosen from the configuration.

A job without a segment cache is encoded whole (full context, Whisper's own way). A job with
one shares work with the segment's earlier jobs, as its strategy says:

- `window`: the earlier segments' audio before the segment (its decoded context) is encoded once
  per segment as a block of its own; a final encodes the segment itself with full context. A partial
  update re-encodes the segment's last `partial_window_s` (with full context); the audio before that
  keeps the states the update that last saw it there gave it, with all its audio after it in view.
- `cached`: the segment's completed chunks are encoded once, block-causally; each update encodes
  only the open chunk and a tail of silence (encoder/streaming.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.decoder.network import Cross
from captioner.encoder.streaming import EncoderCache, rounded_up
from captioner.model.whisper import Model

from .config import StreamConfig
from .features import FRAMES_PER_SECOND, PAD_VALUE
from .jobs import Job, SegmentCache, UpdateJob

__all__ = ["Encoded", "Encoding", "WindowEncoding", "CachedEncoding", "encoding_for", "joined"]


@dataclass(frozen=True)
class Encoded:
    """Encoder outputs of a batch of jobs (B, S, D), their valid lengths (B,) and the decoder's
    cross-attention keys/values of them (padded alike)."""

    memory: Tensor
    lengths: Tensor
    cross: Cross
    computed: list[float] = field(default_factory=list)  # encoder positions computed per job (a cost measure)

    def pick(self, index: list[int]) -> Encoded:
        if index == list(range(self.memory.shape[0])):
            return self
        rows = torch.tensor(index, device=self.memory.device)
        return Encoded(self.memory[rows], self.lengths[rows], [(k[rows], v[rows]) for k, v in self.cross])


class Encoding:
    """Encodes batches of jobs; subclasses say how a job with a segment cache reuses it."""

    def __init__(self, model: Model, config: StreamConfig) -> None:
        self.model = model
        self.pad_frames = 2 * round(config.padding_s * FRAMES_PER_SECOND / 2)
        self.partial_pad_frames = 2 * round(config.partial_padding_s * FRAMES_PER_SECOND / 2)

    def __call__(self, jobs: list[Job]) -> Encoded:
        outputs, crosses, computed = [], [], []
        for job in jobs:
            pad_frames = self.partial_pad_frames if isinstance(job, UpdateJob) else self.pad_frames
            if job.cache is not None:
                before = job.cache.encoder.n_encoded
                mel = job.mel.to(self.model.device, self.model.dtype)
                out = self._with_cache(job, mel, job.cache.encoder, pad_frames // 2)
                computed.append(job.cache.encoder.n_encoded - before)
                crosses.append(self._cross_after_cache(job.cache, out))
            else:
                out = self._window(job.mel, pad_frames)
                computed.append(out.shape[1])
                crosses.append(self.model.cross_memory(out))
            outputs.append(out[0])
        lengths = torch.tensor([o.shape[0] for o in outputs], device=self.model.device)
        width = int(lengths.max())
        memory = torch.stack([F.pad(o, (0, 0, 0, width - o.shape[0])) for o in outputs])
        cross = crosses[0] if len(crosses) == 1 else [
            (torch.cat([F.pad(c[layer][0], (0, width - c[layer][0].shape[-1])) for c in crosses]),
             torch.cat([F.pad(c[layer][1], (0, 0, 0, width - c[layer][1].shape[-2])) for c in crosses]))
            for layer in range(len(crosses[0]))
        ]
        return Encoded(memory, lengths, cross, computed)

    def _with_cache(self, job: Job, mel: Tensor, cache: EncoderCache, tail: int) -> Tensor:
        raise NotImplementedError

    def _window(self, mel: Tensor, pad_frames: int) -> Tensor:
        """Full-context encoder output of the frames plus at least pad_frames of 0.0 (rounded up): (1, S, D)."""
        total = min(2 * rounded_up((mel.shape[1] + pad_frames) // 2), self.model.max_frames)
        return self.model.encode(F.pad(mel, (0, total - mel.shape[1]), value=PAD_VALUE)[None])

    def _cross_after_cache(self, cache: SegmentCache, out: Tensor) -> Cross:
        """Cross-attention keys/values of out (1, S, D), whose first n_done positions are the encoder cache's
        output: those are projected once, when they enter the cache, and kept with the segment."""
        n_done = cache.encoder.n_done
        kept = cache.cross[0][0].shape[-1] if cache.cross else 0
        if kept < n_done:
            new = self.model.cross_memory(out[:, kept:n_done])
            cache.cross = joined(cache.cross, new) if kept else new
        rest = self.model.cross_memory(out[:, n_done:])
        return joined(cache.cross, rest) if n_done else rest


class WindowEncoding(Encoding):
    def _with_cache(self, job: Job, mel: Tensor, cache: EncoderCache, tail: int) -> Tensor:
        frozen = job.frozen_positions if isinstance(job, UpdateJob) else 0
        return self.model.encode_after_context(cache, mel, job.context_positions, tail, frozen)


class CachedEncoding(Encoding):
    def __init__(self, model: Model, config: StreamConfig) -> None:
        super().__init__(model, config)
        self.chunk_positions = round(config.chunk_s * FRAMES_PER_SECOND / 2)

    def _with_cache(self, job: Job, mel: Tensor, cache: EncoderCache, tail: int) -> Tensor:
        return self.model.encode_cached(cache, mel, self.chunk_positions, tail)


def encoding_for(model: Model, config: StreamConfig) -> Encoding:
    return {"window": WindowEncoding, "cached": CachedEncoding}[config.strategy](model, config)


def joined(first: Cross, second: Cross) -> Cross:
    """Cross-attention keys/values of two runs of encoder positions, one after the other."""
    return [(torch.cat([k1, k2], dim=-1), torch.cat([v1, v2], dim=-2)) for (k1, v1), (k2, v2) in zip(first, second)]
