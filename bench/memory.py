"""Does resident memory come back after sessions end? A soak, then idle, with the server's RSS from /metrics.

    python bench/memory.py [--streams 4] [--duration 300] [--idle 120] [--out bench/results/memory]
    python bench/memory.py --no-trim ...   # the same with the server's malloc_trim turned off, for comparison

It starts `captioner serve` on a free loopback port, reads `process_resident_memory_bytes` from its
/metrics when it is idle (after start-up), runs `captioner soak --streams N --duration D`, and then
reads it every 10 s for --idle seconds. Prints and writes (report.json) the idle, peak, end-of-soak
and after-idle figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness

SCRAPE_EVERY_S = 10.0  # resident memory is read this often while idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of audio per soak stream")
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of idle after the soak")
    parser.add_argument("--no-trim", action="store_true", help="turn the server's malloc_trim off (comparison)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "memory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"CAPTIONER_TRIM_MEMORY": "0"} if args.no_trim else {})}
    with harness.serving(log=args.out / "server.log", env=env) as url:
        time.sleep(5)
        idle = harness.resident_mb(url)
        command = [sys.executable, "-m", "captioner.tools.cli", "soak", "--url", f"{url}/v1/stream",
                   "--streams", str(args.streams), "--duration", str(args.duration), "--report",
                   str(args.out / "soak")]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        soak = json.loads((args.out / "soak" / "report.json").read_text())["levels"][0]["summary"]
        after = [harness.resident_mb(url)]
        started = time.monotonic()
        while time.monotonic() - started < args.idle:
            time.sleep(SCRAPE_EVERY_S)
            after.append(harness.resident_mb(url))
    report = {"meta": harness.metadata(trim=not args.no_trim),
              "idle_mb": idle, "soak_peak_mb": soak["server_rss_mb_max"], "end_of_soak_mb": after[0],
              "after_idle_mb": after[-1], "over_idle_mb": round(after[-1] - idle, 1), "idle_series_mb": after,
              "soak_errors": soak["errors"], "final_lag_p95": soak["final_lag_p95"]}
    harness.write_json(args.out / "report.json", report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
