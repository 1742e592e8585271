"""Which language each job decodes in: the stream's, or (language=auto) the one its audio is detected to speak."""

from __future__ import annotations

from collections.abc import Sequence

from captioner.model.whisper import Model

from .encoding import Encoded
from .jobs import Job

__all__ = ["job_languages"]


def job_languages(model: Model, confidence: float, audio: Encoded, jobs: Sequence[Job]) -> list[tuple[str, float | None]]:
    """Each job's language, and its probability where the job asked for it to be detected (language None).

    The detection's most probable language wins, unless the job has a fallback (the stream's language so
    far) and the detection is less sure than `confidence`: a segment switches language only when the
    detection is confident, and short or unclear audio does not flip it.
    """
    out: list[tuple[str, float | None]] = [(job.language or "", None) for job in jobs]
    detect = [i for i, job in enumerate(jobs) if job.language is None]
    if detect:
        part = audio.pick(detect)
        for i, ranked in zip(detect, model.detect_language(part.memory, part.lengths, part.cross)):
            top, probability = next(iter(ranked.items()))
            fallback = jobs[i].fallback_language
            if probability >= confidence or fallback is None:
                out[i] = (top, probability)
            else:
                out[i] = (fallback, ranked.get(fallback, 0.0))
    return out
