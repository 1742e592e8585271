"""How much of the model's time the live streams use, and whether one more fits (sans-I/O: times are passed in).

The inference workers report each pass's duration and kind and how many live streams are open (and
of those, how many take finals only). The load is the busy share of the workers' time over the last
`window_s`. A stream's cost is measured from that window (streams that ended in it included):
finals' busy time over all stream-seconds, plus partial updates' busy time over the stream-seconds
of streams with partials; a finals-only stream costs the first part alone (at least FINALS_ONLY_MIN
of the two). The streams open now and one more, each at its cost, must keep the load at most
`max_load`, and no admitted stream may be late by more than `max_late_s`. The costs are measured
again whenever the window holds a stream-window's worth (a lower measure counts only as the last one
fades, COST_HALF_LIFE_S), and the last measurement stands in between (after a lull). Until the first
one a server admits by its other limits (`max_sessions`).

A stream that does not fit may still fit without partials (`finals_fit`): a server set to admit
streams that way when full (`when_full`) takes it as finals-only.

Past `max_load` the streams already admitted are served as before (partial updates are shed and
finals decoded greedily only when they fall behind, stream/batching.py); the capacity rule only keeps
a new stream from making them late.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["Capacity", "Room"]

BUCKET_S = 0.5  # resolution of the busy record
COST_HALF_LIFE_S = 60.0  # a measured cost per stream that is lower than the last fades down to it at this pace
# A finals-only stream counts as at least this share of one with partials (it measured 0.38 of one, tiny.en on an
# AVX2 CPU: docs/benchmarks.md), so that a window without finals does not make it look free.
FINALS_ONLY_MIN = 0.25


@dataclass(frozen=True)
class Room:
    """What the capacity rule says now."""

    fits: bool  # one more stream may be admitted
    load: float  # busy share of the workers' time over the window, 0-1
    projected: float  # the load with the streams open now all at their measured cost, and one more
    reason: str = ""  # why not, when it does not fit
    max_load: float = 0.0
    finals_fit: bool = True  # one more stream that takes finals only may be admitted

    @property
    def used(self) -> float:
        """projected over max_load: at 1 or above, new streams are refused (0 when there is no capacity rule)."""
        return self.projected / self.max_load if self.max_load else 0.0


class Capacity:
    def __init__(self, workers: int, max_load: float, window_s: float, max_late_s: float) -> None:
        self.workers = max(1, workers)
        self.max_load = max_load
        self.window_s = window_s
        self.max_late_s = max_late_s
        # [start s, busy s, stream-seconds, finals' busy s, finals-only stream-seconds], oldest first
        self._buckets: deque[list[float]] = deque()
        self._last = 0.0  # when the last pass ended
        self._lock = threading.Lock()  # workers record, the event loop reads
        # the load of one stream (None: no stream with partials measured yet), and of its finals, as last measured
        self._cost: tuple[float | None, float] | None = None
        self._measured_at = 0.0

    def record(self, seconds: float, now: float, streams: int, finals_only: int = 0, final: bool = False) -> None:
        """A worker spent `seconds` on a model pass (of finals, or else partial updates) that ended at `now`, with
        `streams` live streams open, `finals_only` of them without partials (a worker thread calls this)."""
        start = math.floor(now / BUCKET_S) * BUCKET_S
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != start:
                self._buckets.append([start, 0.0, 0.0, 0.0, 0.0])
            bucket, since = self._buckets[-1], max(0.0, now - self._last)
            bucket[1] += seconds
            bucket[2] += streams * since  # stream-seconds since the last pass
            bucket[3] += seconds if final else 0.0
            bucket[4] += finals_only * since
            self._last = now
            while self._buckets and self._buckets[0][0] < now - self.window_s - BUCKET_S:
                self._buckets.popleft()
            busy, stream_s, finals, finals_only_s = self._window(now)
            if stream_s >= self.window_s:  # at least a window's worth of one stream seen: measure again
                with_partials_s = stream_s - finals_only_s  # all of it, unless some streams take finals only
                per_final = finals / stream_s / self.workers
                per_stream = (busy - finals) / with_partials_s / self.workers + per_final if with_partials_s else None
                self._measure(per_stream, per_final, now)

    def _window(self, now: float) -> tuple[float, ...]:
        """Busy seconds, stream-seconds, finals' busy seconds, finals-only stream-seconds over the last window (under
        the lock)."""
        recent = [b for b in self._buckets if b[0] >= now - self.window_s]
        return tuple(sum(b[k] for b in recent) for k in range(1, 5))

    def _measure(self, per_stream: float | None, per_final: float, now: float) -> None:
        """Take a new measure of one stream's load (None: no stream had partials) and of its finals', under the lock.
        A higher one counts at once; a lower one only as the old one fades (halving every COST_HALF_LIFE_S): streams
        that have only begun to speak, or pause together, cost little for a while and then all at once."""
        if self._cost is not None:
            fade = 0.5 ** ((now - self._measured_at) / COST_HALF_LIFE_S)
            if self._cost[0] is not None:
                per_stream = max(per_stream or 0.0, self._cost[0] * fade)
            per_final = max(per_final, self._cost[1] * fade)
        self._cost, self._measured_at = (per_stream, per_final), now

    def load(self, now: float) -> float:
        """The busy share of the workers' time over the last window."""
        with self._lock:
            busy = self._window(now)[0]
        return min(1.0, busy / (self.window_s * self.workers))

    def room(self, streams: int, late_s: float, now: float, finals_only: int = 0) -> Room:
        """Whether one more stream fits beside the `streams` open ones (`finals_only` of them without partials), and
        whether one without partials would; late_s: the most any of them is behind real time."""
        load = self.load(now)
        if not self.max_load:
            return Room(True, load, load)
        if late_s > self.max_late_s:
            return Room(False, load, load, f"streams are {late_s:.1f} s behind real time", self.max_load, False)
        with self._lock:
            cost = self._cost
        if cost is None:  # nothing measured yet: nothing to go by
            return Room(True, load, load, max_load=self.max_load)
        # a stream with partials costs at most 1 / FINALS_ONLY_MIN times its finals while none has been measured
        full = cost[0] if cost[0] is not None else cost[1] / FINALS_ONLY_MIN
        finals = max(cost[1], FINALS_ONLY_MIN * full)
        open_now = full * (streams - finals_only) + finals * finals_only
        projected, finals_projected = open_now + full, open_now + finals
        if projected > self.max_load and streams:  # an idle server takes a stream, whatever one costs
            return Room(False, load, projected, f"the model is {load:.0%} busy with {streams} streams", self.max_load,
                        finals_projected <= self.max_load)
        return Room(True, load, projected, max_load=self.max_load)
