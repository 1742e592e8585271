"""Scoring transcripts against references: manifests, Whisper's English normalisation, word error rate."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

__all__ = ["Clip", "read_manifest", "normalize_text", "WordErrors", "word_errors", "lost_at_end", "percentile"]


@dataclass(frozen=True)
class Clip:
    id: str
    audio: Path  # absolute path
    text: str  # reference transcript
    duration: float  # seconds
    corpus: str
    kind: str  # short | long | hard


def read_manifest(path: str | Path, limit: int | None = None) -> list[Clip]:
    """Clips of a JSON-lines manifest (id, audio relative to the manifest, text, duration_s, corpus, kind)."""
    path = Path(path)
    clips = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                clips.append(
                    Clip(
                        id=entry["id"],
                        audio=(path.parent / entry["audio"]).resolve(),
                        text=entry["text"],
                        duration=float(entry.get("duration_s", 0.0)),
                        corpus=entry.get("corpus", ""),
                        kind=entry.get("kind", ""),
                    )
                )
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{number}: not a manifest entry ({e})") from e
    return clips[:limit] if limit is not None else clips


@functools.lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize_text(text: str) -> str:
    """Whisper's English normalisation: case, punctuation, spelled numbers, spellings, contractions."""
    return _normalizer()(text)


@dataclass(frozen=True)
class WordErrors:
    errors: int  # substitutions + deletions + insertions
    words: int  # reference words

    def __add__(self, other: "WordErrors") -> "WordErrors":
        return WordErrors(self.errors + other.errors, self.words + other.words)

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else 0.0


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Word errors of hypothesis against reference, both normalised first."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref.split():
        return WordErrors(len(hyp.split()), 0)
    if not hyp.split():
        return WordErrors(len(ref.split()), len(ref.split()))
    out = jiwer.process_words(ref, hyp)
    return WordErrors(out.substitutions + out.deletions + out.insertions, len(ref.split()))


def lost_at_end(reference: str, hypothesis: str) -> int:
    """Reference words after the last one the hypothesis matched or substituted (its trailing deletions),
    both normalised first: speech a transcript dropped at its end.

    One word heard for two ("comply" for "can fly") shows as a substitution and a deletion: when the last
    hypothesis word spells the two reference words together more closely than the one it substitutes,
    the deletion is that recognition error, not lost speech.
    """
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    if not ref or not hyp:
        return len(ref)
    chunks = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]
    last = chunks[-1]
    if last.type != "delete":
        return 0
    lost = last.ref_end_idx - last.ref_start_idx
    if len(chunks) > 1 and chunks[-2].type == "substitute":
        heard, said = hyp[chunks[-2].hyp_end_idx - 1], ref[chunks[-2].ref_end_idx - 1]
        if _edits(heard, said + ref[last.ref_start_idx]) < _edits(heard, said):
            lost -= 1
    return lost


def _edits(a: str, b: str) -> int:
    """Levenshtein distance between two words."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of values; None when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else None
