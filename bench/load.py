"""Real-time load on a real server: N concurrent clients on loopback, each streaming real speech at real-time pace.

    python bench/load.py [--streams 1 2 4 8 12] [--duration 60] [--threads 2] [--device auto] [--model tiny.en]
        [--max-clip-s 30] [--every 1] [--coincide] [--no-partials] [--url ws://...]

Without --url it starts `captioner serve` on a free loopback port (--model, default settings,
--threads cores) and stops it afterwards. Every level is a `captioner soak` run
(tools/soak.py): each client streams clips of ../shared/eval (samples/ when absent) one after
another with 1 s of silence between them for --duration seconds. Lag is receive time minus the
wall time at which the audio of the caption's end was sent. A stream "falls behind" when its
finals' lag grows over the run (last final's lag more than 2 s above its first's) or it ends with
an error. Unlike `captioner soak --sweep` it runs every level, past the first that misses, and
writes the soak report (JSON, Markdown, plots) to bench/results/load/. With --coincide every client
streams the same clips, each 0.5 s after the one before, so that their speech and their pauses line
up (the hard case: a panel, a classroom); its report goes to bench/results/load-coincide/. With
--no-partials every client asks for finals only (`partials=false`: transcripts, subtitles).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path

import harness

from captioner.tools import soak
from captioner.tools.evaluate import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8, 12])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of audio per stream")
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="the started server's")
    parser.add_argument("--model", default="tiny.en", help="the started server's (a name or a path)")
    parser.add_argument("--url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--manifest", type=Path, default=harness.default_manifest(), help="clips to stream")
    parser.add_argument("--ramp", type=float, default=0.25, help="seconds between client starts")
    harness.add_clip_arguments(parser, max_clip_s=30.0)
    parser.add_argument("--coincide", action="store_true", help="every client streams the same clips, 0.5 s apart")
    parser.add_argument("--no-partials", action="store_true", help="every client asks for finals only")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (soak's report: JSON, Markdown, plots; default: bench/results/load, "
                        "or load-coincide)")
    args = parser.parse_args()
    clips = harness.pick_clips(read_manifest(args.manifest), args)
    options = ["--threads", str(args.threads), "--device", args.device, "--model", args.model,
               "--max-sessions", str(max(64, *args.streams)), "--log-format", "text"]
    levels = []
    with harness.serving(options, args.url) as url:
        for n in args.streams:
            level = asyncio.run(soak.soak(url, clips, n, args.duration, ramp=args.ramp * n, coincide=args.coincide,
                                          partials=not args.no_partials))
            levels.append(level)
            summary = dataclasses.asdict(level.summarize())
            print(json.dumps({k: v for k, v in summary.items() if "first" not in k}), flush=True)
            time.sleep(3)
    meta = harness.metadata(url=args.url or f"captioner serve {' '.join(options)} (started by bench/load.py)",
                            duration_s=args.duration, ramp_s=args.ramp, manifest=str(args.manifest),
                            clips=len(clips), max_clip_s=args.max_clip_s, every=args.every, coincide=args.coincide,
                            partials=not args.no_partials)
    out = args.out or harness.RESULTS / ("load-coincide" if args.coincide else "load")
    print(soak.write_report(out, levels, meta).read_text())


if __name__ == "__main__":
    main()
