"""Where one live stream's CPU time goes: encoder, partial decoding, finals, alignment, coverage.

    python bench/profile.py [--clips 20] [--max-clip-s S --every N] [--set FIELD=VALUE ...] [--model tiny.en]
        [--threads 1] [--dtype D] [--int8 auto|decoder|all|off] [--no-partials]

The first --clips clips of ../shared/eval (samples/ when absent), joined with 1 s of silence into
one continuous stream (so that segments have earlier segments as context, as in a live meeting),
go through one Session in 100 ms chunks on one torch thread, as one of the server's workers runs
them. Prints CPU seconds per audio second in total and per part of the engine's work, as its
on_timing hook reports them (a greedy final, final_beam=1, counts as final decoding), and the WER
of the finals. --no-partials: a stream that asks for finals only (`partials=false`).
"""

from __future__ import annotations

import argparse
import collections
import time

import harness
import torch

from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.stream.config import StreamConfig, parse_overrides
from captioner.stream.engine import Engine
from captioner.stream.events import Final
from captioner.stream.jobs import Speech
from captioner.stream.session import Session
from captioner.tools.evaluate import word_errors

CHUNK = SAMPLE_RATE // 10  # 100 ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=20, help="the first N clips (of those --max-clip-s and --every "
                        "pick)")
    harness.add_clip_arguments(parser)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="StreamConfig overrides")
    parser.add_argument("--no-partials", action="store_true", help="finals only, as a stream with partials=false")
    harness.add_model_arguments(parser)
    args = parser.parse_args()
    spent: collections.Counter[str] = collections.Counter()  # CPU seconds per part

    def on_timing(part: str, cpu_s: float) -> None:
        spent[part] += cpu_s

    model = harness.load_args(args)
    engine = Engine(model, StreamConfig(**parse_overrides(args.set)), on_timing=on_timing)
    clips = harness.pick_clips(harness.read_clips(), args)[: args.clips]
    gap = torch.zeros(SAMPLE_RATE)
    audio = torch.cat([piece for c in clips for piece in (load_audio(c.audio), gap)])
    session = Session.for_engine(engine, speech=Speech(engine.tokenizer.language, partials=not args.no_partials))
    started = time.process_time()
    events = []
    for i in range(0, len(audio), CHUNK):
        events += session.feed(audio[i : i + CHUNK])
    events += session.end()
    total = time.process_time() - started
    audio_s = len(audio) / SAMPLE_RATE
    text = " ".join(e.text for e in events if isinstance(e, Final))
    print(f"{len(clips)} clips, {audio_s:.0f} s of audio, overrides {parse_overrides(args.set) or 'none'}"
          f"{', finals only' if args.no_partials else ''}")
    print(f"CPU s per audio s: {total / audio_s:.3f} in all")
    for part, seconds in spent.most_common():
        print(f"  {part:32s} {seconds / audio_s:.3f}")
    print(f"  {'the rest (features, VAD, session)':32s} {(total - sum(spent.values())) / audio_s:.3f}")
    print(f"WER {word_errors(' '.join(c.text for c in clips), text).wer:.1%}")


if __name__ == "__main__":
    main()
