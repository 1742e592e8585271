"""A streaming session: audio in, partial and final captions out. No I/O and no threads of its own.

    session = Session.for_engine(engine)
    events = session.feed(pcm)     # any chunk size; returns the events this audio completed
    events = session.flush()       # force an endpoint now
    events = session.end()         # finalise everything heard

Flow: audio -> resampler -> log-mel frames (each sample once) and voice activity -> endpointing
-> triggers (partial-update ticks every `update_interval_s`, segment ends) -> model jobs -> commit
policy -> events. Triggers depend only on the audio, and jobs run strictly in trigger order, so the
events are the same whatever the chunking. The one wall clock inside is the speaker embedder's (with
diarize, stream/embeddings.py): it times its own passes to bound how long a final waits for its labels,
so how many windows label a final depends on the machine's speed, never the text.

A scheduler that batches many sessions calls `push`, then `next_job` / `complete` instead of
`feed`: each session has at most one job outstanding, because each job needs the last one's result.

The session is made of parts, each tested alone: the frame buffer (stream/frames.py), the trigger
clock (stream/triggers.py), the segment planner (stream/segments.py) and the event builder
(stream/captions.py). It needs the configuration, the tokenizer and the feature size, not the
model: whatever runs its jobs (the Engine, or a fake in tests) is given to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from captioner.decoder.tokenizer import Tokenizer
from captioner.decoder.vocabulary import Vocabulary

from .audio import SAMPLE_RATE, Resampler
from .captions import Captions
from .config import StreamConfig
from .coverage import Coverage
from .embeddings import speaker_embedder
from .events import Event, Final
from .features import FeatureStream
from .frames import FrameBuffer, frames_in
from .jobs import FinalJob, Hypothesis, Job, Speech
from .segments import SegmentPlanner
from .speakers import Embedder, SpeakerLabels
from .triggers import Trigger, TriggerClock

__all__ = ["Session", "JobRunner"]

Runner = Callable[[list[Job]], list[Hypothesis]]


class JobRunner(Protocol):
    """What a session (and the server's scheduler) needs of whatever runs its jobs: captioner.stream.Engine over
    a Whisper checkpoint, or a fake one in tests."""

    config: StreamConfig

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def n_mels(self) -> int: ...

    @property
    def on_gpu(self) -> bool: ...

    def run(self, jobs: list[Job], final_beam: int | None = None) -> list[Hypothesis]: ...


class Session:
    def __init__(self, config: StreamConfig, tokenizer: Tokenizer, n_mels: int, run: Runner | None = None,
                 sample_rate: int = SAMPLE_RATE, silence_s: float | None = None, speech: Speech = Speech(),
                 embedder: Embedder | None = None, floor_max: float | None = None) -> None:
        """run: does a list of jobs (feed, flush and end need it; a scheduler calling next_job/complete does not).
        silence_s overrides the configured endpointing silence for this session (seconds). speech: its language
        and task, which the checkpoint must have (Speech.check). embedder: embeds speech, for speech.diarize.
        floor_max: a log-mel maximum known in advance, for offline comparisons only (FeatureStream)."""
        self.config = config
        self.speech = speech
        self._run_jobs = run
        self._resampler = Resampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self._features = FeatureStream(n_mels, floor_max)
        self._buffer = FrameBuffer(n_mels)
        self._clock = TriggerClock(config, silence_s)
        vocabulary = Vocabulary(tokenizer, speech.keywords, config.keyword_bonus, config.keyword_start_bonus) \
            if speech.keywords else None
        self._planner = SegmentPlanner(config, self._buffer, speech, vocabulary)
        self._captions = Captions(config, tokenizer)
        if speech.diarize and embedder is None:
            raise ValueError("a session with diarize needs a speaker embedder")
        self._speakers = SpeakerLabels(config, embedder) if speech.diarize and embedder else None
        self._pending: tuple[Trigger, Job] | None = None
        self.ended = False

    @classmethod
    def for_engine(cls, engine: JobRunner, sample_rate: int = SAMPLE_RATE, silence_s: float | None = None,
                   speech: Speech | None = None, floor_max: float | None = None) -> Session:
        """A session whose jobs the engine runs, with its configuration and model's tokenizer (speech: by default
        the tokenizer's language; ValueError for one the checkpoint lacks; floor_max: see __init__)."""
        speech = speech or Speech(engine.tokenizer.language)
        speech.check(engine.tokenizer)
        config = engine.config
        embedder = speaker_embedder(config.speaker_window_s, config.speaker_hop_s, config.max_speaker_wait_s) \
            if speech.diarize else None
        return cls(config, engine.tokenizer, engine.n_mels, engine.run, sample_rate, silence_s, speech,
                   embedder, floor_max)

    @property
    def n_samples(self) -> int:
        """16 kHz samples pushed."""
        return self._clock.n_samples

    # -- the simple interface -------------------------------------------------------------------

    def feed(self, pcm: torch.Tensor | np.ndarray) -> list[Event]:
        """Add audio (float samples in [-1, 1] at the session's rate); return the events it completes."""
        self.push(pcm)
        return self._run()

    def flush(self) -> list[Event]:
        """Finalise the open segment now, as if speech had ended."""
        self.push_flush()
        return self._run()

    def end(self) -> list[Event]:
        """Finalise everything heard; the session takes no more audio."""
        self.push_end()
        return self._run()

    def _run(self) -> list[Event]:
        assert self._run_jobs is not None, "feed, flush and end need a session made with a runner"
        events: list[Event] = []
        while (job := self.next_job()) is not None:
            events += self.complete(self._run_jobs([job])[0])
        return events

    # -- the batching interface -----------------------------------------------------------------

    def push(self, pcm: torch.Tensor | np.ndarray) -> None:
        """Add audio without running the model; jobs become due (see next_job)."""
        if self.ended:
            raise RuntimeError("session has ended")
        pcm = torch.as_tensor(pcm, dtype=torch.float32).reshape(-1)
        self._ingest(self._resampler.push(pcm) if self._resampler else pcm)

    def push_flush(self) -> None:
        """flush() without running the model."""
        if not self.ended:
            self._clock.close()

    def push_end(self) -> None:
        """end() without running the model."""
        if self.ended:
            return
        self._ingest(self._resampler.finish() if self._resampler else torch.zeros(0))
        self._buffer.append(self._features.finish(), [])
        self._clock.close()
        self.ended = True

    @property
    def pending_time(self) -> float | None:
        """Audio time (seconds) at which the outstanding job was due, or None."""
        return None if self._pending is None else self._pending[0].sample / SAMPLE_RATE

    def next_job(self, skip_stale: bool = False, min_update_gap_s: float = 0.0) -> Job | None:
        """The model work due next (the same object until completed), or None when nothing is due.

        skip_stale: pass over an update, waiting or taken earlier and not yet run, when a later tick or the
        end of the same segment is already due (a server behind real time lowers the partial cadence, and
        a final does not wait for a partial that it makes obsolete). min_update_gap_s: pass over ticks less
        than this much audio after the last update (a server that is behind sheds partial updates before it
        delays finals).
        """
        if skip_stale and self._pending is not None and not isinstance(self._pending[1], FinalJob) \
                and self._clock.superseded():
            self._pending = None
        while self._pending is None and (trigger := self._clock.next(skip_stale, min_update_gap_s)) is not None:
            job = self._planner.job_for(trigger, self._frames_at(trigger.sample))
            if job is not None:
                self._pending = (trigger, job)
        return None if self._pending is None else self._pending[1]

    @property
    def backlog_s(self) -> float:
        """Audio seconds received but not yet through the model (the oldest waiting trigger to the newest audio).

        Other threads read it while the session runs: each value is read once."""
        pending = self._pending
        try:
            waiting = pending[0] if pending else self._clock.triggers[0]
        except IndexError:  # no trigger waiting
            waiting = None
        return 0.0 if waiting is None else max(0.0, (self.n_samples - waiting.sample) / SAMPLE_RATE)

    def take_coverage(self) -> list[tuple[int, Coverage]]:
        """(segment, what the coverage checks did) of each final sent since the last call."""
        taken, self._captions.coverage = self._captions.coverage, []
        return taken

    @property
    def idle(self) -> bool:
        """Nothing left to do: no job pending and no trigger waiting."""
        return self._pending is None and not self._clock.triggers

    def complete(self, result: Hypothesis) -> list[Event]:
        """Apply the result of the job next_job returned; return the events it produces."""
        assert self._pending is not None, "complete() without a pending job"
        trigger, job = self._pending
        self._pending = None
        segment = self._planner.segment
        assert segment is not None
        if isinstance(job, FinalJob):
            events, said = self._captions.final(segment, job, result, self._clock.last_update / SAMPLE_RATE)
            if self._speakers is not None:
                events = [self._speakers.label(e) if isinstance(e, Final) else e for e in events]
            carried = self._planner.finish(trigger, job, said)
            if carried is not None:
                carried.language = segment.language
                events.append(self._captions.carried(carried, trigger.sample / SAMPLE_RATE, result.language))
            return events
        self._clock.last_update = trigger.sample
        segment.settle_language(result, self._captions.config.language_confidence)
        edge = trigger.sample / SAMPLE_RATE
        segment.apply(result, edge, trigger.speech_sample / SAMPLE_RATE if trigger.speech_sample else None)
        return self._captions.partial(segment, edge, result)

    # -- audio in -------------------------------------------------------------------------------

    def _ingest(self, pcm: torch.Tensor) -> None:
        if self._speakers is not None:
            self._speakers.push(pcm)
        frames = self._features.push(pcm)
        self._buffer.append(frames, self._clock.push(pcm))

    def _frames_at(self, sample: int) -> int:
        """Frames computable from the first `sample` samples (all of them once the stream has ended)."""
        if self.ended and sample >= self.n_samples:
            return self._buffer.end
        return frames_in(sample)
