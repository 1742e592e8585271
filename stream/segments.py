"""The segment planner: which stretch of audio each trigger's model job covers, with what context.

A segment opens when speech starts and closes with a final when it ends (or, at the maximum
length, with a cut after its last stable word). Each job carries the earlier segments' finals
(as far back as context_s) as decoded context, and their audio before the segment's own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from torch import Tensor

from captioner.decoder.timing import WordTiming
from captioner.decoder.vocabulary import Vocabulary

from .commit import LocalAgreement, Unit
from .config import StreamConfig
from .features import FRAMES_PER_SECOND, HOP_LENGTH
from .frames import FrameBuffer
from .jobs import FinalJob, Hypothesis, Job, SegmentCache, Speech, UpdateJob, max_new_tokens
from .triggers import Kind, Trigger

__all__ = ["Segment", "Said", "SegmentPlanner"]

MIN_UNSTABLE_S = 1.0  # partials may always add this much audio's worth of tokens
CUT_SEARCH_FRAMES = 300  # a segment at its maximum length is cut in a pause of its last 3 s
CUT_BEFORE_EDGE_FRAMES = 30  # ...at least 0.3 s before the newest audio
CUT_NEAR_WORD_FRAMES = 15  # a cut after a stable word goes within 0.15 s of the word's end


@dataclass
class Segment:
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
    cache: SegmentCache | None = None  # what its jobs share across model calls (config.segment_cache)
    language: str | None = None  # language=auto: settled by a confident detection (until then, detected per job)

    @property
    def stable_tokens(self) -> list[int]:
        return [t for unit in self.units[: self.n_stable] for t in unit.tokens]

    def apply(self, result: Hypothesis, edge: float, quiet: float | None) -> None:
        """Take a partial update's hypothesis; the commit policy decides how much of it is now stable."""
        offset = self.update_start / FRAMES_PER_SECOND
        self.tokens = result.tokens
        self.units, position = [], 0
        for word in result.words:
            probability = min(result.probabilities[position : position + len(word.tokens)], default=1.0)
            position += len(word.tokens)
            self.units.append(Unit(tuple(word.tokens), offset + word.end, probability))
        self.n_stable = self.policy.update(self.units, self.n_stable, edge, quiet, result.finished)

    def settle_language(self, result: Hypothesis, confidence: float) -> None:
        """A detection this confident settles the segment's language: its later jobs need none."""
        if self.language is None and result.language_probability is not None and \
                result.language_probability >= confidence:
            self.language = result.language


@dataclass(frozen=True)
class Said:
    """What a final said: its tokens and word timings, the timings from `offset` seconds."""

    tokens: list[int]
    words: list[WordTiming]
    offset: float
    language: str = "en"


class SegmentPlanner:
    def __init__(self, config: StreamConfig, buffer: FrameBuffer, speech: Speech = Speech(),
                 vocabulary: Vocabulary | None = None) -> None:
        self.config = config
        self.buffer = buffer
        self.speech = speech
        self.vocabulary = vocabulary
        self.spoken: str | None = None  # language=auto: the language of the stream's last final
        self.segment: Segment | None = None
        self.released = 0  # frames before this belong to finished segments
        self.prompt: list[int] = []
        self.said: deque[tuple[int, list[int]]] = deque()  # (first frame, tokens) of recent finals' words
        self._context_frames = round(config.context_s * FRAMES_PER_SECOND)
        self._preroll = round(config.preroll_s * FRAMES_PER_SECOND)

    def job_for(self, trigger: Trigger, edge: int) -> Job | None:
        """The job a trigger calls for, `edge` the frames its audio reaches; None when there is nothing to do."""
        segment = self.segment
        if trigger.kind is Kind.START:
            start = max(self.released, self.buffer.first_frame, trigger.speech_sample // HOP_LENGTH - self._preroll)
            self.segment = self._new_segment(start)
            return None
        if segment is None:
            self.trim(edge - self._preroll)
            return None
        if trigger.kind is Kind.END:
            return self._final_job(segment, edge)
        if trigger.kind is Kind.RETRY and segment.id is not None:
            return None  # the first update found text: no retry needed
        if edge - segment.start >= self.config.max_segment_s * FRAMES_PER_SECOND:
            return self._cut_job(segment, edge)
        return self._update_job(segment, edge) if self.speech.partials else None

    def finish(self, trigger: Trigger, job: FinalJob, said: Said | None) -> Segment | None:
        """After a segment's final (`said`: what it said, if it was sent): remember it as context and
        release its audio. A cut at the maximum length opens the next segment, and returns it when
        it carries on the words after the cut (the caller shows them)."""
        segment = self.segment
        assert segment is not None
        if said is not None:
            self.spoken = said.language
            if self.config.prompt_tokens:
                self.prompt = (self.prompt + said.tokens)[-self.config.prompt_tokens :]
            for word in said.words:
                self.said.append((round((said.offset + word.start) * FRAMES_PER_SECOND), word.tokens))
        cut_frame = segment.context_start + job.mel.shape[1]
        self.released = cut_frame
        carried = None
        if trigger.kind is Kind.TICK:  # a cut at the maximum length: speech goes on in a new segment
            self.segment = self._new_segment(cut_frame)
            stable = job.prefix[job.context :]
            tokens = segment.tokens[len(stable) :] if job.max_new_tokens == 0 else []
            if tokens:  # cut after the stable words: the rest of the hypothesis goes on, still on screen
                self.segment.tokens = tokens
                carried = self.segment
        else:
            self.segment = None
        self.trim(cut_frame)
        return carried

    def prompt_tokens(self) -> list[int]:
        return self.prompt[-self.config.prompt_tokens :] if self.config.prompt_tokens else []

    def trim(self, frame: int) -> None:
        """Forget frames before `frame`, less what later segments may need as context (never the open segment's)."""
        frame -= self._context_frames
        if self.segment is not None:
            frame = min(frame, self.segment.context_start)
        self.buffer.trim(frame)

    # -- jobs -----------------------------------------------------------------------------------

    def _update_job(self, segment: Segment, edge: int) -> UpdateJob | None:
        mel = self.buffer.window(segment.update_start, edge, segment.start)
        if mel is None:
            return None
        # loop guard for partials: new tokens only for the audio after the last stable word
        stable_end = segment.units[segment.n_stable - 1].end if segment.n_stable else segment.start / FRAMES_PER_SECOND
        unstable_s = max(MIN_UNSTABLE_S, edge / FRAMES_PER_SECOND - stable_end)
        return UpdateJob(
            mel=mel,
            prompt=self.prompt_tokens() if self.config.partial_prompt else [],
            prefix=segment.update_context + segment.stable_tokens,
            draft=segment.tokens[len(segment.stable_tokens) :],
            max_new_tokens=max_new_tokens(self.config, unstable_s, 0, extra=4),
            cache=segment.cache,
            context=len(segment.update_context),
            context_positions=(segment.start - segment.update_start) // 2,
            frozen_positions=self._frozen_positions(segment, edge),
            **self._language(segment),
        )

    def _frozen_positions(self, segment: Segment, edge: int) -> int:
        """Encoder positions from the partial's window start that its encoder pass leaves cached for the next
        updates: those of the audio more than partial_window_s before the edge (0: none, all re-encoded). Only
        the window strategy's encoding of a job with a segment cache takes them (stream/encoding.py)."""
        window = round(self.config.partial_window_s * FRAMES_PER_SECOND)
        return max(0, edge - window - segment.update_start) // 2 if window else 0

    def _final_job(self, segment: Segment, edge: int) -> FinalJob | None:
        mel = self.buffer.window(segment.context_start, edge, segment.start)
        if mel is None:
            self.segment = None
            return None
        stable = segment.stable_tokens
        seconds = (edge - segment.start) / FRAMES_PER_SECOND
        return self._final(segment, mel, segment.context + stable, max_new_tokens(self.config, seconds, len(stable)),
                           edge)

    def _cut_job(self, segment: Segment, edge: int) -> FinalJob | None:
        """A segment at its maximum length ends after its last stable word: the final is the stable text.

        The cut goes in the quietest moment around the end of that word, and the words after it
        carry on into the next segment. Without stable words it goes in the quietest moment of the
        last seconds, and the final decodes everything before it.
        """
        if segment.n_stable:
            word_end = round(segment.units[segment.n_stable - 1].end * FRAMES_PER_SECOND)
            lo = max(segment.start + 2, word_end - CUT_NEAR_WORD_FRAMES)
            hi = min(edge - 2, word_end + CUT_NEAR_WORD_FRAMES)
            cut = self.buffer.quietest_frame(lo, hi) if lo < hi else min(edge, max(word_end, segment.start + 2))
            mel = self.buffer.window(segment.context_start, cut, segment.start)
            if mel is not None:
                return self._final(segment, mel, segment.context + segment.stable_tokens, 0, cut)
        lo = max(edge - CUT_SEARCH_FRAMES, segment.start + 2)
        hi = edge - CUT_BEFORE_EDGE_FRAMES
        cut = self.buffer.quietest_frame(lo, hi) if lo < hi else edge
        mel = self.buffer.window(segment.context_start, cut, segment.start)
        if mel is None:
            return None
        seconds = (cut - segment.start) / FRAMES_PER_SECOND
        return self._final(segment, mel, segment.context, max_new_tokens(self.config, seconds, 0), cut)

    def _final(self, segment: Segment, mel: Tensor, prefix: list[int], new_tokens: int, stop: int) -> FinalJob:
        activity = self.buffer.activity(segment.start, stop, segment.context_start, self.config.vad_threshold,
                                        self.config.vad_release)
        cache, positions = self._context_block(segment)
        draft = segment.tokens[len(segment.stable_tokens) :] if new_tokens else []
        return FinalJob(mel, self.prompt_tokens(), prefix, new_tokens, len(segment.context), cache, positions,
                        activity=activity, draft=draft, **self._language(segment))

    def _language(self, segment: Segment) -> dict:
        """A job's speech fields: its vocabulary, the task, and the stream's language, or (auto) the segment's
        once settled, else detect it, with the stream's last language to fall back on."""
        fields = {"task": self.speech.task, "vocabulary": self.vocabulary}
        if not self.speech.detect:
            return {"language": self.speech.language, **fields}
        return {"language": segment.language, "fallback_language": self.spoken, **fields}

    def _context_block(self, segment: Segment) -> tuple[SegmentCache | None, int]:
        """A final's share of the segment's cached context block (when finals reuse it), and its positions."""
        cache, positions = segment.cache, (segment.start - segment.context_start) // 2
        if not self.config.finals_reuse_context or cache is None or not cache.encoder.n_done \
                or segment.context_start != segment.update_start or not positions:
            return None, 0
        context = cache.prefix(positions)
        return context, context.encoder.n_done

    def _new_segment(self, start: int) -> Segment:
        """A segment from frame `start`, with the recent finals before it as context (as far back as context_s)."""
        config = self.config
        policy = LocalAgreement(config.agreement, config.commit_margin_s, config.unsure_probability, config.quiet_s,
                                config.quiet_agreement, config.quiet_probability)
        segment = Segment(start, policy)
        oldest = max(self.buffer.first_frame, start - self._context_frames)
        while self.said and self.said[0][0] - self._preroll < oldest:
            self.said.popleft()

        def context(frames: int) -> tuple[int, list[int]]:
            words = [(frame, tokens) for frame, tokens in self.said if frame - self._preroll >= start - frames]
            return (words[0][0] - self._preroll if words else start), [t for _, tokens in words for t in tokens]

        segment.context_start, segment.context = context(self._context_frames)
        segment.update_start, segment.update_context = context(round(config.update_context_s * FRAMES_PER_SECOND))
        if config.segment_cache:
            segment.cache = SegmentCache()
        return segment

