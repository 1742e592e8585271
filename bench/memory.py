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
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resident_mb(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(line for line in text.splitlines() if line.startswith("process_resident_memory_bytes"))
    return round(float(line.split()[-1]) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of audio per soak stream")
    parser.add_argument("--idle", type=float, default=120.0, help="seconds of idle after the soak")
    parser.add_argument("--no-trim", action="store_true", help="turn the server's malloc_trim off (comparison)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, **({"CAPTIONER_TRIM_MEMORY": "0"} if args.no_trim else {})}
    server = subprocess.Popen([sys.executable, "-m", "captioner.tools.cli", "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=(args.out / "server.log").open("w"), env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready") from None
                time.sleep(0.5)
        time.sleep(5)
        idle = resident_mb(port)
        command = [sys.executable, "-m", "captioner.tools.cli", "soak", "--url", f"ws://127.0.0.1:{port}/v1/stream",
                   "--streams", str(args.streams), "--duration", str(args.duration), "--report",
                   str(args.out / "soak")]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        soak = json.loads((args.out / "soak" / "report.json").read_text())["levels"][0]
        after = [resident_mb(port)]
        started = time.monotonic()
        while time.monotonic() - started < args.idle:
            time.sleep(10)
            after.append(resident_mb(port))
    finally:
        server.terminate()
        server.wait(60)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": " ".join(["python bench/memory.py", *sys.argv[1:]]), "trim": not args.no_trim,
              "idle_mb": idle, "soak_peak_mb": soak["summary"]["server_rss_mb_max"], "end_of_soak_mb": after[0],
              "after_idle_mb": after[-1], "over_idle_mb": round(after[-1] - idle, 1), "idle_series_mb": after,
              "soak_errors": soak["summary"]["errors"], "final_lag_p95": soak["summary"]["final_lag_p95"]}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
