"""Commit policy: which words of a segment's hypothesis become stable (never change again).

Local agreement with a distance from the audio edge: a word is committed once the last
`agreement` hypotheses agree on it and on the word after it (so its spelling and the punctuation
after it are settled), and it ends at least `margin_s` before the newest audio (so the encoder
has heard what follows it). Stable words only grow; the session forces them into every later
hypothesis and into the segment's final.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Unit", "LocalAgreement"]


@dataclass(frozen=True)
class Unit:
    """A word (or punctuation mark) of a hypothesis: its tokens and when it ends."""

    tokens: tuple[int, ...]
    end: float  # seconds, same clock as `edge`


class LocalAgreement:
    def __init__(self, agreement: int = 2, margin_s: float = 1.0) -> None:
        self.agreement = agreement
        self.margin_s = margin_s
        self._history: deque[list[Unit]] = deque(maxlen=max(1, agreement - 1))

    def reset(self) -> None:
        self._history.clear()

    def update(self, units: list[Unit], n_stable: int, edge: float) -> int:
        """Consider a new hypothesis; return how many of its leading units are stable now (>= n_stable)."""
        agreed = len(units)
        if self.agreement > 1:
            if len(self._history) < self._history.maxlen:
                agreed = 0
            for previous in self._history:
                n = 0
                while n < min(agreed, len(previous)) and previous[n].tokens == units[n].tokens:
                    n += 1
                agreed = n
        self._history.append(units)
        # the word after a committed word must be agreed as well
        count = n_stable
        while count + 1 < agreed and units[count].end <= edge - self.margin_s:
            count += 1
        return max(n_stable, count)
