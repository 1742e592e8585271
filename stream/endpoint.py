"""Endpointing: turns per-window speech probabilities into speech start and end decisions.

Hysteresis as in Silero's own segmenter: speech starts after `min_speech_s` of windows at or
above `threshold`; silence starts counting at the first window below `release`, is reset only by
a window at or above `threshold`, and ends the speech once it lasts `silence_s`, or the shorter
`long_silence_s` once the speech has lasted `long_speech_s` (long speech ends at its next pause).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["SpeechStart", "SpeechEnd", "Endpointer"]


@dataclass(frozen=True)
class SpeechStart:
    time: float  # start of the first speech window, seconds
    decided: float  # when the decision could be made (end of the confirming window)


@dataclass(frozen=True)
class SpeechEnd:
    time: float  # start of the first silent window: the end of speech
    decided: float  # time + silence_s


class _State(enum.Enum):
    SILENCE = "silence"
    SPEECH = "speech"


class Endpointer:
    def __init__(
        self, window_s: float, threshold: float, release: float, min_speech_s: float, silence_s: float,
        long_silence_s: float | None = None, long_speech_s: float = float("inf"),
    ) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self.release = release
        self.min_windows = max(1, round(min_speech_s / window_s))
        self.silence_s = silence_s
        self.long_silence_s = min(silence_s, long_silence_s if long_silence_s is not None else silence_s)
        self.long_speech_s = long_speech_s
        self.state = _State.SILENCE
        self.n_windows = 0
        self._speech_start = 0  # first window of the current speech
        self._run_start: int | None = None  # first window of the current run of speech windows
        self._silence_start: int | None = None

    @property
    def in_speech(self) -> bool:
        return self.state is _State.SPEECH

    @property
    def quiet_since(self) -> float | None:
        """While in speech: when the current run of silence began, if one has; else None."""
        if self.state is _State.SPEECH and self._silence_start is not None:
            return self._silence_start * self.window_s
        return None

    def push(self, probabilities: list[float]) -> list[SpeechStart | SpeechEnd]:
        """Score the next windows; return the decisions they lead to, in time order."""
        decisions: list[SpeechStart | SpeechEnd] = []
        for p in probabilities:
            index = self.n_windows
            self.n_windows += 1
            end_of_window = self.n_windows * self.window_s
            if self.state is _State.SILENCE:
                if p >= self.threshold:
                    if self._run_start is None:
                        self._run_start = index
                    if index - self._run_start + 1 >= self.min_windows:
                        decisions.append(SpeechStart(self._run_start * self.window_s, end_of_window))
                        self.state = _State.SPEECH
                        self._speech_start = self._run_start
                        self._run_start = None
                        self._silence_start = None
                else:
                    self._run_start = None
            else:
                if p >= self.threshold:
                    self._silence_start = None
                elif p < self.release and self._silence_start is None:
                    self._silence_start = index
                if self._silence_start is not None and end_of_window - self._silence_start * self.window_s >= (
                    self._silence_needed() - 1e-9
                ):
                    decisions.append(SpeechEnd(self._silence_start * self.window_s, end_of_window))
                    self.state = _State.SILENCE
                    self._silence_start = None
        return decisions

    def _silence_needed(self) -> float:
        assert self._silence_start is not None
        long = (self._silence_start - self._speech_start) * self.window_s >= self.long_speech_s
        return self.long_silence_s if long else self.silence_s

    def close(self, now: float) -> SpeechEnd | None:
        """End speech at the end of the stream (or on a flush); None when not in speech."""
        if self.state is not _State.SPEECH:
            return None
        end = self._silence_start * self.window_s if self._silence_start is not None else now
        self.state = _State.SILENCE
        self._silence_start = None
        return SpeechEnd(min(end, now), now)
