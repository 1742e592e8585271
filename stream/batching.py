"""What the model runs next, for many streams at once: one policy for the server's scheduler and the simulated clock.

Sans-I/O: it is told each stream's due job and how late it is, and answers with passes to run, in order.

- Real-time streams first: a stream whose client sends faster than real time (a file replayed at
  speed, a burst after a stall that is already caught up) is transcribed with the capacity the
  others leave; it cannot make the live streams late. Its jobs wait while any stream whose oldest
  waiting audio is due by real-time pace has work.
- Background streams last (an uploaded file: finals only, no client watching them form): their
  jobs run only when no other stream has work, and their lateness never counts as being behind.
- Finals first, all that are due, the longest-waiting first: they are what users wait for. Then
  partial updates, the longest-waiting streams first.
- A pass holds `max_batch` jobs on a GPU, where a batch of many costs little more than one. On a
  CPU it holds `cpu_batch` (one): batching saves a CPU little (the encoder is bound by arithmetic),
  and every job of a batch waits for its slowest (three beam-search finals together took 1.4 s),
  while the server's inference threads each take the next pass, so a final that comes due waits
  only for the one job in progress on the thread that frees first.
- Behind real time (some stream's audio, due by real-time pace, has waited longer than `shed_after_s`),
  load is shed rather than finals delayed: an update tick that a later tick or the segment's end
  already makes obsolete is skipped, a stream gets at most one update per `shed_update_gap_s` of
  audio, and finals are decoded greedily (beam search costs 1.4x for one stream to 3x for eight as
  much; a late final is worse than a slightly less accurate one). The last finals of a stream that
  has ended keep the beam: its client waits for them, and no more of its audio is coming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .config import StreamConfig
from .jobs import FinalJob, Job

__all__ = ["Due", "Pass", "BatchPolicy", "EARLY_S"]

Key = TypeVar("Key")

# A stream counts as sending ahead of real time once its oldest waiting audio lies this far beyond the
# real-time pace of its connection: more than network jitter and a client's send buffer.
EARLY_S = 1.0


@dataclass(frozen=True)
class Due(Generic[Key]):
    """A stream's next job and how late it is: how long the stream's oldest audio waiting for the model
    has been due by real-time pace (seconds; negative when the client sends ahead of real time)."""

    key: Key
    job: Job
    late_s: float
    ending: bool = False  # the stream has ended: its client waits for these last finals
    background: bool = False  # a file's stream: runs only when no other stream has work


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
        self.batch = config.max_batch if on_gpu else config.cpu_batch  # jobs per pass

    def behind(self, lateness: Sequence[float]) -> bool:
        """Whether the server is behind real time, given how late each stream is."""
        return max(lateness, default=0.0) > self.config.shed_after_s

    def shedding(self, behind: bool) -> Shedding:
        return Shedding(skip_stale=True, min_update_gap_s=self.config.shed_update_gap_s if behind else 0.0)

    def passes(self, due: Sequence[Due[Key]], behind: bool) -> list[Pass[Key]]:
        """The passes to run for the due jobs, in order: finals, then one pass of partial updates; the jobs
        of streams that send ahead of real time, then those of background streams, only when no other stream
        has work."""
        size = self.batch
        due = [d for d in due if not d.background] or list(due)
        due = [d for d in due if d.late_s >= -EARLY_S] or list(due)
        finals = sorted((d for d in due if isinstance(d.job, FinalJob)), key=lambda d: -d.late_s)
        beam = [d for d in finals if not behind or d.ending]
        greedy = [d for d in finals if behind and not d.ending]
        partials = sorted((d for d in due if not isinstance(d.job, FinalJob)), key=lambda d: -d.late_s)
        return [Pass(beam[i : i + size], "final") for i in range(0, len(beam), size)] + \
            [Pass(greedy[i : i + size], "final", 1) for i in range(0, len(greedy), size)] + \
            ([Pass(partials[:size], "partial")] if partials else [])
