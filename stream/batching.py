"""What the model runs next, for many streams at once: one policy for the server's scheduler and the simulated clock.

Sans-I/O: it is told each stream's due job and backlog, and answers with passes to run, in order.

- Finals first, all that are due, in batches of `max_batch`: they are what users wait for.
- Then at most `partials_per_pass` partial updates (the longest-waiting streams first), so that a
  final that comes due meanwhile waits for a short pass only; the other updates follow in the
  next passes. On a GPU a batch of many updates costs little more than one: it takes them all.
- Behind real time (some stream's audio has waited longer than `shed_after_s` for the model),
  load is shed rather than finals delayed: an update tick that a later tick or the segment's end
  already makes obsolete is skipped, a stream gets at most one update per `shed_update_gap_s` of
  audio, and finals are decoded greedily (beam search costs 1.4x for one stream to 3x for eight as
  much; a late final is worse than a slightly less accurate one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .config import StreamConfig
from .jobs import FinalJob, Job

__all__ = ["Due", "Pass", "BatchPolicy"]

Key = TypeVar("Key")


@dataclass(frozen=True)
class Due(Generic[Key]):
    """A stream's next job and how long its audio has waited for the model (seconds)."""

    key: Key
    job: Job
    backlog_s: float


@dataclass(frozen=True)
class Pass(Generic[Key]):
    """Jobs to run together in one call of the engine."""

    due: list[Due[Key]]
    kind: str  # "final" | "partial"
    final_beam: int | None = None  # 1: finals decode greedily (behind real time); None: the configured beam


@dataclass(frozen=True)
class Shedding:
    """How streams take their next job: Session.next_job's arguments."""

    skip_stale: bool
    min_update_gap_s: float


class BatchPolicy:
    def __init__(self, config: StreamConfig, on_gpu: bool = False) -> None:
        self.config = config
        self.partials_per_pass = config.max_batch if on_gpu else config.partials_per_pass

    def behind(self, backlogs: Sequence[float]) -> bool:
        """Whether these streams' worker is behind real time."""
        return max(backlogs, default=0.0) > self.config.shed_after_s

    def shedding(self, behind: bool) -> Shedding:
        return Shedding(skip_stale=True, min_update_gap_s=self.config.shed_update_gap_s if behind else 0.0)

    def passes(self, due: Sequence[Due[Key]], behind: bool) -> list[Pass[Key]]:
        """The passes to run now for the due jobs: finals in batches, then the first partial updates."""
        size = self.config.max_batch
        finals = [d for d in due if isinstance(d.job, FinalJob)]
        partials = sorted((d for d in due if not isinstance(d.job, FinalJob)), key=lambda d: -d.backlog_s)
        partials = partials[: self.partials_per_pass]
        beam = 1 if behind else None
        return [Pass(finals[i : i + size], "final", beam) for i in range(0, len(finals), size)] + \
            [Pass(partials[i : i + size], "partial") for i in range(0, len(partials), size)]
