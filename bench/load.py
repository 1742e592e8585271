"""Real-time load on a real server: N concurrent clients on loopback, each streaming real speech at real-time pace.

    python bench/load.py [--streams 1 2 4 8 12] [--duration 60] [--threads 2] [--device auto] [--model tiny.en]
        [--url ws://...]

Without --url it starts `captioner serve` on a free loopback port (--model, default settings,
--threads cores) and stops it afterwards. Every level is a `captioner soak` run
(tools/soak.py): each client streams clips of ../shared/eval (samples/ when absent) one after
another with 1 s of silence between them for --duration seconds. Lag is receive time minus the
wall time at which the audio of the caption's end was sent. A stream "falls behind" when its
finals' lag grows over the run (last final's lag more than 2 s above its first's) or it ends with
an error. Unlike `captioner soak --sweep` it runs every level, past the first that misses, and
writes the soak report (JSON, Markdown, plots) to bench/results/load/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from captioner.tools import soak
from captioner.tools.evaluate import read_manifest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = [ROOT.parent / "shared" / "eval" / "manifest.jsonl", ROOT / "samples" / "manifest.jsonl"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, device: str, model: str, max_sessions: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "captioner.tools.cli", "serve", "--port", str(port), "--threads", str(threads),
         "--device", device, "--model", model, "--max-sessions", str(max_sessions), "--log-format", "text"],
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
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="the started server's")
    parser.add_argument("--model", default="tiny.en", help="the started server's (a name or a path)")
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--manifest", type=Path, default=None, help="clips to stream (default: ../shared/eval)")
    parser.add_argument("--ramp", type=float, default=0.25, help="seconds between client starts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load",
                        help="report folder (soak's report: JSON, Markdown, plots)")
    args = parser.parse_args()
    manifest = args.manifest or next(m for m in MANIFESTS if m.is_file())
    clips = [c for c in read_manifest(manifest) if c.kind != "hard" and c.duration < 30] or read_manifest(manifest)
    sessions = max(64, *args.streams)
    server, url = (None, args.url) if args.url else start_server(args.threads, args.device, args.model, sessions)
    levels = []
    try:
        for n in args.streams:
            level = asyncio.run(soak.soak(url, clips, n, args.duration, ramp=args.ramp * n))
            levels.append(level)
            print(json.dumps({k: v for k, v in level.summary().items() if "first" not in k}), flush=True)
            time.sleep(3)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    started = (f"captioner serve --model {args.model} --threads {args.threads} --device {args.device} "
               "(started by bench/load.py)")
    meta = {"url": args.url or started,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "duration_s": args.duration,
            "ramp_s": args.ramp, "manifest": str(manifest), "clips": len(clips), "date": time.strftime("%Y-%m-%d")}
    print(soak.write_report(args.out, levels, meta).read_text())


if __name__ == "__main__":
    main()
