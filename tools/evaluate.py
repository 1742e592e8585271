"""Scoring transcripts against references: manifests, Whisper's text normalisation, word error rate."""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

if TYPE_CHECKING:
    from captioner.model.whisper import Model

__all__ = ["Clip", "read_manifest", "normalize_text", "WordErrors", "word_errors", "lost_at_end", "percentile",
           "evaluate"]


@dataclass(frozen=True)
class Clip:
    id: str
    audio: Path  # absolute path
    text: str  # reference transcript
    duration: float  # seconds
    corpus: str
    kind: str  # short | long | hard
    language: str = "en"  # spoken language (ISO 639-1)


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
                        language=entry.get("language", "en"),
                    )
                )
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{number}: not a manifest entry ({e})") from e
    return clips[:limit] if limit is not None else clips


@functools.lru_cache(maxsize=2)
def _normalizer(english: bool) -> EnglishTextNormalizer | BasicTextNormalizer:
    return EnglishTextNormalizer() if english else BasicTextNormalizer()


def normalize_text(text: str, language: str = "en") -> str:
    """Whisper's normalisation: for English case, punctuation, spelled numbers, spellings and contractions;
    for other languages its basic one (case, punctuation and symbols)."""
    return _normalizer(language == "en")(text)


@dataclass(frozen=True)
class WordErrors:
    errors: int  # substitutions + deletions + insertions
    words: int  # reference words

    def __add__(self, other: "WordErrors") -> "WordErrors":
        return WordErrors(self.errors + other.errors, self.words + other.words)

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else 0.0


def word_errors(reference: str, hypothesis: str, language: str = "en") -> WordErrors:
    """Word errors of hypothesis against reference, both normalised first (as text in `language`)."""
    ref, hyp = normalize_text(reference, language), normalize_text(hypothesis, language)
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


def evaluate(model: Model, manifest: Path, limit: int | None, beam: int, out: Path) -> int:
    """`captioner eval`: offline WER (and real-time factor) over a manifest, per corpus; results to `out`."""
    from tqdm import tqdm

    from captioner.stream.audio import SAMPLE_RATE, load_audio

    from .transcribe import TranscribeOptions, transcribe

    clips = read_manifest(manifest, limit)
    rows = []
    total = WordErrors(0, 0)
    by_corpus: dict[str, WordErrors] = {}
    audio_seconds = compute_seconds = 0.0
    progress = tqdm(clips, unit="clip", file=sys.stderr)
    for clip in progress:
        audio = load_audio(clip.audio)
        started = time.perf_counter()
        text = transcribe(model, audio, TranscribeOptions(beam_size=beam, language=clip.language)).text
        elapsed = time.perf_counter() - started
        errors = word_errors(clip.text, text, clip.language)
        total += errors
        by_corpus[clip.corpus] = by_corpus.get(clip.corpus, WordErrors(0, 0)) + errors
        audio_seconds += len(audio) / SAMPLE_RATE
        compute_seconds += elapsed
        rows.append({"id": clip.id, "corpus": clip.corpus, "language": clip.language, "reference": clip.text,
                     "hypothesis": text, "wer": errors.wer, "errors": errors.errors, "words": errors.words,
                     "audio_s": len(audio) / SAMPLE_RATE, "compute_s": elapsed})
        progress.set_postfix(wer=f"{100 * total.wer:.1f}%", rtf=f"{compute_seconds / audio_seconds:.3f}")
    summary = {
        "model": model.name, "checksum": model.checksum, "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device), "beam": beam, "clips": len(rows), "wer": total.wer,
        "rtf": compute_seconds / audio_seconds if audio_seconds else 0.0, "audio_s": audio_seconds,
        "corpora": {name: {"wer": e.wer, "words": e.words} for name, e in sorted(by_corpus.items())},
    }
    out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    print(f"WER {100 * total.wer:.2f}% over {len(rows)} clips ({total.words} words), "
          f"real-time factor {summary['rtf']:.3f}")
    for name, e in sorted(by_corpus.items()):
        print(f"  {100 * e.wer:6.2f}%  {name} ({e.words} words)")
    print(f"results: {out}")
    return 0
