"""A stream's recent audio as the model sees it: log-mel frames and each VAD window's speech probability.

Positions are absolute (frames and windows from the start of the stream); what lies before
`first_frame` has been trimmed away. Normalisation looks back over the frames' maxima, kept
for up to FLOOR_HISTORY_FRAMES before any frame still held.
"""

from __future__ import annotations

import math

import torch

from .coverage import SpeechActivity
from .features import FLOOR_HISTORY_FRAMES, FRAMES_PER_SECOND, HOP_LENGTH, N_FFT, normalize
from .vad import WINDOW_SAMPLES, WINDOW_SECONDS

__all__ = ["FrameBuffer", "frames_in"]

FRAMES_PER_WINDOW = WINDOW_SAMPLES // HOP_LENGTH


def frames_in(samples: int) -> int:
    """Frames computable from the first `samples` samples of a stream that goes on."""
    return max(0, (samples - N_FFT // 2) // HOP_LENGTH + 1)


class FrameBuffer:
    def __init__(self, n_mels: int) -> None:
        self.frames = torch.zeros(n_mels, 0)  # raw log-mel frames from first_frame on
        self.first_frame = 0
        self.frame_max = torch.zeros(0)  # per-frame maxima from _max_first on, for the floor rule
        self._max_first = 0
        self.speech: list[float] = []  # speech probability of each VAD window from first_window on
        self.first_window = 0

    @property
    def end(self) -> int:
        """The frame after the last one held."""
        return self.first_frame + self.frames.shape[1]

    def append(self, frames: torch.Tensor, probabilities: list[float]) -> None:
        if frames.shape[1]:
            self.frames = torch.cat([self.frames, frames], dim=1)
            self.frame_max = torch.cat([self.frame_max, frames.max(dim=0).values])
        self.speech.extend(probabilities)

    def window(self, start: int, stop: int, own_start: int | None = None) -> torch.Tensor | None:
        """Normalised frames [start, stop) trimmed to an even count; None if there are none after own_start."""
        stop -= (stop - start) % 2
        if stop - max(start, own_start or start) < 2:
            return None
        history = self.frame_max[max(0, stop - FLOOR_HISTORY_FRAMES - self._max_first) : stop - self._max_first]
        frames = self.frames[:, start - self.first_frame : stop - self.first_frame]
        return normalize(frames, history.max())

    def quietest_frame(self, lo: int, hi: int) -> int:
        """The middle frame of the VAD window of lowest speech probability whose middle is in [lo, hi)
        (the latest of ties)."""
        best, best_frame = 2.0, hi - 1
        for window in range(max(0, lo // FRAMES_PER_WINDOW), hi // FRAMES_PER_WINDOW + 1):
            middle = window * WINDOW_SAMPLES // HOP_LENGTH + FRAMES_PER_WINDOW // 2
            if lo <= middle < hi and window - self.first_window < len(self.speech):
                probability = self.speech[window - self.first_window]
                if probability <= best:
                    best, best_frame = probability, middle
        return best_frame

    def activity(self, start: int, stop: int, origin: int, threshold: float, release: float) -> SpeechActivity:
        """The voice activity of frames [start, stop), on a clock that starts at frame `origin`."""
        first = max(start * HOP_LENGTH // WINDOW_SAMPLES, self.first_window)
        last = min(math.ceil(stop * HOP_LENGTH / WINDOW_SAMPLES), self.first_window + len(self.speech))
        probabilities = tuple(self.speech[first - self.first_window : last - self.first_window])
        return SpeechActivity(probabilities, first * WINDOW_SECONDS - origin / FRAMES_PER_SECOND, threshold, release)

    def trim(self, frame: int) -> None:
        """Forget the frames before `frame` (and the windows that end before it)."""
        if frame > self.first_frame:
            self.frames = self.frames[:, frame - self.first_frame :]
            self.first_frame = frame
            window = frame * HOP_LENGTH // WINDOW_SAMPLES
            if window > self.first_window:
                del self.speech[: window - self.first_window]
                self.first_window = window
        # later windows end after `frame`: their floor looks back at most 30 s from there
        first_max = frame - FLOOR_HISTORY_FRAMES
        if first_max > self._max_first:
            self.frame_max = self.frame_max[first_max - self._max_first :]
            self._max_first = first_max

