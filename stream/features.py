"""Whisper's log-mel features, computed incrementally: each audio sample is turned into frames once.

Frames are kept in the raw log10 domain. `normalize` applies Whisper's dynamic-range floor
(maximum - 8) and scaling ((x + 4) / 4) when a window is handed to the encoder.

Floor rule for live audio: openai-whisper floors against the maximum of the whole clip, which a
live stream does not know yet. We floor against the running maximum of the frames seen so far,
over at most the last `FLOOR_HISTORY_FRAMES` (30 s, one Whisper window). For a clip up to 30 s
this equals the whole-clip rule once the loudest frame has been heard; bench/stream.py measures
that it costs no accuracy (`--floor clip` gives each stream its whole clip's maximum in advance,
`FeatureStream(floor_max=clip_maximum(audio))`).
"""

from __future__ import annotations

import functools

import torch
import torchaudio.functional

from .audio import SAMPLE_RATE

__all__ = [
    "N_FFT",
    "HOP_LENGTH",
    "FRAMES_PER_SECOND",
    "FLOOR_HISTORY_FRAMES",
    "PAD_VALUE",
    "mel_filters",
    "FeatureStream",
    "log_mel_spectrogram",
    "clip_maximum",
    "normalize",
]

N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum
FLOOR_HISTORY_FRAMES = 30 * FRAMES_PER_SECOND
PAD_VALUE = 0.0  # "silence" after normalisation: the value the encoder pads with
_HALF = N_FFT // 2


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney-style mel filterbank of shape (n_mels, N_FFT // 2 + 1), as librosa and Whisper build it."""
    fbank = torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )
    return fbank.T.contiguous()


@functools.lru_cache(maxsize=None)
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def _log_mel_frames(signal: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Raw log10 mel frames of shape (n_mels, n) for a signal of (n - 1) * HOP_LENGTH + N_FFT samples."""
    stft = torch.stft(signal, N_FFT, HOP_LENGTH, window=_window(), center=False, return_complex=True)
    power = stft.abs() ** 2
    return (mel_filters(n_mels) @ power).clamp(min=1e-10).log10()


class FeatureStream:
    """Incremental log-mel: push 16 kHz samples, read raw log10 frames.

    Frame i is centred on sample i * HOP_LENGTH (reflect-padded at the start, zero-padded at the
    end, as `torch.stft(center=True)` on zero-padded audio gives), and n samples give n // 160
    frames in all, exactly as openai-whisper's `log_mel_spectrogram`.
    """

    def __init__(self, n_mels: int = 80, floor_max: float | None = None) -> None:
        """floor_max: a maximum known in advance (a whole clip's, `clip_maximum`), for offline comparisons:
        frames come out floored at floor_max - 8, so the floor applied to a window later is taken from the
        larger of floor_max and the running maximum (with the whole clip's, exactly Whisper's offline rule).
        None: raw frames, the live rule alone."""
        self.n_mels = n_mels
        self.floor_max = floor_max
        self.n_samples = 0  # samples pushed
        self.n_frames = 0  # frames produced
        self._tail = torch.zeros(0)  # samples from (n_frames * HOP - HALF) on, once past the start
        self._head = torch.zeros(0)  # the first samples, until the reflect padding can be built
        self._finished = False

    def push(self, pcm: torch.Tensor) -> torch.Tensor:
        """Add samples; return the new raw frames, shape (n_mels, k), k possibly 0."""
        if self._finished:
            raise RuntimeError("FeatureStream.push after finish")
        pcm = pcm.float()
        self.n_samples += len(pcm)
        if self.n_frames == 0 and len(self._tail) == 0:
            self._head = torch.cat([self._head, pcm])
            if len(self._head) <= _HALF:
                return self._empty()
            # reflect padding: sample -k mirrors sample k
            self._tail = torch.cat([self._head[1 : _HALF + 1].flip(0), self._head])
            self._head = torch.zeros(0)
        else:
            self._tail = torch.cat([self._tail, pcm])
        return self._emit(self.n_samples)

    def finish(self) -> torch.Tensor:
        """Zero-pad the end and return the remaining frames (n_samples // 160 in all)."""
        if self._finished:
            return self._empty()
        self._finished = True
        target = self.n_samples // HOP_LENGTH
        if target <= self.n_frames:
            return self._empty()
        if len(self._tail) == 0:  # fewer than 201 samples: reflect what there is, like torch.stft
            head = self._head
            self._tail = torch.cat([head[1 : _HALF + 1].flip(0), head])
            self._tail = torch.cat([torch.zeros(_HALF - len(head) + 1), self._tail])
        self._tail = torch.cat([self._tail, torch.zeros(N_FFT)])
        return self._emit(None, target)

    def _emit(self, n_available: int | None, target: int | None = None) -> torch.Tensor:
        # frame i needs tail samples [i*HOP - start, i*HOP - start + N_FFT) where the tail starts
        # at sample n_frames*HOP - HALF
        n_new = (len(self._tail) - N_FFT) // HOP_LENGTH + 1
        if target is not None:
            n_new = min(n_new, target - self.n_frames)
        if n_new <= 0:
            return self._empty()
        used = (n_new - 1) * HOP_LENGTH + N_FFT
        frames = _log_mel_frames(self._tail[:used], self.n_mels)
        self._tail = self._tail[n_new * HOP_LENGTH :]
        self.n_frames += n_new
        if self.floor_max is not None:
            frames = torch.maximum(frames, torch.as_tensor(self.floor_max) - DYNAMIC_RANGE)
        return frames

    def _empty(self) -> torch.Tensor:
        return torch.zeros(self.n_mels, 0)


def log_mel_spectrogram(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's normalised log-mel of a whole clip, shape (n_mels, len(audio) // 160).

    Equals openai-whisper's `log_mel_spectrogram(audio, padding=N_SAMPLES)[:, :n]`.
    """
    stream = FeatureStream(n_mels)
    raw = torch.cat([stream.push(audio), stream.finish()], dim=1)
    return normalize(raw, raw.max() if raw.numel() else torch.tensor(0.0))


def clip_maximum(audio: torch.Tensor, n_mels: int = 80) -> float:
    """The largest raw log10 frame of a whole 16 kHz clip: what Whisper's offline floor is taken from."""
    stream = FeatureStream(n_mels)
    raw = torch.cat([stream.push(audio), stream.finish()], dim=1)
    return float(raw.max()) if raw.numel() else 0.0


def normalize(raw: torch.Tensor, maximum: torch.Tensor | float) -> torch.Tensor:
    """Floor raw log10 frames at `maximum` - 8 and scale them as Whisper does."""
    return (torch.maximum(raw, torch.as_tensor(maximum) - DYNAMIC_RANGE) + 4.0) / 4.0
