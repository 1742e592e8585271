"""A streaming session: audio in, partial and final captions out. Pure: no I/O, no clock, no threads.

    session = Session(engine)
    events = session.feed(pcm)     # any chunk size; returns the events this audio completed
    events = session.flush()       # force an endpoint now
    events = session.end()         # finalise everything heard

Flow: audio -> resampler -> log-mel frames (each sample once) and voice activity -> endpointing
-> triggers (partial-update ticks every `update_interval_s`, segment ends) -> model jobs -> commit
policy -> events. Triggers depend only on the audio, and jobs run strictly in trigger order, so the
events are the same whatever the chunking.

A scheduler that batches many sessions calls `push`, then `next_job` / `complete` instead of
`feed`: each session has at most one job outstanding, because each job needs the last one's result.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from captioner.decoder.timing import merge_punctuations
from captioner.encoder.streaming import EncoderCache

from .audio import SAMPLE_RATE, Resampler
from .commit import LocalAgreement, Unit
from .coverage import Coverage, Voice
from .endpoint import Endpointer, SpeechStart
from .engine import Engine, FinalJob, Hypothesis, Job, UpdateJob, max_new_tokens
from .events import Event, Final, Partial, Word
from .features import FLOOR_HISTORY_FRAMES, FRAMES_PER_SECOND, HOP_LENGTH, N_FFT, FeatureStream, normalize
from .vad import WINDOW_SAMPLES, WINDOW_SECONDS, VoiceActivity

__all__ = ["Session"]

LOG_PROB_THRESHOLD = -1.0  # with no_speech_threshold: a final this unsure and likely silent is dropped
MIN_UNSTABLE_S = 1.0  # partials may always add this much audio's worth of tokens
CUT_SEARCH_FRAMES = 300  # a segment at its maximum length is cut in a pause of its last 3 s
CUT_BEFORE_EDGE_FRAMES = 30  # ...at least 0.3 s before the newest audio
CUT_NEAR_WORD_FRAMES = 15  # a cut after a stable word goes within 0.15 s of the word's end
SHORTFALL_WORDS = 3  # a final's first decoding this many words (and a fifth) short of the last partial is reported


class _Kind(enum.Enum):
    START = "start"  # speech started
    TICK = "tick"  # time for a partial update
    RETRY = "retry"  # a tick between the first two, used only while the segment has no text yet
    END = "end"  # speech ended (or flush / end of stream)


@dataclass(frozen=True)
class _Trigger:
    sample: int  # when it is due, in 16 kHz samples from the stream start
    kind: _Kind
    speech_sample: int = 0  # START: where speech began; END: where it ended; TICK: where silence began (0: none)


@dataclass
class _Segment:
    start: int  # first frame
    policy: LocalAgreement
    context_start: int = 0  # first frame of the earlier segments' words decoded before the final, as context
    context: list[int] = field(default_factory=list)  # their final tokens
    update_start: int = 0  # the same for partial updates (a shorter context)
    update_context: list[int] = field(default_factory=list)
    id: int | None = None  # assigned with the first caption text
    tokens: list[int] = field(default_factory=list)  # current hypothesis
    units: list[Unit] = field(default_factory=list)  # its word units
    n_stable: int = 0  # leading units that are stable
    encoder_cache: EncoderCache | None = None

    @property
    def stable_tokens(self) -> list[int]:
        return [t for unit in self.units[: self.n_stable] for t in unit.tokens]


class Session:
    def __init__(self, engine: Engine, sample_rate: int = SAMPLE_RATE, silence_s: float | None = None) -> None:
        """silence_s overrides the engine's endpointing silence for this session (seconds)."""
        self.engine = engine
        self.config = config = engine.config
        self._tokenizer = engine.model.tokenizer
        self._resampler = Resampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self._features = FeatureStream(engine.model.n_mels)
        self._vad = VoiceActivity()
        self._endpointer = Endpointer(
            WINDOW_SAMPLES / SAMPLE_RATE, config.vad_threshold, config.vad_release, config.min_speech_s,
            silence_s if silence_s is not None else config.silence_s, config.long_silence_s, config.long_speech_s,
        )
        self._frames = torch.zeros(engine.model.n_mels, 0)  # raw log-mel frames from frame _first_frame on
        self._first_frame = 0
        self._frame_max = torch.zeros(0)  # per-frame maxima from frame _max_first on, for the floor rule
        self._max_first = 0
        self._speech: list[float] = []  # speech probability of each VAD window from _first_window on
        self._first_window = 0
        self.n_samples = 0  # 16 kHz samples pushed
        self._tick = round(config.update_interval_s * SAMPLE_RATE)
        self._first_tick = round(config.first_update_s * SAMPLE_RATE)
        self._retry = min(round(config.retry_s * SAMPLE_RATE), self._tick - 1)
        self._next_tick: int | None = None  # the next update tick, while speech is open
        self._retry_tick: int | None = None  # the retry tick after the first, until it is due
        self._triggers: deque[_Trigger] = deque()
        self._pending: tuple[_Trigger, Job] | None = None
        self._last_update = -SAMPLE_RATE * 60  # sample of the last partial update's tick
        self._segment: _Segment | None = None
        self._released = 0  # frames before this belong to finished segments
        self._prompt: list[int] = []
        self._said: deque[tuple[int, list[int]]] = deque()  # (first frame, tokens) of recent finals' words, for context
        self._context_frames = round(config.context_s * FRAMES_PER_SECOND)
        self._next_id = 0
        self._coverage: list[tuple[int, Coverage]] = []
        self.ended = False

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
        events: list[Event] = []
        while (job := self.next_job()) is not None:
            events += self.complete(self.engine.run([job])[0])
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
            self._close_speech()

    def push_end(self) -> None:
        """end() without running the model."""
        if self.ended:
            return
        tail = self._resampler.finish() if self._resampler else torch.zeros(0)
        self._ingest(tail)
        self._append_frames(self._features.finish())
        self._close_speech()
        self.ended = True

    @property
    def pending_time(self) -> float | None:
        """Audio time (seconds) at which the outstanding job was due, or None."""
        return None if self._pending is None else self._pending[0].sample / SAMPLE_RATE

    def next_job(self, skip_stale: bool = False, min_update_gap_s: float = 0.0) -> Job | None:
        """The model work due next (the same object until completed), or None when nothing is due.

        skip_stale: pass over an update tick when a later tick or the end of the same segment is already
        due (a server behind real time lowers the partial cadence, and a final does not wait for a partial
        that it makes obsolete). min_update_gap_s: pass over ticks less than this much audio after the
        last update (a server that is behind sheds partial updates before it delays finals).
        """
        while self._pending is None and self._triggers:
            trigger = self._triggers.popleft()
            if trigger.kind in (_Kind.TICK, _Kind.RETRY) and (
                (skip_stale and self._triggers and self._triggers[0].kind in (_Kind.TICK, _Kind.RETRY, _Kind.END))
                or trigger.sample - self._last_update < min_update_gap_s * SAMPLE_RATE
            ):
                continue
            job = self._job_for(trigger)
            if job is not None:
                self._pending = (trigger, job)
        return None if self._pending is None else self._pending[1]

    @property
    def backlog_s(self) -> float:
        """Audio seconds received but not yet through the model (the oldest waiting trigger to the newest audio)."""
        waiting = self._pending[0] if self._pending else (self._triggers[0] if self._triggers else None)
        return 0.0 if waiting is None else max(0.0, (self.n_samples - waiting.sample) / SAMPLE_RATE)

    def take_coverage(self) -> list[tuple[int, Coverage]]:
        """(segment, what the coverage checks did) of each final sent since the last call."""
        taken, self._coverage = self._coverage, []
        return taken

    @property
    def idle(self) -> bool:
        """Nothing left to do: no job pending and no trigger waiting."""
        return self._pending is None and not self._triggers

    def complete(self, result: Hypothesis) -> list[Event]:
        """Apply the result of the job next_job returned; return the events it produces."""
        assert self._pending is not None, "complete() without a pending job"
        trigger, job = self._pending
        self._pending = None
        if isinstance(job, FinalJob):
            return self._finish_segment(trigger, job, result)
        return self._apply_update(trigger, result)

    # -- audio in -------------------------------------------------------------------------------

    def _ingest(self, pcm: torch.Tensor) -> None:
        start = self.n_samples
        self.n_samples += len(pcm)
        self._append_frames(self._features.push(pcm))
        first_window = self._endpointer.n_windows
        probabilities = self._vad.push(pcm)
        self._speech.extend(probabilities)
        for k, probability in enumerate(probabilities):
            window_start = (first_window + k) * WINDOW_SAMPLES
            self._add_ticks(start, window_start)  # ticks see the voice activity up to their time
            start = max(start, window_start)
            for decision in self._endpointer.push([probability]):
                decided = round(decision.decided * SAMPLE_RATE)
                speech = round(decision.time * SAMPLE_RATE)
                if isinstance(decision, SpeechStart):
                    self._triggers.append(_Trigger(decided, _Kind.START, speech))
                    self._next_tick = max(speech + self._first_tick, decided + 1)
                    self._retry_tick = self._next_tick + self._retry
                else:
                    self._triggers.append(_Trigger(decided, _Kind.END, speech))
                    self._next_tick = None
        self._add_ticks(start, self.n_samples)

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
                self._triggers.append(_Trigger(tick, _Kind.RETRY if retry else _Kind.TICK, quiet_sample or 0))
            if retry:
                self._retry_tick = None
            else:
                self._next_tick += self._tick

    def _append_frames(self, frames: torch.Tensor) -> None:
        if frames.shape[1]:
            self._frames = torch.cat([self._frames, frames], dim=1)
            self._frame_max = torch.cat([self._frame_max, frames.max(dim=0).values])

    def _close_speech(self) -> None:
        end = self._endpointer.close(self.n_samples / SAMPLE_RATE)
        self._next_tick = None
        if end is not None:
            self._triggers.append(_Trigger(self.n_samples, _Kind.END, round(end.time * SAMPLE_RATE)))

    # -- triggers to jobs -----------------------------------------------------------------------

    def _frames_at(self, sample: int) -> int:
        """Frames computable from the first `sample` samples (all of them once the stream has ended)."""
        if self.ended and sample >= self.n_samples:
            return self._first_frame + self._frames.shape[1]
        return max(0, (sample - N_FFT // 2) // HOP_LENGTH + 1)

    def _job_for(self, trigger: _Trigger) -> Job | None:
        segment = self._segment
        if trigger.kind is _Kind.START:
            preroll = round(self.config.preroll_s * FRAMES_PER_SECOND)
            start = max(self._released, self._first_frame, trigger.speech_sample // HOP_LENGTH - preroll)
            self._segment = self._new_segment(start)
            return None
        if segment is None:
            self._trim(self._frames_at(trigger.sample) - round(self.config.preroll_s * FRAMES_PER_SECOND))
            return None
        edge = self._frames_at(trigger.sample)
        if trigger.kind is _Kind.END:
            return self._final_job(segment, edge)
        if trigger.kind is _Kind.RETRY and segment.id is not None:
            return None  # the first update found text: no retry needed
        if edge - segment.start >= self.config.max_segment_s * FRAMES_PER_SECOND:
            return self._cut_job(segment, edge)
        mel = self._window(segment.update_start, edge, segment.start)
        if mel is None:
            return None
        prefix = segment.update_context + segment.stable_tokens
        # loop guard for partials: new tokens only for the audio after the last stable word
        stable_end = segment.units[segment.n_stable - 1].end if segment.n_stable else segment.start / FRAMES_PER_SECOND
        unstable_s = max(MIN_UNSTABLE_S, edge / FRAMES_PER_SECOND - stable_end)
        return UpdateJob(
            mel=mel,
            prompt=self._prompt_tokens() if self.config.partial_prompt else [],
            prefix=prefix,
            draft=segment.tokens[len(segment.stable_tokens) :],
            max_new_tokens=max_new_tokens(self.config, unstable_s, 0, extra=4),
            encoder_cache=segment.encoder_cache,
            context=len(segment.update_context),
            context_positions=(segment.start - segment.update_start) // 2,
        )

    def _final_job(self, segment: _Segment, edge: int) -> FinalJob | None:
        mel = self._window(segment.context_start, edge, segment.start)
        if mel is None:
            self._segment = None
            return None
        stable = segment.stable_tokens
        seconds = (edge - segment.start) / FRAMES_PER_SECOND
        return FinalJob(mel, self._prompt_tokens(), segment.context + stable,
                        max_new_tokens(self.config, seconds, len(stable)), len(segment.context),
                        *self._context_block(segment), voice=self._voice(segment, edge))

    def _context_block(self, segment: _Segment) -> tuple[EncoderCache | None, int]:
        """A final's share of the segment's cached context block (when finals reuse it), and its positions."""
        cache = segment.encoder_cache
        if not self.config.final_cached_context or cache is None or self.config.strategy != "window" \
                or not cache.n_done or segment.context_start != segment.update_start:
            return None, 0
        return cache, cache.n_done

    def _cut_job(self, segment: _Segment, edge: int) -> FinalJob | None:
        """A segment at its maximum length ends after its last stable word: the final is the stable text.

        The cut goes in the quietest moment around the end of that word, and the words after it
        carry on into the next segment. Without stable words it goes in the quietest moment of the
        last seconds, and the final decodes everything before it.
        """
        if segment.n_stable:
            word_end = round(segment.units[segment.n_stable - 1].end * FRAMES_PER_SECOND)
            lo = max(segment.start + 2, word_end - CUT_NEAR_WORD_FRAMES)
            hi = min(edge - 2, word_end + CUT_NEAR_WORD_FRAMES)
            cut = self._quietest_frame(lo, hi) if lo < hi else min(edge, max(word_end, segment.start + 2))
            mel = self._window(segment.context_start, cut, segment.start)
            if mel is not None:
                return FinalJob(mel, self._prompt_tokens(), segment.context + segment.stable_tokens, 0,
                                len(segment.context), *self._context_block(segment), voice=self._voice(segment, cut))
        lo = max(edge - CUT_SEARCH_FRAMES, segment.start + 2)
        hi = edge - CUT_BEFORE_EDGE_FRAMES
        cut = self._quietest_frame(lo, hi) if lo < hi else edge
        mel = self._window(segment.context_start, cut, segment.start)
        if mel is None:
            return None
        seconds = (cut - segment.start) / FRAMES_PER_SECOND
        return FinalJob(mel, self._prompt_tokens(), segment.context, max_new_tokens(self.config, seconds, 0),
                        len(segment.context), *self._context_block(segment), voice=self._voice(segment, cut))

    def _voice(self, segment: _Segment, stop: int) -> Voice:
        """The voice activity of the segment's own frames up to `stop`, on the clock of its final's mel."""
        first = max(segment.start * HOP_LENGTH // WINDOW_SAMPLES, self._first_window)
        last = min(math.ceil(stop * HOP_LENGTH / WINDOW_SAMPLES), self._first_window + len(self._speech))
        probabilities = tuple(self._speech[first - self._first_window : last - self._first_window])
        return Voice(probabilities, first * WINDOW_SECONDS - segment.context_start / FRAMES_PER_SECOND,
                     self.config.vad_threshold, self.config.vad_release)

    def _quietest_frame(self, lo: int, hi: int) -> int:
        """The middle frame of the VAD window of lowest speech probability whose middle is in [lo, hi) (the latest of ties)."""
        frames_per_window = WINDOW_SAMPLES // HOP_LENGTH
        best, best_frame = 2.0, hi - 1
        for window in range(max(0, lo // frames_per_window), hi // frames_per_window + 1):
            middle = window * WINDOW_SAMPLES // HOP_LENGTH + frames_per_window // 2
            if lo <= middle < hi and window - self._first_window < len(self._speech):
                probability = self._speech[window - self._first_window]
                if probability <= best:
                    best, best_frame = probability, middle
        return best_frame

    def _window(self, start: int, stop: int, own_start: int | None = None) -> torch.Tensor | None:
        """Normalised frames [start, stop) trimmed to an even count; None if there are none after own_start."""
        stop -= (stop - start) % 2
        if stop - max(start, own_start or start) < 2:
            return None
        history = self._frame_max[max(0, stop - FLOOR_HISTORY_FRAMES - self._max_first) : stop - self._max_first]
        frames = self._frames[:, start - self._first_frame : stop - self._first_frame]
        return normalize(frames, history.max())

    def _prompt_tokens(self) -> list[int]:
        return self._prompt[-self.config.prompt_tokens :] if self.config.prompt_tokens else []

    def _trim(self, frame: int) -> None:
        """Forget frames before `frame`, less what later segments may need as context (never the open segment's)."""
        frame -= self._context_frames
        if self._segment is not None:
            frame = min(frame, self._segment.context_start)
        if frame > self._first_frame:
            self._frames = self._frames[:, frame - self._first_frame :]
            self._first_frame = frame
            window = frame * HOP_LENGTH // WINDOW_SAMPLES
            if window > self._first_window:
                del self._speech[: window - self._first_window]
                self._first_window = window
        # later windows end after `frame`: their floor looks back at most 30 s from there
        first_max = frame - FLOOR_HISTORY_FRAMES
        if first_max > self._max_first:
            self._frame_max = self._frame_max[first_max - self._max_first :]
            self._max_first = first_max

    # -- results to events ----------------------------------------------------------------------

    def _units(self, segment: _Segment, result: Hypothesis) -> list[Unit]:
        offset = segment.update_start / FRAMES_PER_SECOND
        units, position = [], 0
        for word in result.words:
            probability = min(result.probabilities[position : position + len(word.tokens)], default=1.0)
            position += len(word.tokens)
            units.append(Unit(tuple(word.tokens), offset + word.end, probability))
        return units

    def _apply_update(self, trigger: _Trigger, result: Hypothesis) -> list[Event]:
        self._last_update = trigger.sample
        segment = self._segment
        assert segment is not None
        segment.tokens = result.tokens
        segment.units = self._units(segment, result)
        edge = trigger.sample / SAMPLE_RATE
        quiet = trigger.speech_sample / SAMPLE_RATE if trigger.speech_sample else None
        segment.n_stable = segment.policy.update(segment.units, segment.n_stable, edge, quiet, result.finished)
        text = self._tokenizer.decode(segment.tokens).strip()
        if not text:
            return []
        if segment.id is None:
            segment.id = self._new_id()
        stable = self._tokenizer.decode(segment.stable_tokens).strip()
        return [Partial(segment.id, text, stable, segment.start / FRAMES_PER_SECOND, edge,
                        self._words(segment.update_start / FRAMES_PER_SECOND, result.words[: segment.n_stable]))]

    def _finish_segment(self, trigger: _Trigger, job: FinalJob, result: Hypothesis) -> list[Event]:
        segment = self._segment
        assert segment is not None
        start = segment.start / FRAMES_PER_SECOND
        offset = segment.context_start / FRAMES_PER_SECOND
        end = offset + job.mel.shape[1] / FRAMES_PER_SECOND
        stable = job.prefix[job.context :]
        silent = (
            not stable
            and result.no_speech_prob > self.config.no_speech_threshold
            and result.avg_logprob < LOG_PROB_THRESHOLD
        )
        tokens = stable if silent else result.tokens
        text = self._tokenizer.decode(tokens).strip()
        words = [] if silent else self._words(offset, result.words)
        events: list[Event] = []
        if text or segment.id is not None:
            if segment.id is None:
                segment.id = self._new_id()
            span = (words[0].start, words[-1].end) if words else (start, end)
            events.append(Final(segment.id, text, span[0], span[1], words))
            self._coverage.append((segment.id, replace(result.coverage, shortfall=self._shortfall(segment, result, words))))
            if self.config.prompt_tokens:
                self._prompt = (self._prompt + tokens)[-self.config.prompt_tokens :]
            for word in [] if silent else result.words:
                self._said.append((round((offset + word.start) * FRAMES_PER_SECOND), word.tokens))
        cut_frame = segment.context_start + job.mel.shape[1]
        self._released = cut_frame
        if trigger.kind is _Kind.TICK:  # a cut at the maximum length: speech goes on in a new segment
            self._segment = self._new_segment(cut_frame)
            carried = segment.tokens[len(stable) :] if job.max_new_tokens == 0 else []
            if carried:  # cut after the stable words: the rest of the hypothesis goes on, still on screen
                self._segment.tokens = carried
                self._segment.id = self._new_id()
                events.append(Partial(self._segment.id, self._tokenizer.decode(carried).strip(), "",
                                      cut_frame / FRAMES_PER_SECOND, trigger.sample / SAMPLE_RATE))
        else:
            self._segment = None
        self._trim(cut_frame)
        return events

    def _shortfall(self, segment: _Segment, result: Hypothesis, words: list[Word]) -> int:
        """Words the segment's last partial showed that the final's first decoding lacked over the same audio,
        when that is substantial (else 0): a sign that the decoding stopped early."""
        edge = self._last_update / SAMPLE_RATE
        shown = len(self._tokenizer.decode(segment.tokens).split())
        decoded = sum(w.start < edge for w in words) - result.coverage.words_added
        short = shown - max(0, decoded)
        return short if short >= max(SHORTFALL_WORDS, shown / 5) else 0

    def _words(self, offset: float, timings: list) -> list[Word]:
        return [
            Word(w.word.strip(), round(offset + w.start, 3), round(offset + w.end, 3), round(w.probability, 3))
            for w in merge_punctuations(timings)
        ]

    def _new_segment(self, start: int) -> _Segment:
        """A segment from frame `start`, with the recent finals before it as context (as far back as context_s)."""
        segment = _Segment(start, self._policy())
        preroll = round(self.config.preroll_s * FRAMES_PER_SECOND)
        while self._said and self._said[0][0] - preroll < max(self._first_frame, start - self._context_frames):
            self._said.popleft()

        def context(frames: int) -> tuple[int, list[int]]:
            words = [(frame, tokens) for frame, tokens in self._said if frame - preroll >= start - frames]
            return (words[0][0] - preroll if words else start), [t for _, tokens in words for t in tokens]

        segment.context_start, segment.context = context(self._context_frames)
        segment.update_start, segment.update_context = context(round(self.config.update_context_s * FRAMES_PER_SECOND))
        if self.config.strategy == "cached" or self.config.cache_context:
            segment.encoder_cache = EncoderCache()
        return segment

    def _policy(self) -> LocalAgreement:
        config = self.config
        return LocalAgreement(config.agreement, config.commit_margin_s, config.unsure_probability, config.quiet_s,
                              config.quiet_agreement, config.quiet_probability)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1
