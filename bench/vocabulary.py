"""Per-stream vocabulary: WER, U-WER and B-WER with and without each clip's biasing list.

    python bench/vocabulary.py [--biasing ../shared/eval/biasing_100.jsonl] [--limit N] [--systems ...]
        [--set keyword_bonus=3.0 ...]

The 50 LibriSpeech test-other clips of ../shared/eval/biasing_100.jsonl each come with `rare_words`
(the reference's rare words) and a `biasing_list` (those words and distractors, about 100). Scored
as Le et al. (Interspeech 2021) do: after Whisper's English normalisation, errors on reference words
that are in the clip's rare words count towards B-WER (an inserted word too, when it is in the list),
the others towards U-WER; WER counts both.

Systems, all on tiny.en in the same run:
- ours, ours+keywords: streaming finals of one session per clip on the simulated real-time clock
  (tools/simulate.py), without and with the list as the stream's keywords (decoder/vocabulary.py);
- fw, fw+hotwords, fw+prompt: faster-whisper float32 beam 5 offline, without a list, with the list
  as `hotwords`, and with it as `initial_prompt` (each as ", "-joined words).
Results go to bench/results/vocabulary.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import harness
import jiwer
import torch

from captioner.model.loading import default_model_path
from captioner.stream.config import StreamConfig, parse_overrides
from captioner.stream.engine import Engine
from captioner.stream.events import Final
from captioner.stream.jobs import Speech
from captioner.tools.evaluate import normalize_text
from captioner.tools.simulate import simulate

SYSTEMS = ["ours", "ours+keywords", "fw", "fw+hotwords", "fw+prompt"]


def score(reference: str, hypothesis: str, rare: list[str], listed: list[str]) -> dict[str, int]:
    """Errors and word counts, split into biased (B) and unbiased (U) words."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    biased = {w for word in rare for w in normalize_text(word).split()}
    in_list = {w for word in listed for w in normalize_text(word).split()}
    ref_words, hyp_words = ref.split(), hyp.split()
    counts = {"b_words": sum(w in biased for w in ref_words), "u_words": sum(w not in biased for w in ref_words),
              "b_errors": 0, "u_errors": 0}
    if not ref_words:
        return counts
    if not hyp_words:
        counts["b_errors"], counts["u_errors"] = counts["b_words"], counts["u_words"]
        return counts
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        if chunk.type == "equal":
            continue
        if chunk.type == "insert":
            for w in hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx]:
                counts["b_errors" if w in in_list else "u_errors"] += 1
            continue
        for w in ref_words[chunk.ref_start_idx : chunk.ref_end_idx]:  # substitute or delete
            counts["b_errors" if w in biased else "u_errors"] += 1
    return counts


def rates(counts: list[dict[str, int]]) -> dict[str, float]:
    total = {key: sum(c[key] for c in counts) for key in counts[0]}
    words = total["b_words"] + total["u_words"]
    return {"wer": (total["b_errors"] + total["u_errors"]) / words, "u_wer": total["u_errors"] / total["u_words"],
            "b_wer": total["b_errors"] / total["b_words"], **total}


def ours(config: StreamConfig, keywords: bool, threads: int) -> Callable[[torch.Tensor, list[str]], str]:
    engine = Engine(harness.load(None, "cpu", threads), config)

    def run(audio: torch.Tensor, listed: list[str]) -> str:
        speech = Speech("en", keywords=tuple(listed) if keywords else ())
        (timed,), _ = simulate(engine, [audio], speeches=[speech])
        return " ".join(e.text for _, e in timed.events if isinstance(e, Final) and e.text)

    return run


def faster_whisper(mode: str, threads: int) -> Callable[[torch.Tensor, list[str]], str]:
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(default_model_path()), device="cpu", compute_type="float32", cpu_threads=threads)

    def run(audio: torch.Tensor, listed: list[str]) -> str:
        words = ", ".join(listed)
        extra = {"hotwords": words} if mode == "hotwords" else {"initial_prompt": words} if mode == "prompt" else {}
        segments, _ = fw.transcribe(audio.numpy(), beam_size=5, language="en", vad_filter=False, **extra)
        return "".join(s.text for s in segments).strip()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--biasing", type=Path, default=harness.EVAL / "biasing_100.jsonl")
    parser.add_argument("--manifest", type=Path, default=harness.EVAL / "manifest.jsonl")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="StreamConfig overrides")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "vocabulary.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = {c.id: c for c in harness.read_clips(args.manifest)}
    lists = [json.loads(line) for line in args.biasing.read_text().splitlines() if line][: args.limit]
    audios = harness.read_audio(clips[entry["id"]] for entry in lists)
    config = StreamConfig(**parse_overrides(args.set))
    report: dict = {"meta": harness.metadata(threads=args.threads, clips=len(lists), config=args.set), "systems": {}}
    for system in args.systems:
        run = ours(config, system == "ours+keywords", args.threads) if system.startswith("ours") else \
            faster_whisper(system.partition("+")[2], args.threads)
        counts, texts, started = [], {}, time.perf_counter()
        for entry in lists:
            texts[entry["id"]] = run(audios[entry["id"]], entry["biasing_list"])
            counts.append(score(clips[entry["id"]].text, texts[entry["id"]], entry["rare_words"],
                                entry["biasing_list"]))
        report["systems"][system] = {**rates(counts), "seconds": round(time.perf_counter() - started, 1),
                                     "texts": texts}
        print(system, {k: round(v, 4) for k, v in rates(counts).items()}, flush=True)
    harness.write_json(args.out, report)
    print("\n" + harness.table(["system", "WER", "U-WER", "B-WER"], (
        [system, f"{100 * r['wer']:.1f} %", f"{100 * r['u_wer']:.1f} %", f"{100 * r['b_wer']:.1f} %"]
        for system, r in report["systems"].items())))


if __name__ == "__main__":
    main()
