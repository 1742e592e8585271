"""Speaker embeddings of a stretch of speech: the speaker encoder's input features, windows and batched pass.

The features are resemblyzer's: the audio raised (never lowered) to -30 dBFS, then 40-band power
mel frames, 25 ms every 10 ms (the Whisper frames' clock). Windows of `window_s` start every
`hop_s` across the speech; one shorter than a window is embedded whole. A stretch gets at most
`max_windows` windows (spread evenly over it), which bounds the time a final waits for its labels.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from captioner.model.speaker_encoder import N_SPEAKER_MELS, SpeakerEncoder, load_speaker_encoder

from .features import FRAMES_PER_SECOND, HOP_LENGTH, N_FFT, mel_filters

__all__ = ["TARGET_DBFS", "SpeakerWindow", "speaker_mels", "plan_windows", "embed_windows", "SpeakerEmbedder",
           "speaker_embedder"]

TARGET_DBFS = -30.0  # loudness the encoder was trained at (quieter speech is raised to it)
MIN_WINDOW_S = 0.5  # speech shorter than this has no embedding
FIRST_WINDOW_COST_S = 0.02  # time per window assumed before any is measured (one CPU thread: about 0.011)
MIN_WINDOWS = 4  # windows a stretch gets whatever the wait bound: enough to find one change of speaker


@dataclass(frozen=True)
class SpeakerWindow:
    start: float  # seconds, on the stream's clock
    end: float
    embedding: np.ndarray  # (256,) unit length


@functools.lru_cache(maxsize=None)
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def speaker_mels(pcm: torch.Tensor) -> torch.Tensor:
    """The encoder's input frames (n, 40) of 16 kHz float samples: n = len // 160 + 1, centred as librosa's."""
    rms = float(pcm.square().mean().sqrt()) if len(pcm) else 0.0
    if rms > 0:
        gain = 10 ** ((TARGET_DBFS - 20 * math.log10(rms)) / 20)
        pcm = pcm * max(1.0, gain)
    padded = torch.nn.functional.pad(pcm, (N_FFT // 2, N_FFT // 2))
    stft = torch.stft(padded, N_FFT, HOP_LENGTH, window=_window(), center=False, return_complex=True)
    return (mel_filters(N_SPEAKER_MELS) @ stft.abs().square()).T


def plan_windows(n_frames: int, window_frames: int, hop_frames: int, max_windows: int) -> list[tuple[int, int]]:
    """(first, end) frames of the windows over n_frames: every hop_frames, the last one flush with the end;
    at most max_windows of them, evenly spread; one window of all frames when they are fewer than a window."""
    if n_frames <= window_frames:
        return [(0, n_frames)]
    last = n_frames - window_frames
    n = min(max_windows, math.ceil(last / hop_frames) + 1)
    starts = sorted({round(i * last / (n - 1)) for i in range(n)}) if n > 1 else [last // 2]
    return [(s, s + window_frames) for s in starts]


def embed_windows(encoder: SpeakerEncoder, pcm: torch.Tensor, offset_s: float, window_s: float, hop_s: float,
                  max_windows: int) -> list[SpeakerWindow]:
    """Embeddings of the windows of a stretch of 16 kHz speech that starts offset_s into the stream, in one pass."""
    mels = speaker_mels(pcm)
    if mels.shape[0] < MIN_WINDOW_S * FRAMES_PER_SECOND:
        return []
    spans = plan_windows(mels.shape[0], round(window_s * FRAMES_PER_SECOND), round(hop_s * FRAMES_PER_SECOND),
                         max_windows)
    batch = torch.stack([mels[a:b] for a, b in spans]) if len({b - a for a, b in spans}) == 1 else None
    with torch.inference_mode():
        if batch is None:  # only a lone short window has its own length
            batch = mels[spans[0][0] : spans[0][1]][None]
        embeddings = encoder(batch).numpy()
    return [SpeakerWindow(round(offset_s + a / FRAMES_PER_SECOND, 3), round(offset_s + b / FRAMES_PER_SECOND, 3), e)
            for (a, b), e in zip(spans, embeddings)]


class SpeakerEmbedder:
    """The speaker encoder for a server's sessions (any thread): a final's windows within the wait bound.

    It times its own passes: a stretch gets as many windows as fit in max_wait_s at the measured
    cost per window (at least MIN_WINDOWS), so a final waits about that long at most for its labels."""

    def __init__(self, encoder: SpeakerEncoder, window_s: float, hop_s: float, max_wait_s: float) -> None:
        self.encoder = encoder
        self.window_s, self.hop_s, self.max_wait_s = window_s, hop_s, max_wait_s
        self.window_cost_s = FIRST_WINDOW_COST_S  # a running mean; threads' updates may interleave harmlessly

    def __call__(self, pcm: torch.Tensor, offset_s: float) -> list[SpeakerWindow]:
        max_windows = max(MIN_WINDOWS, int(self.max_wait_s / self.window_cost_s))
        started = time.perf_counter()
        windows = embed_windows(self.encoder, pcm, offset_s, self.window_s, self.hop_s, max_windows)
        if windows:
            cost = (time.perf_counter() - started) / len(windows)
            self.window_cost_s = 0.8 * self.window_cost_s + 0.2 * cost
        return windows


@functools.lru_cache(maxsize=None)
def speaker_embedder(window_s: float, hop_s: float, max_wait_s: float) -> SpeakerEmbedder:
    """The process's speaker embedder for these settings, loaded when the first diarizing session opens (CPU,
    float32: it is small). Two threads may both load it once; either copy serves."""
    return SpeakerEmbedder(load_speaker_encoder(), window_s, hop_s, max_wait_s)
