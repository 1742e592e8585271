"""Every word heard, once: clips streamed through a real server, checked for speech dropped and words without speech.

    python bench/coverage.py [--clients 1 8] [--manifest ../shared/eval/manifest.jsonl] [--limit N]
                             [--url ws://...] [--threads 2] [--runs 1] [--only CLIP_ID] [--out FILE]

Without --url it starts `captioner serve` on a free loopback port (default model and settings) and
stops it afterwards. With N clients, each client streams every clip of the manifest, one
connection per clip (100 ms frames at real-time pace, then `{"type": "end"}`), starting at a
different clip (client k at clip k * len / N), so every clip is heard N times under N-fold load.
For each clip's finals it reports:

- WER of the joined finals against the reference (Whisper's English normalisation);
- reference words lost at the end: the trailing run of reference words with no hypothesis word
  (deletions after the last aligned word);
- finals that end in two or more words of zero duration;
- final words wholly in silence: no 32 ms window within 0.06 s of the word reaches Silero's
  release probability (0.35), by an offline pass of the same voice-activity network over the clip;
- the server's process CPU seconds (from its /metrics) per second of audio streamed.

Writes per-clip results to --out (JSON) and prints a summary per client count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import harness
import numpy as np
import torch

from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.vad import WINDOW_SECONDS, VoiceActivity
from captioner.tools.evaluate import lost_at_end, percentile, word_errors
from captioner.tools.replay import replay

RELEASE = 0.35  # Silero probability below which a window is silence (the endpointer's vad_release)
SLACK_S = 0.06  # word times from the alignment are good to a few 20 ms steps


def speech_probabilities(audio: torch.Tensor) -> list[float]:
    return VoiceActivity().push(audio)


def in_silence(word: dict, probabilities: list[float]) -> bool:
    lo = max(0, int((word["start"] - SLACK_S) / WINDOW_SECONDS))
    hi = int((word["end"] + SLACK_S) / WINDOW_SECONDS) + 1
    return max(probabilities[lo:hi], default=0.0) < RELEASE


def zero_tail(final: dict) -> bool:
    words = final.get("words") or []
    return len(words) >= 2 and all(w["end"] - w["start"] <= 0.0 for w in words[-2:])


async def run_client(url: str, order: list, audios: dict, results: list, index: int) -> None:
    for clip in order:
        got = await replay(url, audios[clip.id].numpy(), speed=1.0)
        results.append({"client": index, "clip": clip.id, "finals": got.finals, "close": got.close_code,
                        "lags": got.lags("final")})


async def run_level(url: str, clips: list, audios: dict, clients: int) -> list[dict]:
    results: list[dict] = []
    tasks = []
    for k in range(clients):
        first = k * len(clips) // clients
        order = clips[first:] + clips[:first]
        tasks.append(asyncio.create_task(run_client(url, order, audios, results, k)))
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks)
    return results


def score(results: list[dict], clips: dict, vad: dict) -> dict:
    errors = words = lost = zero = silent = n_words = 0
    lost_clips, zero_finals, silent_words = [], [], []
    lags = []
    for r in results:
        clip = clips[r["clip"]]
        text = " ".join(f["text"] for f in r["finals"] if f["text"])
        e = word_errors(clip.text, text)
        errors, words = errors + e.errors, words + e.words
        r["text"], r["errors"] = text, e.errors
        r["lost"] = n_lost = lost_at_end(clip.text, text)
        if n_lost:
            lost += n_lost
            lost_clips.append((r["clip"], r["client"], n_lost))
        for final in r["finals"]:
            if zero_tail(final):
                zero += 1
                zero_finals.append((r["clip"], final["text"][-60:]))
            for word in final.get("words") or []:
                n_words += 1
                if in_silence(word, vad[r["clip"]]):
                    silent += 1
                    silent_words.append((r["clip"], word["word"], word["start"], word["end"]))
        lags += r["lags"]
    return {
        "clips": len(results), "wer": round(errors / max(words, 1), 4), "errors": errors, "ref_words": words,
        "lost_at_end": lost, "clips_with_loss": lost_clips, "zero_duration_tails": zero,
        "zero_tail_finals": zero_finals,
        "final_words": n_words, "words_in_silence": silent, "silent_words": silent_words[:50],
        "final_lag_p50": percentile(lags, 50), "final_lag_p95": percentile(lags, 95),
        "closes": sorted({r["close"] for r in results}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--manifest", type=Path, default=harness.default_manifest())
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="clip ids to stream (default: all)")
    parser.add_argument("--runs", type=int, default=1, help="repeat each level this many times")
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--threads", type=int, default=2, help="the started server's inference threads")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "coverage.json")
    args = parser.parse_args()
    clips = harness.read_clips(args.manifest, args.limit)
    if args.only:
        clips = [c for c in clips if c.id in args.only]
    audios = harness.read_audio(clips)
    with torch.inference_mode():
        vad = {c.id: speech_probabilities(audios[c.id]) for c in clips}
    options = ["--threads", str(args.threads), "--device", "cpu", "--max-sessions", "64"]
    report = {"meta": harness.metadata(
        url=args.url or f"captioner serve {' '.join(options)} (started by bench/coverage.py)",
        manifest=str(args.manifest)), "levels": []}
    with harness.serving(options, args.url) as url:
        for clients in args.clients:
            for run in range(args.runs):
                cpu = harness.server_cpu_s(url)
                results = asyncio.run(run_level(url, clips, audios, clients))
                summary = score(results, {c.id: c for c in clips}, vad)
                if cpu is not None and (after := harness.server_cpu_s(url)) is not None:  # per audio s, all clients
                    audio_s = sum(len(audios[r["clip"]]) for r in results) / SAMPLE_RATE
                    summary["server_cpu_s_per_audio_s"] = round((after - cpu) / audio_s, 4)
                report["levels"].append({"clients": clients, "run": run, "summary": summary, "results": results})
                brief = {k: v for k, v in summary.items() if k not in ("silent_words", "zero_tail_finals")}
                print(json.dumps({"clients": clients, "run": run, **brief}), flush=True)
    harness.write_json(args.out, report)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
