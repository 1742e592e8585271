"""The inference scheduler: the one owner of the model, on worker threads, batching all sessions' work.

Connections (on the asyncio loop) hand audio and commands to the scheduler, which never blocks
them; each worker thread feeds its streams' Sessions, gathers the model jobs that are due, runs
them in the passes the batching policy (captioner.stream.batching) decides, and hands the
resulting events back to each connection's loop. The scheduler keeps only threads and queues.
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

import numpy as np
import torch

from captioner.stream.batching import BatchPolicy, Due, Pass
from captioner.stream.engine import Engine
from captioner.stream.events import Event, Final, Partial
from captioner.stream.session import Session

from .metrics import Metrics

__all__ = ["Done", "Failed", "Stream", "Scheduler"]

log = logging.getLogger("captioner.scheduler")


@dataclass(frozen=True)
class Done:
    """The stream has ended and every final has been sent."""

    audio_s: float


@dataclass(frozen=True)
class Failed:
    """The model failed on this stream; the connection closes with 1011."""

    reason: str


Item = Event | Done | Failed


@dataclass
class Stream:
    """The scheduler's side of one connection."""

    id: str
    session: Session
    loop: asyncio.AbstractEventLoop
    outbox: asyncio.Queue[Item]
    sample_rate: int
    received_s: float = 0.0  # audio handed over, seconds at the stream's rate
    ended: bool = False
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (audio end s, monotonic time)
    inbox_s: float = 0.0  # audio handed over but not yet pushed into the session
    worker: _Worker | None = None  # the inference thread that serves it
    opened: float = field(default_factory=time.monotonic)

    def arrival_time(self, audio_s: float) -> float | None:
        """When the audio up to audio_s had arrived (monotonic clock), if known."""
        index = bisect.bisect_left(self.arrivals, (audio_s, -1.0))
        return self.arrivals[index][1] if index < len(self.arrivals) else None

    def forget_arrivals_before(self, audio_s: float) -> None:
        index = bisect.bisect_left(self.arrivals, (audio_s, -1.0))
        if index > 256:
            del self.arrivals[: index - 1]


class _Worker:
    """One inference thread and the streams it serves: their audio, commands and model work."""

    def __init__(self, index: int) -> None:
        self.streams: dict[str, Stream] = {}
        self.inbox: deque[tuple[Stream, str, np.ndarray | None]] = deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.name = f"captioner-inference-{index}"
        self.queued = 0  # streams with model work due


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, max_wait_ms: float = 5.0, workers: int = 1) -> None:
        """workers: inference threads, each batching the work of its own streams with an equal share of
        torch's threads (on CPU, single-threaded workers keep the cores busier than one worker whose
        threads wait for each other inside every small operation). The batching settings are the
        engine's configuration."""
        self.engine = engine
        self.policy = BatchPolicy(engine.config, on_gpu=engine.model.device.type == "cuda")
        self.metrics = metrics
        self.max_wait = max_wait_ms / 1000
        self._streams: dict[str, Stream] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._ids = itertools.count(1)
        self._workers = [_Worker(i) for i in range(max(1, workers))]
        self._torch_threads = max(1, torch.get_num_threads() // len(self._workers))

    # -- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        for worker in self._workers:
            worker.thread = threading.Thread(target=self._work, args=(worker,), name=worker.name, daemon=True)
            worker.thread.start()

    def stop(self) -> None:
        self._stopping = True
        for worker in self._workers:
            worker.wake.set()
        for worker in self._workers:
            if worker.thread is not None:
                worker.thread.join(timeout=10)

    def open(self, sample_rate: int, loop: asyncio.AbstractEventLoop, silence_s: float | None = None) -> Stream:
        session = Session.for_engine(self.engine, sample_rate, silence_s)
        stream = Stream(f"s{next(self._ids)}-{int(time.time() * 1000) % 100000:05d}", session, loop, asyncio.Queue(),
                        sample_rate)
        with self._lock:
            stream.worker = min(self._workers, key=lambda w: len(w.streams))
            stream.worker.streams[stream.id] = stream
            self._streams[stream.id] = stream
        self.metrics.sessions.inc()
        return stream

    def push(self, stream: Stream, pcm: np.ndarray) -> None:
        """Hand over float32 samples at the stream's rate."""
        seconds = len(pcm) / stream.sample_rate
        stream.received_s += seconds
        stream.inbox_s += seconds
        stream.arrivals.append((stream.received_s, time.monotonic()))
        self.metrics.audio.inc(seconds)
        self._post(stream, "audio", pcm)

    def flush(self, stream: Stream) -> None:
        self._post(stream, "flush", None)

    def end(self, stream: Stream) -> None:
        """No more audio: finalise; the outbox gets the last finals, then Done."""
        if not stream.ended:
            stream.ended = True
            self._post(stream, "end", None)

    def backlog_s(self, stream: Stream) -> float:
        """Audio waiting for the model, seconds."""
        return stream.inbox_s + stream.session.backlog_s

    def late_s(self, stream: Stream, now: float) -> float:
        """How long the stream's oldest audio waiting for the model has been due by real-time pace since the
        stream opened (negative when the client sends ahead of real time)."""
        due_s = min(stream.received_s, now - stream.opened)
        return due_s - (stream.received_s - self.backlog_s(stream))

    @property
    def busy(self) -> int:
        return len(self._streams)

    def _post(self, stream: Stream, command: str, payload: np.ndarray | None) -> None:
        assert stream.worker is not None
        stream.worker.inbox.append((stream, command, payload))
        stream.worker.wake.set()

    # -- the inference threads ------------------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        torch.set_num_threads(self._torch_threads)
        while not (self._stopping and not worker.streams):
            worker.wake.wait(timeout=0.5)
            worker.wake.clear()
            self._ingest(worker)
            now = time.monotonic()
            behind = self.policy.behind([self.late_s(stream, now) for stream in list(worker.streams.values())])
            due = self._due(worker, behind)
            if not due:
                continue
            if self.max_wait and len(due) < self.engine.config.max_batch:
                time.sleep(self.max_wait)  # let other streams' work join this batch
                self._ingest(worker)
                due = self._due(worker, behind)
            for batch in self.policy.passes(due, behind):
                self._run(batch)
            worker.wake.set()  # look again at once: more work may be due

    def _ingest(self, worker: _Worker) -> None:
        while worker.inbox:
            stream, command, payload = worker.inbox.popleft()
            if stream.id not in worker.streams:
                continue
            try:
                if command == "audio":
                    stream.session.push(payload)
                    stream.inbox_s = max(0.0, stream.inbox_s - len(payload) / stream.sample_rate)
                elif command == "flush":
                    stream.session.push_flush()
                elif command == "end":
                    stream.session.push_end()
            except Exception:  # a bug on one stream must not stop the others
                log.exception("session failed", extra={"session": stream.id})
                self._fail(stream, "internal error")
        for stream in list(worker.streams.values()):
            if stream.ended and stream.session.ended and stream.session.idle \
                    and not any(s is stream for s, _, _ in list(worker.inbox)):
                self._finish(stream)

    def _due(self, worker: _Worker, behind: bool) -> list[Due[Stream]]:
        shedding = self.policy.shedding(behind)
        now = time.monotonic()
        due = []
        for stream in list(worker.streams.values()):
            job = stream.session.next_job(shedding.skip_stale, shedding.min_update_gap_s)
            if job is not None:
                due.append(Due(stream, job, self.late_s(stream, now), stream.session.ended))
        worker.queued = len(due)
        self.metrics.queue.set(sum(w.queued for w in self._workers))
        return due

    def _run(self, batch: Pass[Stream]) -> None:
        started = time.perf_counter()
        try:
            results = self.engine.run([d.job for d in batch.due], batch.final_beam)
        except Exception:
            log.exception("model pass failed", extra={"streams": [d.key.id for d in batch.due]})
            for d in batch.due:
                self._fail(d.key, "internal error")
            return
        self.metrics.inference.labels(batch.kind).observe(time.perf_counter() - started)
        if batch.final_beam == 1 and self.engine.config.final_beam > 1:
            self.metrics.greedy_finals.inc(len(batch.due))
        self.metrics.batch.labels(batch.kind).observe(len(batch.due))
        for d, result in zip(batch.due, results):
            stream = d.key
            try:
                events = stream.session.complete(result)
            except Exception:
                log.exception("session failed", extra={"session": stream.id})
                self._fail(stream, "internal error")
                continue
            self._count_coverage(stream)
            for event in events:
                self._deliver(stream, event)

    def _count_coverage(self, stream: Stream) -> None:
        for segment, coverage in stream.session.take_coverage():
            self.metrics.continuations.inc(coverage.continuations)
            for outcome in ("added", "removed"):
                self.metrics.final_words.labels(outcome).inc(getattr(coverage, f"words_{outcome}"))
            self.metrics.final_words.labels("unbacked_kept").inc(coverage.unbacked_kept)
            if coverage.shortfall:
                log.warning("final decoded short of its last partial", extra={
                    "session": stream.id, "segment": segment, "words": coverage.shortfall,
                    "recovered": coverage.words_added})

    def _deliver(self, stream: Stream, item: Item) -> None:
        if isinstance(item, (Final, Partial)):
            kind = "final" if isinstance(item, Final) else "partial"
            arrived = stream.arrival_time(item.end)
            if arrived is not None:
                self.metrics.lag.labels(kind).observe(max(0.0, time.monotonic() - arrived))
            self.metrics.captions.labels(kind).inc()
            if isinstance(item, Final):
                stream.forget_arrivals_before(item.end)
        stream.loop.call_soon_threadsafe(stream.outbox.put_nowait, item)

    def _finish(self, stream: Stream) -> None:
        self._deliver(stream, Done(round(stream.received_s, 3)))
        self._drop(stream)

    def _fail(self, stream: Stream, reason: str) -> None:
        self._deliver(stream, Failed(reason))
        self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        with self._lock:
            if stream.worker is not None:
                stream.worker.streams.pop(stream.id, None)
            if self._streams.pop(stream.id, None) is not None:
                self.metrics.sessions.dec()
