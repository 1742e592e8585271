"""When a stream's model work is due: voice activity, endpointing and partial-update ticks, on the audio's clock.

Triggers depend only on the audio (never on when it arrived or how it was chunked), so a
session's events are the same whatever the chunking.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import torch

from .audio import SAMPLE_RATE
from .config import StreamConfig
from .endpoint import Endpointer, SpeechStart
from .vad import WINDOW_SAMPLES, VoiceActivity

__all__ = ["Kind", "Trigger", "TriggerClock"]


class Kind(enum.Enum):
    START = "start"  # speech started
    TICK = "tick"  # time for a partial update
    RETRY = "retry"  # a tick between the first two, used only while the segment has no text yet
    END = "end"  # speech ended (or flush / end of stream)


@dataclass(frozen=True)
class Trigger:
    sample: int  # when it is due, in 16 kHz samples from the stream start
    kind: Kind
    speech_sample: int = 0  # START: where speech began; END: where it ended; TICK: where silence began (0: none)


class TriggerClock:
    def __init__(self, config: StreamConfig, silence_s: float | None = None) -> None:
        """silence_s overrides the configured endpointing silence (seconds)."""
        self._vad = VoiceActivity(config.vad_reset_s, config.vad_release)
        self._endpointer = Endpointer(
            WINDOW_SAMPLES / SAMPLE_RATE, config.vad_threshold, config.vad_release, config.min_speech_s,
            silence_s if silence_s is not None else config.silence_s, config.long_silence_s, config.long_speech_s,
        )
        self._tick = round(config.update_interval_s * SAMPLE_RATE)
        self._first_tick = round(config.first_update_s * SAMPLE_RATE)
        self._retry = min(round(config.retry_s * SAMPLE_RATE), self._tick - 1)
        self._next_tick: int | None = None  # the next update tick, while speech is open
        self._retry_tick: int | None = None  # the retry tick after the first, until it is due
        self.triggers: deque[Trigger] = deque()
        self.n_samples = 0  # 16 kHz samples pushed
        self.last_update = -SAMPLE_RATE * 60  # sample of the last partial update's tick

    def push(self, pcm: torch.Tensor) -> list[float]:
        """Take 16 kHz audio; return the speech probability of each VAD window it completed."""
        start = self.n_samples
        self.n_samples += len(pcm)
        first_window = self._endpointer.n_windows
        probabilities = self._vad.push(pcm)
        for k, probability in enumerate(probabilities):
            window_start = (first_window + k) * WINDOW_SAMPLES
            self._add_ticks(start, window_start)  # ticks see the voice activity up to their time
            start = max(start, window_start)
            for decision in self._endpointer.push([probability]):
                decided = round(decision.decided * SAMPLE_RATE)
                speech = round(decision.time * SAMPLE_RATE)
                if isinstance(decision, SpeechStart):
                    self.triggers.append(Trigger(decided, Kind.START, speech))
                    self._next_tick = max(speech + self._first_tick, decided + 1)
                    self._retry_tick = self._next_tick + self._retry
                else:
                    self.triggers.append(Trigger(decided, Kind.END, speech))
                    self._next_tick = None
        self._add_ticks(start, self.n_samples)
        return probabilities

    def close(self) -> None:
        """End speech now (flush, or the end of the stream)."""
        end = self._endpointer.close(self.n_samples / SAMPLE_RATE)
        self._next_tick = None
        if end is not None:
            self.triggers.append(Trigger(self.n_samples, Kind.END, round(end.time * SAMPLE_RATE)))

    def superseded(self) -> bool:
        """Whether a later update tick or the end of speech is waiting: an update before it is obsolete."""
        return bool(self.triggers) and self.triggers[0].kind in (Kind.TICK, Kind.RETRY, Kind.END)

    def next(self, skip_stale: bool = False, min_update_gap_s: float = 0.0) -> Trigger | None:
        """The next trigger to act on, or None; see Session.next_job for what is passed over."""
        while self.triggers:
            trigger = self.triggers.popleft()
            if trigger.kind in (Kind.TICK, Kind.RETRY) and (
                (skip_stale and self.superseded()) or trigger.sample - self.last_update < min_update_gap_s * SAMPLE_RATE
            ):
                continue
            return trigger
        return None

    def _add_ticks(self, after: int, until: int) -> None:
        """Partial-update ticks due in (after, until] while speech is open."""
        quiet = self._endpointer.quiet_since
        quiet_sample = None if quiet is None else round(quiet * SAMPLE_RATE)
        while self._next_tick is not None:
            retry = self._retry_tick is not None and self._retry_tick < self._next_tick
            tick = self._retry_tick if retry else self._next_tick
            if tick > until:
                break
            if tick > after:
                self.triggers.append(Trigger(tick, Kind.RETRY if retry else Kind.TICK, quiet_sample or 0))
            if retry:
                self._retry_tick = None
            else:
                self._next_tick += self._tick
