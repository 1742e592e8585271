"""The inference scheduler: the one caller of the engine (the model), on worker threads, batching all sessions' work.

Connections (on the asyncio loop) hand audio and commands to the scheduler, which never blocks
them; each inference thread, whenever it is free, feeds the Sessions what has arrived, gathers the
model jobs due on streams no other thread is serving, runs the first pass the batching policy
(captioner.stream.batching) makes of them, and hands the resulting events back to each
connection's loop. The scheduler keeps only threads, queues and locks.

Threads and what they share. Each field that more than one thread touches has one writer (its owner)
or one lock; the others only read it, one value at a time:

- the event loop owns a stream's `received_s`, `started` and `ended` (Scheduler.push and end), and appends
  `Posted` commands to its `inbox`, a deque (append and popleft are atomic);
- the worker thread that holds `Stream.lock` owns the stream's session, its `pushed_s` and its
  `arrivals`, and takes commands from its inbox; the loop reads only `Session.backlog_s`, which
  allows that (so the loop never waits for a model pass or a session's work);
- `Stream.busy` belongs to the worker that claimed the stream for a pass: set under
  `Scheduler._claiming`, cleared by that worker when the pass ends;
- `Stream.closed` and the table of streams change under `Scheduler._lock` only;
- `Scheduler._stopping` is written once, on the loop.

The audio waiting to be pushed is `received_s - pushed_s`, each side written by its own thread:
nothing is lost between them, as an update of a field shared by both could be.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from captioner.stream.batching import BatchPolicy, Due, Pass
from captioner.stream.events import Event, Final, Partial
from captioner.stream.jobs import Speech
from captioner.stream.session import JobRunner, Session

from .capacity import Capacity, Room
from .metrics import Metrics

__all__ = ["Done", "Failed", "Stream", "Scheduler"]

log = logging.getLogger("captioner.scheduler")

BACKGROUND_UPDATES = 3  # partial updates a file's stream takes per max_segment_s: enough stable words to cut at


@dataclass(frozen=True)
class Done:
    """The stream has ended and every final has been sent."""

    audio_s: float


@dataclass(frozen=True)
class Failed:
    """The model or the session failed on this stream (a bug: logged with its traceback); the connection closes
    with 1011."""

    reason: str


Item = Event | Done | Failed


@dataclass(frozen=True)
class Posted:
    """A connection's command, waiting in its stream's inbox for a worker to push it into the session."""

    kind: Literal["audio", "flush", "end"]
    pcm: np.ndarray | None = field(default=None, repr=False)  # audio: float32 samples at the stream's rate
    at: float = 0.0  # when it was handed over, monotonic seconds


@dataclass
class Stream:
    """The scheduler's side of one connection; the module docstring says which thread owns which field."""

    id: str
    session: Session
    loop: asyncio.AbstractEventLoop
    outbox: asyncio.Queue[Item]
    sample_rate: int
    received_s: float = 0.0  # audio handed over, seconds at the stream's rate (the loop's)
    ended: bool = False  # no more audio is coming (the loop's)
    pushed_s: float = 0.0  # audio pushed into the session, seconds (a worker's, under lock)
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (audio end s, monotonic time), under lock
    started: float | None = None  # when its first audio arrived, monotonic seconds (the loop's)
    inbox: deque[Posted] = field(default_factory=deque)  # commands not yet pushed: the loop appends, a worker pops
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while a worker touches the session
    busy: bool = False  # a job of its session is in a model pass (the claiming worker's)
    closed: bool = False  # Done or Failed has been delivered (under Scheduler._lock)
    background: bool = False  # a file's: finals only, when no live stream has work (stream/batching.py)

    @property
    def inbox_s(self) -> float:
        """Audio handed over but not yet pushed into the session, seconds."""
        return max(0.0, self.received_s - self.pushed_s)

    @property
    def backlog_s(self) -> float:
        """Audio waiting for the model, seconds."""
        return self.inbox_s + self.session.backlog_s

    def late_s(self, now: float) -> float:
        """How long the oldest audio waiting for the model has been due by real-time pace since the stream's first
        audio arrived (negative when the client sends ahead of real time). From the first audio, not the opening:
        a client that connects and then waits is not behind for that."""
        elapsed = now - self.started if self.started is not None else 0.0
        return min(self.received_s, elapsed) - (self.received_s - self.backlog_s)

    def arrival_time(self, audio_s: float) -> float | None:
        """When the audio up to audio_s had arrived (monotonic clock), if known."""
        index = bisect.bisect_left(self.arrivals, (audio_s, -1.0))
        return self.arrivals[index][1] if index < len(self.arrivals) else None

    def take_in(self) -> None:
        """Push the commands waiting in the inbox into the session (under lock)."""
        while self.inbox:
            posted = self.inbox.popleft()
            if posted.kind == "audio":
                assert posted.pcm is not None
                self.session.push(posted.pcm)
                # the same additions in the same order as received_s's: equal once everything is pushed
                self.pushed_s += len(posted.pcm) / self.sample_rate
                self.arrivals.append((self.pushed_s, posted.at))
            elif posted.kind == "flush":
                self.session.push_flush()
            elif posted.kind == "end":
                self.session.push_end()

    def forget_arrivals_before(self, audio_s: float) -> None:
        index = bisect.bisect_left(self.arrivals, (audio_s, -1.0))
        if index > 256:
            del self.arrivals[: index - 1]


def _finals_only(streams: list[Stream]) -> int:
    """How many of the streams take finals only (a session's speech is fixed when it opens: read without its lock)."""
    return sum(not s.session.speech.partials for s in streams)


class Scheduler:
    def __init__(self, engine: JobRunner, metrics: Metrics, max_wait_ms: float = 5.0, workers: int = 1,
                 capacity: Capacity | None = None) -> None:
        """workers: inference threads, each with an equal share of torch's threads, each taking the next pass of any
        streams' due jobs (on CPU, single-threaded workers keep the cores busier than one worker whose threads wait for
        each other inside every small operation). The engine runs the passes (the Engine over a checkpoint, or a fake in
        tests); the batching settings are its configuration. capacity: the rule for new streams, which the passes' times
        feed (capacity.py; default: none)."""
        self.engine = engine
        self.capacity = capacity or Capacity(workers, 0.0, 10.0, 1.0)
        metrics.load.set_function(lambda: self.room().load)
        metrics.capacity_used.set_function(lambda: self.room().used)
        self.policy = BatchPolicy(engine.config, on_gpu=engine.on_gpu)
        self.metrics = metrics
        self.max_wait = max_wait_ms / 1000
        self._streams: dict[str, Stream] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._ids = itertools.count(1)
        self._wake = threading.Event()  # set when there may be something to do
        self._claiming = threading.Lock()  # one thread at a time chooses a pass and marks its streams busy
        self._threads = [threading.Thread(target=self._work, name=f"captioner-inference-{i}", daemon=True)
                         for i in range(max(1, workers))]
        self._torch_threads = max(1, torch.get_num_threads() // len(self._threads))
        self._background_gap_s = engine.config.max_segment_s / BACKGROUND_UPDATES

    # -- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def open(self, sample_rate: int, loop: asyncio.AbstractEventLoop, silence_s: float | None = None,
             speech: Speech | None = None, background: bool = False) -> Stream:
        session = Session.for_engine(self.engine, sample_rate, silence_s, speech)
        stream = Stream(f"s{next(self._ids)}-{int(time.time() * 1000) % 100000:05d}", session, loop, asyncio.Queue(),
                        sample_rate, background=background)
        with self._lock:
            self._streams[stream.id] = stream
        self.metrics.sessions.inc()
        return stream

    def push(self, stream: Stream, pcm: np.ndarray) -> None:
        """Hand over float32 samples at the stream's rate."""
        seconds = len(pcm) / stream.sample_rate
        stream.started = time.monotonic() if stream.started is None else stream.started
        stream.received_s += seconds  # before the command is posted: pushed_s never passes received_s
        self.metrics.audio.inc(seconds)
        self._post(stream, Posted("audio", pcm, time.monotonic()))

    def flush(self, stream: Stream) -> None:
        self._post(stream, Posted("flush"))

    def end(self, stream: Stream) -> None:
        """No more audio: finalise; the outbox gets the last finals, then Done."""
        if not stream.ended:
            stream.ended = True
            self._post(stream, Posted("end"))

    def room(self) -> Room:
        """Whether another live stream fits beside the open ones (capacity.py)."""
        now, live = time.monotonic(), self._live()
        return self.capacity.room(len(live), max((s.late_s(now) for s in live), default=0), now, _finals_only(live))

    def _post(self, stream: Stream, posted: Posted) -> None:
        stream.inbox.append(posted)
        self._wake.set()

    def _snapshot(self) -> list[Stream]:
        with self._lock:
            return list(self._streams.values())

    def _live(self) -> list[Stream]:
        """The streams of live clients (not files')."""
        return [s for s in self._snapshot() if not s.background]

    # -- the inference threads ------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_num_threads(self._torch_threads)
        while not (self._stopping and not self._streams):
            self._wake.wait(timeout=0.5)
            self._wake.clear()  # before looking: what is posted from now on sets it again
            try:
                self._ingest()
                batch = self._claim()
            except Exception:  # a bug must not end the thread: the streams would wait for ever
                log.exception("scheduler failed")
                continue
            if batch is None:
                continue
            try:
                self._run(batch)
            finally:
                for d in batch.due:
                    d.key.busy = False
                self._wake.set()  # look again at once: more work may be due, and the streams are free

    def _ingest(self) -> None:
        """Push what connections handed over into the sessions, and close the streams that are done."""
        for stream in self._snapshot():
            with stream.lock:  # held only briefly by any thread
                self._ingest_stream(stream)
                if stream.ended and not (stream.busy or stream.closed or stream.inbox) and stream.session.ended \
                        and stream.session.idle:
                    self._close(stream, Done(round(stream.received_s, 3)))

    def _ingest_stream(self, stream: Stream) -> None:
        try:
            stream.take_in()
        except Exception:  # a bug on one stream must not stop the others
            log.exception("session failed", extra={"session": stream.id})
            self._close(stream, Failed("internal error"))

    def _claim(self) -> Pass[Stream] | None:
        """The first pass the policy would run now over every free stream's due job, its streams marked busy
        (None when nothing is due). Any thread takes any stream's work, so a final never waits for one
        thread while another is free."""
        with self._claiming:
            due, behind = self._due()
            if due and self.max_wait and len(due) < self.policy.batch:
                time.sleep(self.max_wait)  # let other streams' work join this pass
                self._ingest()
                due, behind = self._due()
            passes = self.policy.passes(due, behind)
            if not passes:
                return None
            for d in passes[0].due:
                d.key.busy = True
            if len(due) > len(passes[0].due):
                self._wake.set()  # another thread may take the rest
            return passes[0]

    def _due(self) -> tuple[list[Due[Stream]], bool]:
        now, streams = time.monotonic(), self._snapshot()
        behind = self.policy.behind([stream.late_s(now) for stream in streams if not stream.background])
        shedding = self.policy.shedding(behind)
        # background passes leave a worker free for live streams (with one worker, they wait for no live work)
        background_free = sum(s.busy for s in streams if s.background) < max(1, len(self._threads) - 1)
        due = []
        for stream in (s for s in streams if not (s.busy or s.closed)):
            if stream.background and not background_free:
                continue
            with stream.lock:  # a background stream takes only the updates that cut long segments at a stable word
                job = stream.session.next_job(True, self._background_gap_s) if stream.background else \
                    stream.session.next_job(shedding.skip_stale, shedding.min_update_gap_s)
                ending = stream.session.ended
            if job is not None:
                due.append(Due(stream, job, stream.late_s(now), ending, stream.background))
        self.metrics.queue.set(len(due))
        return due, behind

    def _run(self, batch: Pass[Stream]) -> None:
        started = time.perf_counter()
        try:
            results = self.engine.run([d.job for d in batch.due], batch.final_beam)
        except Exception:
            log.exception("model pass failed", extra={"streams": [d.key.id for d in batch.due]})
            for d in batch.due:
                self._close(d.key, Failed("internal error"))
            return
        elapsed = time.perf_counter() - started
        self.metrics.inference.labels(batch.kind).observe(elapsed)
        if not all(d.key.background for d in batch.due):  # files use the time live streams leave
            self.capacity.record(elapsed, time.monotonic(), len(live := self._live()), _finals_only(live),
                                 batch.kind == "final")
        if batch.final_beam == 1 and self.engine.config.final_beam > 1:
            self.metrics.greedy_finals.inc(len(batch.due))
        self.metrics.batch.labels(batch.kind).observe(len(batch.due))
        for d, result in zip(batch.due, results):
            stream = d.key
            with stream.lock:  # nothing reaches a stream after its Failed
                if stream.closed:
                    continue
                try:
                    events = stream.session.complete(result)
                except Exception:
                    log.exception("session failed", extra={"session": stream.id})
                    self._close(stream, Failed("internal error"))
                    continue
                _count_coverage(self.metrics, stream)
                for event in events:
                    _deliver(self.metrics, stream, event)

    def _close(self, stream: Stream, last: Done | Failed) -> None:
        """Deliver the stream's last item, once, and forget the stream."""
        with self._lock:
            if stream.closed:
                return
            stream.closed = True
            del self._streams[stream.id]
        self.metrics.sessions.dec()
        _deliver(self.metrics, stream, last)


def _deliver(metrics: Metrics, stream: Stream, item: Item) -> None:
    """Hand an item to the stream's connection, on its loop; count captions and their lag (under stream.lock, or
    for the last item, which touches no arrival)."""
    if isinstance(item, (Final, Partial)):
        kind = "final" if isinstance(item, Final) else "partial"
        arrived = stream.arrival_time(item.end)
        if arrived is not None and not stream.background:  # a file's lag is its turnaround, not a caption's lag
            metrics.lag.labels(kind).observe(max(0.0, time.monotonic() - arrived))
        metrics.captions.labels(kind).inc()
        if isinstance(item, Final):
            stream.forget_arrivals_before(item.end)
    stream.loop.call_soon_threadsafe(stream.outbox.put_nowait, item)


def _count_coverage(metrics: Metrics, stream: Stream) -> None:
    """Count what the coverage checks of the stream's latest finals did."""
    for segment, coverage in stream.session.take_coverage():
        metrics.continuations.inc(coverage.continuations)
        for outcome in ("added", "removed"):
            metrics.final_words.labels(outcome).inc(getattr(coverage, f"words_{outcome}"))
        metrics.final_words.labels("unbacked_kept").inc(coverage.unbacked_kept)
        if coverage.shortfall:
            log.warning("final decoded short of its last partial", extra={
                "session": stream.id, "segment": segment, "words": coverage.shortfall,
                "recovered": coverage.words_added})
