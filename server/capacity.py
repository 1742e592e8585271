"""How much of the model's time the live streams use, and whether one more fits (sans-I/O: times are passed in).

The inference workers report each pass's duration and how many live streams are open. The load is
the busy share of the workers' time over the last `window_s`; a stream's cost is the busy time over
the stream-seconds of that window (streams that ended in it included). The streams open now and one
more, each at that cost, must keep the load at most `max_load`, and no admitted stream may be late
by more than `max_late_s`. The cost is measured again whenever the window holds a stream-window's
worth (a lower measure counts only as the last one fades, COST_HALF_LIFE_S), and the last
measurement stands in between (after a lull). Until the first one a server admits by its other
limits (`max_sessions`).

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


@dataclass(frozen=True)
class Room:
    """What the capacity rule says now."""

    fits: bool  # one more stream may be admitted
    load: float  # busy share of the workers' time over the window, 0-1
    projected: float  # the load with the streams open now all at their measured cost, and one more
    reason: str = ""  # why not, when it does not fit
    max_load: float = 0.0

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
        self._buckets: deque[list[float]] = deque()  # [start s, busy s, stream-seconds], oldest first
        self._last = 0.0  # when the last pass ended
        self._lock = threading.Lock()  # workers record, the event loop reads
        self._per_stream: float | None = None  # the load of one stream, as last measured
        self._measured_at = 0.0

    def record(self, seconds: float, now: float, streams: int) -> None:
        """A worker spent `seconds` on a model pass that ended at `now`, with `streams` live streams open (a worker
        thread calls this)."""
        start = math.floor(now / BUCKET_S) * BUCKET_S
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != start:
                self._buckets.append([start, 0.0, 0.0])
            self._buckets[-1][1] += seconds
            self._buckets[-1][2] += streams * max(0.0, now - self._last)  # stream-seconds since the last pass
            self._last = now
            while self._buckets and self._buckets[0][0] < now - self.window_s - BUCKET_S:
                self._buckets.popleft()
            busy, stream_s = self._window(now)
            if stream_s >= self.window_s:  # at least a window's worth of one stream seen: measure again
                self._measure(busy / stream_s / self.workers, now)

    def _window(self, now: float) -> tuple[float, float]:
        """Busy seconds and stream-seconds over the last window (under the lock)."""
        recent = [b for b in self._buckets if b[0] >= now - self.window_s]
        return sum(b[1] for b in recent), sum(b[2] for b in recent)

    def _measure(self, per_stream: float, now: float) -> None:
        """Take a new measure of one stream's load (under the lock). A higher one counts at once; a lower one only
        as the old one fades (halving every COST_HALF_LIFE_S): streams that have only begun to speak, or pause
        together, cost little for a while and then all at once."""
        if self._per_stream is not None:
            faded = self._per_stream * 0.5 ** ((now - self._measured_at) / COST_HALF_LIFE_S)
            per_stream = max(per_stream, faded)
        self._per_stream, self._measured_at = per_stream, now

    def load(self, now: float) -> float:
        """The busy share of the workers' time over the last window."""
        with self._lock:
            busy = self._window(now)[0]
        return min(1.0, busy / (self.window_s * self.workers))

    def room(self, streams: int, late_s: float, now: float) -> Room:
        """Whether one more stream fits beside the `streams` open ones; late_s: the most any of them is behind real
        time."""
        load = self.load(now)
        if not self.max_load:
            return Room(True, load, load)
        if late_s > self.max_late_s:
            return Room(False, load, load, f"streams are {late_s:.1f} s behind real time", self.max_load)
        with self._lock:
            per_stream = self._per_stream
        if per_stream is None:  # nothing measured yet: nothing to go by
            return Room(True, load, load, max_load=self.max_load)
        projected = per_stream * (streams + 1)
        if projected > self.max_load and streams:  # an idle server takes a stream, whatever one costs
            return Room(False, load, projected, f"the model is {load:.0%} busy with {streams} streams", self.max_load)
        return Room(True, load, projected, max_load=self.max_load)
