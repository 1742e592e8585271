"""Who is speaking: online speaker labels for a stream's finals, from speaker embeddings. Pure: no model, no I/O.

Each final comes with the embeddings of windows of its speech (stream/embeddings.py). Its words are cut
into stretches where the speaker changes: binary segmentation at word boundaries, splitting where the
mean embeddings of the windows on each side are less similar than `change_similarity`. Each stretch
goes to the known speaker whose centroid is most similar, or, when none reaches
`new_speaker_similarity`, to a new one ("S1", "S2", ... in order of first appearance, at most
`max_speakers`); the chosen centroid then takes in the stretch's windows. A label, once given to a
final, is never revisited: later speech only moves centroids, which label later finals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .config import StreamConfig
from .embeddings import SpeakerWindow
from .events import Final, Word

__all__ = ["Embedder", "SpeakerTracker", "SpeakerLabels", "speaker_number", "HISTORY_S"]

Embedder = Callable[[torch.Tensor, float], list[SpeakerWindow]]  # (16 kHz speech, its start in s) -> its windows
HISTORY_S = 40.0  # audio kept for labelling: more than a segment (max_segment_s <= 25) and its final's delay

MIN_SPLIT_WINDOWS = 3  # each side of a change point needs this many windows (3.2 s of speech)


def speaker_number(label: str) -> int:
    """Deepgram's 0-based speaker number of a label: "S1" -> 0."""
    return int(label[1:]) - 1


def _mean_embedding(windows: list[SpeakerWindow]) -> np.ndarray:
    return _unit(np.stack([w.embedding for w in windows]))


def _unit(vectors: np.ndarray) -> np.ndarray:
    total = vectors.sum(axis=0) if vectors.ndim == 2 else vectors
    return total / max(float(np.linalg.norm(total)), 1e-8)


def _split(windows: list[SpeakerWindow], boundary: float) -> tuple[list[SpeakerWindow], list[SpeakerWindow]]:
    """The windows before a boundary and after it, each on the side of its middle: every window counts, so a
    boundary inside one speaker's speech has mixed sides, and the change itself the least similar ones."""
    before = [w.start + w.end < 2 * boundary for w in windows]
    return [w for w, b in zip(windows, before) if b], [w for w, b in zip(windows, before) if not b]


class SpeakerTracker:
    """A stream's known speakers, and the labels of its finals, given one final at a time in order."""

    def __init__(self, config: StreamConfig) -> None:
        self.options = config
        self._sums: list[np.ndarray | None] = []  # per speaker, the sum of its windows' embeddings (None: none yet)
        self._last: str | None = None  # the speaker of the latest labelled word

    @property
    def n_speakers(self) -> int:
        return len(self._sums)

    def label(self, final: Final, windows: list[SpeakerWindow]) -> Final:
        """The final with its speaker and each word's; the final's speaker is that of most of its speech."""
        if not final.words:
            return replace(final, speaker=self._last or self._enrol(None))
        stretches = self._stretches(final.words, windows)
        words: list[Word] = []
        for part, part_windows in stretches:
            speaker = self._assign(part_windows)
            words += [replace(word, speaker=speaker) for word in part]
        self._last = words[-1].speaker
        spoken: dict[str, float] = {}
        for word in words:
            assert word.speaker is not None
            spoken[word.speaker] = spoken.get(word.speaker, 0.0) + word.end - word.start
        return replace(final, words=words, speaker=max(spoken, key=lambda s: spoken[s]))

    # -- change points --------------------------------------------------------------------------

    def _stretches(self, words: list[Word],
                   windows: list[SpeakerWindow]) -> list[tuple[list[Word], list[SpeakerWindow]]]:
        """The words cut where the speaker changes, each run with the windows of its speech."""
        cut = self._change_point(words, windows)
        if cut is None:
            return [(words, windows)]
        left, right = _split(windows, (words[cut - 1].end + words[cut].start) / 2)
        return self._stretches(words[:cut], left) + self._stretches(words[cut:], right)

    def _change_point(self, words: list[Word], windows: list[SpeakerWindow]) -> int | None:
        """The word at which a new speaker starts (the least similar split under change_similarity), or None."""
        if len(windows) < 2 * MIN_SPLIT_WINDOWS:
            return None
        best: tuple[float, float, int] | None = None  # (similarity, -pause, word index)
        for k in range(1, len(words)):
            left, right = _split(windows, (words[k - 1].end + words[k].start) / 2)
            if len(left) < MIN_SPLIT_WINDOWS or len(right) < MIN_SPLIT_WINDOWS:
                continue
            similarity = float(_mean_embedding(left) @ _mean_embedding(right))
            candidate = (round(similarity, 6), -(words[k].start - words[k - 1].end), k)
            best = candidate if best is None or candidate < best else best
        if best is None or best[0] >= self.options.change_similarity:
            return None
        return best[2]

    # -- assignment -----------------------------------------------------------------------------

    def _assign(self, windows: list[SpeakerWindow]) -> str:
        """The speaker of a stretch: the nearest known speaker, or a new one; its centroid takes the windows in."""
        if not windows:  # too little speech to tell: the speaker goes on
            return self._last or self._enrol(None)
        embeddings = np.stack([w.embedding for w in windows])
        empty = [i for i, total in enumerate(self._sums) if total is None]
        if empty:  # a speaker labelled before any of its speech could be embedded
            index = empty[0]
            self._sums[index] = embeddings.sum(axis=0)
            return f"S{index + 1}"
        mean = _unit(embeddings)
        if self._sums:
            similarities = [float(_unit(total) @ mean) for total in self._sums]  # type: ignore[arg-type]
            best = int(np.argmax(similarities))
            may_enrol = len(self._sums) < self.options.max_speakers and \
                len(windows) >= self.options.min_new_speaker_windows
            if similarities[best] >= self.options.new_speaker_similarity or not may_enrol:
                self._sums[best] = self._sums[best] + embeddings.sum(axis=0)  # type: ignore[operator]
                return f"S{best + 1}"
        return self._enrol(embeddings)

    def _enrol(self, embeddings: np.ndarray | None) -> str:
        self._sums.append(None if embeddings is None else embeddings.sum(axis=0))
        return f"S{len(self._sums)}"


class SpeakerLabels:
    """A session's part that labels its finals: the recent audio, the speaker encoder's windows, the tracker."""

    def __init__(self, config: StreamConfig, embedder: Embedder) -> None:
        self.tracker = SpeakerTracker(config)
        self._embedder = embedder
        self._chunks: list[torch.Tensor] = []
        self._first = 0  # stream sample of the first kept sample
        self._kept = 0

    def push(self, pcm: torch.Tensor) -> None:
        """16 kHz audio, in order; what is older than HISTORY_S is let go."""
        self._chunks.append(pcm)
        self._kept += len(pcm)
        limit = int(HISTORY_S * SAMPLE_RATE)
        if self._kept > 2 * limit:  # cut in bulk: each sample is copied about once
            audio = torch.cat(self._chunks)[-limit:]
            self._first += self._kept - len(audio)
            self._chunks, self._kept = [audio], len(audio)

    def label(self, final: Final) -> Final:
        """The final, with its speakers."""
        if not final.words or not self._chunks:
            return self.tracker.label(final, [])
        first = max(self._first, round(final.words[0].start * SAMPLE_RATE))
        end = round(final.words[-1].end * SAMPLE_RATE)
        audio = torch.cat(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [audio]
        speech = audio[first - self._first : max(first, end) - self._first]
        return self.tracker.label(final, self._embedder(speech, first / SAMPLE_RATE))
