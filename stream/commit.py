"""Commit policy: which words of a segment's hypothesis become stable (never change again).

Local agreement with a distance from the audio edge and a confidence floor: a word is committed
once the last `agreement` hypotheses agree on it and on the word after it (so its spelling and
the punctuation after it are settled) and it ends at least `margin_s` before the newest audio (so
the encoder has heard what follows it). A word the model is unsure of (a token below
`unsure_probability`) needs one more agreeing hypothesis. Once the speaker has been silent for
`quiet_s`, no later audio can change the words heard so far: they need neither the margin nor an
agreed word after them, and words the model is sure of (every token at least `quiet_probability`)
need only `quiet_agreement` agreeing hypotheses. Stable words only grow; the session
forces them into every later hypothesis and into the segment's final.
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
    probability: float = 1.0  # the least probable of its tokens, in the newest hypothesis


class LocalAgreement:
    def __init__(
        self, agreement: int = 2, margin_s: float = 1.0, unsure_probability: float = 0.0, quiet_s: float = 0.25,
        quiet_agreement: int | None = None, quiet_probability: float = 0.9,
    ) -> None:
        self.agreement = agreement
        self.quiet_agreement = min(agreement, quiet_agreement or agreement)
        self.quiet_probability = quiet_probability
        self.margin_s = margin_s
        self.unsure_probability = unsure_probability
        self.quiet_s = quiet_s
        self._history: deque[list[Unit]] = deque(maxlen=agreement)

    def reset(self) -> None:
        self._history.clear()

    def update(
        self, units: list[Unit], n_stable: int, edge: float, quiet_since: float | None = None, finished: bool = True
    ) -> int:
        """Consider a new hypothesis; return how many of its leading units are stable now (>= n_stable).

        quiet_since: when the speaker fell silent, if they have. Once they have been silent for
        quiet_s, the quiet rules apply (to a hypothesis that ended, `finished`, on its own).
        """
        # agreed[k]: leading units the newest k + 1 hypotheses share (newest first)
        agreed = [len(units)]
        for previous in reversed(self._history):
            n = 0
            while n < min(agreed[-1], len(previous)) and previous[n].tokens == units[n].tokens:
                n += 1
            agreed.append(n)
        agreed += [0] * (self.agreement + 1 - len(agreed))
        self._history.append(units)
        settled = quiet_since is not None and edge - quiet_since >= self.quiet_s and finished
        count = n_stable
        while count < len(units):
            probability = units[count].probability
            need = self.agreement + (probability < self.unsure_probability)
            if settled and probability >= self.quiet_probability:
                need = self.quiet_agreement
            enough = agreed[need - 1]
            if count >= enough:
                break  # not agreed by enough hypotheses
            if not settled and (count + 1 >= enough or units[count].end > edge - self.margin_s):
                break  # too near the edge, or the word after it is not agreed yet
            count += 1
        return max(n_stable, count)
