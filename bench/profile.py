"""Where one live stream's CPU time goes: encoder, partial decoding, finals, alignment, coverage.

    python bench/profile.py [--clips 20] [--set FIELD=VALUE ...]

The first --clips clips of ../shared/eval (samples/ when absent), joined with 1 s of silence into
one continuous stream (so that segments have earlier segments as context, as in a live meeting),
go through one Session in 100 ms chunks on one torch thread, as one of the server's workers runs
them. Prints CPU seconds per audio second in total and per part, and the WER of the finals.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch

import captioner.stream.engine as engine_module
from captioner.model.loading import load_model
from captioner.stream.audio import load_audio
from captioner.stream.config import StreamConfig, parse_overrides
from captioner.stream.engine import Engine
from captioner.stream.events import Final
from captioner.stream.session import Session
from captioner.tools.evaluate import read_manifest, word_errors

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = [ROOT.parent / "shared" / "eval" / "manifest.jsonl", ROOT / "samples" / "manifest.jsonl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="StreamConfig overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(device="cpu")
    engine = Engine(model, StreamConfig(**parse_overrides(args.set)))
    spent: collections.Counter[str] = collections.Counter()
    inside: list[str] = []  # a timed call made inside another counts for the outer one

    def timed(owner: object, name: str, label: str, exact_label: str = "") -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            if inside:
                return inner(*a, **k)
            key = exact_label if k.get("exact") and exact_label else label
            inside.append(key)
            start = time.process_time()
            try:
                return inner(*a, **k)
            finally:
                spent[key] += time.process_time() - start
                inside.pop()

        setattr(owner, name, wrapper)

    timed(engine, "encode", "encoder + cross-attention k/v")
    timed(engine_module, "decode_with_draft", "partial decoding", "final decoding")  # exact: a greedy final
    timed(engine, "_cover", "coverage (decoding again)")
    timed(model, "decode", "final decoding")
    timed(model, "align", "final word alignment")
    manifest = next(m for m in MANIFESTS if m.exists())
    clips = read_manifest(manifest, limit=args.clips)
    gap = torch.zeros(16000)
    audio = torch.cat([piece for c in clips for piece in (load_audio(c.audio), gap)])
    session = Session.for_engine(engine)
    started = time.process_time()
    events = []
    for i in range(0, len(audio), 1600):
        events += session.feed(audio[i : i + 1600])
    events += session.end()
    total = time.process_time() - started
    audio_s = len(audio) / 16000
    text = " ".join(e.text for e in events if isinstance(e, Final))
    print(f"{len(clips)} clips, {audio_s:.0f} s of audio, overrides {parse_overrides(args.set) or 'none'}")
    print(f"CPU s per audio s: {total / audio_s:.3f} in all")
    for label, seconds in spent.most_common():
        print(f"  {label:32s} {seconds / audio_s:.3f}")
    print(f"  {'the rest (features, VAD, session)':32s} {(total - sum(spent.values())) / audio_s:.3f}")
    print(f"WER {word_errors(' '.join(c.text for c in clips), text).wer:.1%}")


if __name__ == "__main__":
    main()
