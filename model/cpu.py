"""What this machine's CPU computes natively, per /proc/cpuinfo (Linux; elsewhere nothing is assumed)."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["cpu_has_bfloat16", "cpu_has_vnni"]


@functools.cache
def _flags() -> frozenset[str]:
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX or Arm's BF16)."""
    return bool(_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without 16-bit intermediate sums."""
    return bool(_flags() & {"avx512_vnni", "avx_vnni"})
