"""bfloat16 against float32 on this CPU: one 30 s encoder window, one thread, per model.

    python bench/dtype.py [--models tiny.en base]

Prints the median of three timed encodes per model and dtype, after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from captioner.model.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | dtype | 30 s encode, 1 thread |\n|---|---|---|")
    for name in args.models:
        for dtype in (torch.float32, torch.bfloat16):
            model = load_model(name, device="cpu", dtype=dtype)
            mel = torch.zeros(1, model.n_mels, model.max_frames)
            model.encode(mel)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                model.encode(mel)
                times.append(time.perf_counter() - started)
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {statistics.median(times):.2f} s |", flush=True)


if __name__ == "__main__":
    main()
