"""bfloat16 against float32 on this CPU: one 30 s encoder window, one thread, per model.

    python bench/dtype.py [--models tiny.en base]

Prints the median of three timed encodes per model and dtype, after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import harness
import torch

N_TIMED = 3  # encodes timed per model and dtype, after one warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    args = parser.parse_args()
    print(harness.table(["model", "dtype", "30 s encode, 1 thread"]))
    for name in args.models:
        for dtype in (torch.float32, torch.bfloat16):
            model = harness.load(name, "cpu", 1, dtype)
            mel = torch.zeros(1, model.n_mels, model.max_frames)
            model.encode(mel)
            times = []
            for _ in range(N_TIMED):
                started = time.perf_counter()
                model.encode(mel)
                times.append(time.perf_counter() - started)
            print(harness.row([name, str(dtype).removeprefix("torch."), f"{statistics.median(times):.2f} s"]),
                  flush=True)


if __name__ == "__main__":
    main()
