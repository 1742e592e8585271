"""Streaming sessions on a simulated real-time clock: the audio arrives at real-time pace, compute is charged.

Used by `captioner transcribe --stream` and bench/stream.py. The clock starts at 0 when the first
audio arrives; a chunk of audio becomes available when the clock reaches its end; each batch of
model work advances the clock by the wall time it took. So an event's time is when a real-time
client would have received it from a server that does only this work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from captioner.model.whisper import Model
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.batching import BatchPolicy, Due
from captioner.stream.config import StreamConfig
from captioner.stream.coverage import Coverage
from captioner.stream.engine import Engine
from captioner.stream.events import Event, Final, event_to_dict
from captioner.stream.jobs import Speech
from captioner.stream.session import Session

__all__ = ["Timed", "simulate", "stream_file"]


@dataclass
class Timed:
    """Everything one simulated stream produced."""

    events: list[tuple[float, Event]] = field(default_factory=list)  # (clock time, event)
    audio_s: float = 0.0
    encoder_positions: float = 0.0  # computed by partial updates and finals
    coverage: list[Coverage] = field(default_factory=list)  # what the coverage checks did to each final


def simulate(
    engine: Engine, audios: list[torch.Tensor], chunk_s: float = 0.1, sample_rate: int = SAMPLE_RATE,
    speeches: list[Speech] | None = None, floor_maxima: list[float | None] | None = None,
) -> tuple[list[Timed], float]:
    """Stream each audio through its own session, all in lockstep, batching their model work in the
    passes the server's scheduler would run (captioner.stream.batching). speeches: each stream's language,
    task and vocabulary (default: the model's language). floor_maxima: each stream's log-mel maximum known
    in advance (stream.features.clip_maximum of its whole audio: Whisper's offline floor, which a live
    stream cannot have; default: none, the live rule alone).

    Returns each stream's timed events and the total compute seconds (wall) charged.
    """
    speeches = speeches or [None] * len(audios)
    floor_maxima = floor_maxima or [None] * len(audios)
    sessions = [Session.for_engine(engine, sample_rate, speech=speech, floor_max=floor_max)
                for speech, floor_max in zip(speeches, floor_maxima, strict=True)]
    policy = BatchPolicy(engine.config, on_gpu=engine.on_gpu)
    out = [Timed(audio_s=len(a) / sample_rate) for a in audios]
    chunk = round(chunk_s * sample_rate)
    n_chunks = max((len(a) + chunk - 1) // chunk for a in audios)
    clock = compute = 0.0
    for index in range(n_chunks + 1):
        arrival = min((index + 1) * chunk_s, max(t.audio_s for t in out))
        clock = max(clock, arrival)
        for session, audio in zip(sessions, audios):
            if session.ended:
                continue
            piece = audio[index * chunk : (index + 1) * chunk]
            if len(piece):
                session.push(piece)
            if (index + 1) * chunk >= len(audio):
                session.push_end()
        while True:  # every stream arrives at real-time pace: how late it is is its backlog
            behind = policy.behind([s.backlog_s for s in sessions])
            shedding = policy.shedding(behind)
            due = [Due(k, job, s.backlog_s, s.ended) for k, s in enumerate(sessions)
                   if (job := s.next_job(shedding.skip_stale, shedding.min_update_gap_s)) is not None]
            if not due:
                break
            for batch in policy.passes(due, behind):
                started = time.perf_counter()
                results = engine.run([d.job for d in batch.due], batch.final_beam)
                elapsed = time.perf_counter() - started
                clock += elapsed
                compute += elapsed
                for d, result in zip(batch.due, results):
                    session, stream = sessions[d.key], out[d.key]
                    stream.encoder_positions += result.stats.get("encoder_positions", 0.0)
                    stream.events += [(clock, event) for event in session.complete(result)]
                    stream.coverage += [coverage for _, coverage in session.take_coverage()]
    return out, compute


def stream_file(model: Model, audio: torch.Tensor, strategy: str, chunk_ms: int, output: str,
                speech: Speech | None = None) -> str:
    """`captioner transcribe --stream`: the file through a streaming session on the simulated clock, as
    `output`: text, json (finals), jsonl (every event with its clock time), srt or vtt."""
    from .formats import cues_of, cues_to_srt, cues_to_vtt

    engine = Engine(model, StreamConfig(strategy=strategy))
    (timed,), _ = simulate(engine, [audio], chunk_s=chunk_ms / 1000, speeches=[speech] if speech else None)
    finals = [e for _, e in timed.events if isinstance(e, Final) and e.text]
    if output == "jsonl":
        return "".join(json.dumps({**event_to_dict(event), "t": round(t, 3)}) + "\n" for t, event in timed.events)
    if output in ("text", "json"):
        text = " ".join(f.text for f in finals)
        return text + "\n" if output == "text" else json.dumps(
            {"text": text, "finals": [event_to_dict(f) for f in finals]}, indent=1) + "\n"
    cues = cues_of([event_to_dict(f) for f in finals])
    return cues_to_srt(cues) if output == "srt" else cues_to_vtt(cues)
