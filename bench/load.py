"""Real-time load on a real server: N concurrent clients on loopback, each streaming real speech at real-time pace.

    python bench/load.py [--streams 1 2 4 8 12] [--duration 60] [--threads 2] [--url ws://...]

Without --url it starts `captioner serve` on a free loopback port (the default model and
settings, --threads cores) and stops it afterwards. Each client streams clips of
../shared/eval (samples/ when absent), one after another with 1 s of silence between them, for
about --duration seconds, with `captioner replay`'s client. Lag is receive time minus the wall
time at which the audio of the caption's end was sent. A stream "falls behind" when its finals'
lag grows over the run (last final's lag more than 2 s above its first's) or it ends with an
error. Writes bench/results/load.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from captioner.server.replay import replay
from captioner.stream.audio import load_audio
from captioner.stream.evaluate import WordErrors, read_manifest, word_errors

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = [ROOT.parent / "shared" / "eval" / "manifest.jsonl", ROOT / "samples" / "manifest.jsonl"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def programmes(clips, n: int, duration: float) -> list[tuple[np.ndarray, str]]:
    """n different streams of whole clips (joined by 1 s of silence), each at least `duration` long."""
    audios = {c.id: load_audio(c.audio).numpy() for c in clips}
    gap = np.zeros(16000, dtype=np.float32)
    out = []
    for k in range(n):
        pieces, texts, length, i = [], [], 0.0, k * 7
        while length < duration:
            clip = clips[i % len(clips)]
            pieces += [audios[clip.id], gap]
            texts.append(clip.text)
            length += len(audios[clip.id]) / 16000 + 1
            i += 1
        out.append((np.concatenate(pieces), " ".join(texts)))
    return out


async def run_level(url: str, streams: list[tuple[np.ndarray, str]]) -> dict:
    async def one(k: int, audio: np.ndarray):
        await asyncio.sleep(0.25 * k)  # a short ramp, as callers do not all join in the same instant
        return await replay(url, audio)

    results = await asyncio.gather(*(one(k, a) for k, (a, _) in enumerate(streams)))
    finals, partials, behind, errors, total = [], [], 0, 0, WordErrors(0, 0)
    for result, (_, reference) in zip(results, streams):
        lags = result.lags("final")
        finals += lags
        partials += result.lags("partial")
        errors += result.close_code != 1000
        behind += result.close_code != 1000 or (len(lags) > 1 and lags[-1] - lags[0] > 2.0)
        total += word_errors(reference, result.text)
    return {"streams": len(streams), "final_lag_p50": percentile(finals, 50), "final_lag_p95": percentile(finals, 95),
            "final_lag_max": max(finals, default=float("nan")), "partial_lag_p95": percentile(partials, 95),
            "wer": total.wer, "behind": behind, "errors": errors,
            "partials_per_stream_s": len(partials) / sum(len(a) / 16000 for a, _ in streams)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "captioner.server.cli", "serve", "--port", str(port), "--threads", str(threads),
         "--max-sessions", "64", "--log-format", "text"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return server, f"ws://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not become ready within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8, 12])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of audio per stream")
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    manifest = next(m for m in MANIFESTS if m.is_file())
    clips = [c for c in read_manifest(manifest) if c.kind != "hard" and c.duration < 30] or read_manifest(manifest)
    server, url = (None, args.url) if args.url else start_server(args.threads)
    rows = []
    try:
        for n in args.streams:
            row = asyncio.run(run_level(url, programmes(clips, n, args.duration)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    meta = {"machine": platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
            "duration_s": args.duration, "manifest": str(manifest), "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    keys = ["streams", "final_lag_p50", "final_lag_p95", "final_lag_max", "partial_lag_p95", "wer", "behind", "errors"]
    print("\n| " + " | ".join(keys) + " |\n" + "|---" * len(keys) + "|")
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys) + " |")
    print(f"\nmedian partials per stream-second: {statistics.median(r['partials_per_stream_s'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
