"""Coverage of a final by its words, both ways: voiced audio that no word covers, and words that no audio backs.

Whisper can stop a segment's decoding early (end-of-text after a full stop, however much speech
follows), and it can read on past the speech (the segment's first words again, aligned with zero
duration at its end, or words placed in silence). Both show when the final's word times (from the
alignment) are laid over the segment's voice activity:

- a stretch of at least `min_gap_s` voiced seconds between two words or after the last one is
  speech the final dropped: the decoding goes on from there (`first_gap`);
- a word the alignment put wholly in silence, next to voiced audio that no word covers, was said
  there: it is moved onto that audio (`retime`; Whisper's alignment often squeezes a segment's
  first word into the pause after it);
- words wholly in silence, a run of two or more (near) zero-length words at the end (three
  anywhere), and a run of words that repeats earlier words (of the context or the segment) over
  next to no voiced audio say what nobody said (`unbacked`). A single short word may align to
  zero length inside speech: that alone is kept.

Pure functions over word timings and speech probabilities; the engine runs the decoding passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from captioner.decoder.rules import PUNCTUATION, is_punctuation
from captioner.decoder.timing import WordTiming

from .vad import WINDOW_SECONDS

__all__ = ["SpeechActivity", "Coverage", "first_gap", "uncovered_s", "unbacked", "retime"]

SLACK_S = 0.06  # word times from the alignment are good to a few 20 ms steps
MIN_WORD_S = 0.1  # voiced audio shorter than this holds no word of its own (a click, a breath)
ZERO_S = 0.02  # a word this short (one alignment step) has next to no audio of its own
ZERO_RUN = 3  # this many such words in a row anywhere (two at the end) are not speech
REPEAT_WORDS = 4  # a run of this many words or more that says again what earlier words said...
REPEAT_VOICED_S = 0.1  # ...over less voiced audio than this per word is a decoding loop


@dataclass(frozen=True)
class SpeechActivity:
    """Speech probabilities of consecutive voice-activity windows, on the words' clock."""

    probabilities: tuple[float, ...]  # one per window, in order
    start_s: float  # start of the first window
    threshold: float  # a window at or above this is voiced
    release: float  # a window below this is silence
    window_s: float = WINDOW_SECONDS

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.probabilities) * self.window_s

    def _windows(self, lo: float, hi: float) -> range:
        """Windows that overlap [lo, hi]."""
        first = max(0, int((lo - self.start_s) // self.window_s))
        last = min(len(self.probabilities), int((hi - self.start_s) // self.window_s) + 1)
        return range(first, last)

    def silent(self, lo: float, hi: float) -> bool:
        """Some window overlaps [lo, hi], and none of them reaches the release probability."""
        windows = self._windows(lo, hi)
        return bool(windows) and all(self.probabilities[i] < self.release for i in windows)

    def voiced_runs(self, lo: float, hi: float) -> list[tuple[float, float]]:
        """(start, end) of each run of consecutive voiced windows inside [lo, hi] (clipped to it)."""
        runs: list[tuple[float, float]] = []
        for i in self._windows(lo, hi):
            if self.probabilities[i] >= self.threshold:
                start = max(lo, self.start_s + i * self.window_s)
                end = min(hi, self.start_s + (i + 1) * self.window_s)
                if runs and runs[-1][1] >= start:
                    runs[-1] = (runs[-1][0], end)
                elif end > start:
                    runs.append((start, end))
        return runs

    def voiced_s(self, lo: float, hi: float) -> float:
        """Seconds of voiced windows inside [lo, hi] (windows clipped to it)."""
        return sum(end - start for start, end in self.voiced_runs(lo, hi))


@dataclass(frozen=True)
class Coverage:
    """What the coverage checks did to one final."""

    continuations: int = 0  # decoding passes after the first that were kept
    words_added: int = 0  # words those passes found
    words_removed: int = 0  # words no audio backs, removed
    unbacked_kept: int = 0  # words no audio backs, kept because partials had shown them as stable
    shortfall: int = 0  # words the last partial showed that the first decoding lacked, when substantial (else 0)


def retime(words: list[WordTiming], activity: SpeechActivity) -> list[WordTiming]:
    """The words, each one wholly in silence moved onto the run of voiced audio between its neighbours
    (the nearest, if several) that they leave uncovered; punctuation right after it moves with it.
    A word without such audio keeps its times (`unbacked` judges it)."""
    out = list(words)
    spoken = [k for k, w in enumerate(words) if not is_punctuation(w.word)]
    for n, k in enumerate(spoken):
        word = out[k]
        if not activity.silent(word.start - SLACK_S, word.end + SLACK_S):
            continue
        lo = out[spoken[n - 1]].end + SLACK_S if n else activity.start_s
        hi = out[spoken[n + 1]].start - SLACK_S if n + 1 < len(spoken) else activity.end_s
        runs = [run for run in activity.voiced_runs(lo, hi) if run[1] - run[0] >= MIN_WORD_S]
        if not runs:
            continue
        middle = (word.start + word.end) / 2
        start, end = min(runs, key=lambda run: max(run[0] - middle, middle - run[1], 0.0))
        out[k] = replace(word, start=round(start, 3), end=round(end, 3))
        j = k + 1
        while j < len(out) and is_punctuation(out[j].word):
            out[j] = replace(out[j], start=out[k].end, end=out[k].end)
            j += 1
    return out


def _gaps(words: list[WordTiming], activity: SpeechActivity) -> list[tuple[int, float]]:
    """(words before it, voiced seconds) of each stretch after a word that the next word (or nothing) does not cover."""
    words = retime(words, activity)
    out = []
    for k, word in enumerate(words):
        lo = word.end + SLACK_S
        hi = words[k + 1].start - SLACK_S if k + 1 < len(words) else activity.end_s
        if hi > lo:
            out.append((k + 1, activity.voiced_s(lo, hi)))
    return out


def first_gap(words: list[WordTiming], activity: SpeechActivity, min_gap_s: float, n_fixed: int = 0) -> int | None:
    """How many leading words precede the first stretch of at least min_gap_s voiced seconds that no word
    covers, after the first word and after the n_fixed words that cannot change; None when there is none."""
    return next((k for k, voiced in _gaps(words, activity) if k >= n_fixed and voiced >= min_gap_s), None)


def uncovered_s(words: list[WordTiming], activity: SpeechActivity) -> float:
    """Voiced seconds after the first word that no word covers."""
    return sum(voiced for _, voiced in _gaps(words, activity))


def unbacked(words: list[WordTiming], activity: SpeechActivity) -> set[int]:
    """Indices of the words that no audio backs (punctuation merged into its word, see module docstring): the
    silence test on the words as `retime` places them, the runs of zero-length and repeated words as aligned."""
    placed = retime(words, activity)
    out = {k for k, word in enumerate(placed) if activity.silent(word.start - SLACK_S, word.end + SLACK_S)}
    for start, stop in _zero_runs(words):
        if stop - start >= ZERO_RUN or (stop == len(words) and stop - start >= 2):
            out |= set(range(start, stop))
    return out | _repeated_runs(words, activity)


def _zero_runs(words: list[WordTiming]) -> list[tuple[int, int]]:
    """[start, stop) of each maximal run of consecutive words of (near) zero length."""
    runs, start = [], None
    for k, word in enumerate([*words, None]):
        if word is not None and word.end - word.start <= ZERO_S:
            start = k if start is None else start
        elif start is not None:
            runs.append((start, k))
            start = None
    return runs


def _repeated_runs(words: list[WordTiming], activity: SpeechActivity) -> set[int]:
    """Words of each run of REPEAT_WORDS or more that says again what earlier words said and lies over less
    than REPEAT_VOICED_S voiced seconds per word (a decoder reading the context's or the segment's audio again)."""
    said = [w.word.strip().strip(PUNCTUATION).lower() for w in words]
    out: set[int] = set()
    start = REPEAT_WORDS
    while start <= len(words) - REPEAT_WORDS:
        n = _repeat_length(said, start)
        lo, hi = words[start].start - SLACK_S, words[start + n - 1].end + SLACK_S if n else 0.0
        if n and activity.voiced_s(lo, hi) < REPEAT_VOICED_S * n:
            out |= set(range(start, start + n))
            start += n
        else:
            start += 1
    return out


def _repeat_length(said: list[str], start: int) -> int:
    """The longest run of at least REPEAT_WORDS words from `start` that also occurs, whole, before it (0: none)."""
    best = 0
    for earlier in range(start - REPEAT_WORDS + 1):
        n = 0
        while start + n < len(said) and earlier + n < start and said[earlier + n] == said[start + n] and said[start + n]:
            n += 1
        best = max(best, n)
    return best if best >= REPEAT_WORDS else 0
