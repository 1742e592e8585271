"""Spoken-language detection: how often it is right, and after how much speech.

    python bench/language.py [--model base]
        [--manifests ../shared/eval-multi/manifest.jsonl ../shared/eval/manifest.jsonl]

For each clip, Whisper's detection (decoder/language.py) on its first 1, 2, 3 and 5 seconds and on
the whole clip (at most 30 s), each encoded as the streaming core encodes (the audio there is, plus
StreamConfig.padding_s of padding frames). Also reports how many of those clips were sure enough to
settle a segment's language (StreamConfig.language_confidence) at each length. The expected language
is the manifest's `language` (English where it has none). Results go to bench/results/language.json
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import harness
import torch

from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.stream.config import StreamConfig
from captioner.stream.features import log_mel_spectrogram
from captioner.tools.transcribe import encode_window

LENGTHS = [1.0, 2.0, 3.0, 5.0, 30.0]  # seconds of the clip; 30: the whole clip


def detect(model, audio: torch.Tensor) -> dict[str, float]:
    mel = log_mel_spectrogram(audio, model.n_mels)[:, : model.max_frames]
    memory, _ = encode_window(model, mel, StreamConfig().padding_s)
    return model.detect_language(memory)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_model_arguments(parser, model="base", threads=2)
    parser.add_argument("--manifests", nargs="+", type=Path,
                        default=[harness.SHARED / "eval-multi" / "manifest.jsonl", harness.EVAL / "manifest.jsonl"])
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "language.json")
    args = parser.parse_args()
    model = harness.load_args(args)
    confidence = StreamConfig().language_confidence
    report: dict = {"meta": harness.metadata(model=args.model, confidence=confidence), "sets": {}}
    for manifest in args.manifests:
        clips = harness.read_clips(manifest)
        rows = {length: {"right": 0, "sure": 0, "sure_right": 0} for length in LENGTHS}
        wrong: list[tuple[str, float, str, float]] = []
        started = time.perf_counter()
        for clip in clips:
            audio = load_audio(clip.audio)
            for length in LENGTHS:
                ranked = detect(model, audio[: round(length * SAMPLE_RATE)])
                top, probability = next(iter(ranked.items()))
                row = rows[length]
                row["right"] += top == clip.language
                row["sure"] += probability >= confidence
                row["sure_right"] += probability >= confidence and top == clip.language
                if top != clip.language:
                    wrong.append((clip.id, length, top, round(probability, 3)))
        report["sets"][manifest.parent.name] = {"clips": len(clips), "by_length": rows, "wrong": wrong,
                                                 "seconds": round(time.perf_counter() - started, 1)}
    harness.write_json(args.out, report)
    header = ["set", "clips", *(f"first {n:.0f} s" if n < 30 else "whole clip" for n in LENGTHS)]
    print(harness.table(header, (
        [name, result["clips"], *(f"{r['right']} right, {r['sure']} sure ({r['sure_right']} of them right)"
                                  for r in result["by_length"].values())]
        for name, result in report["sets"].items())))


if __name__ == "__main__":
    main()
