"""Giving memory back to the operating system once sessions end (glibc's malloc_trim, through ctypes).

Where it goes (measured, docs/benchmarks.md): the model's work allocates and frees large tensors on
the inference threads; glibc keeps freed heap memory in each thread's arena for reuse instead of
returning it, so the resident size stays at its high-water mark after every session has ended.
`malloc_trim(0)` walks every arena and returns their free pages. It runs on a worker thread of its
own, a moment after a session ends (debounced), so that it costs a stream nothing. Elsewhere than
glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from typing import Any

__all__ = ["MemoryTrimmer", "resident_bytes", "bound_caches"]

log = logging.getLogger("captioner.memory")

TRIM_DELAY_S = 1.0  # after a session ends: sessions that end together are trimmed for once
ONEDNN_CACHE_ENTRIES = 64  # compiled primitives kept by each of ideep's and oneDNN's caches (theirs: 1024)
CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def bound_caches() -> None:
    """Bound oneDNN's primitive caches (before the first matmul of the process; a user's setting wins)."""
    for name in CACHE_VARIABLES:
        os.environ.setdefault(name, str(ONEDNN_CACHE_ENTRIES))


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


class MemoryTrimmer:
    """Trims the heap a moment after sessions end; `n_trims` and `released_bytes` say what it did."""

    def __init__(self, enabled: bool = True) -> None:
        """enabled: bound the caches now and trim after sessions; off, this does nothing."""
        if enabled:
            bound_caches()
        self._libc = _glibc() if enabled else None
        self._pending: asyncio.TimerHandle | None = None
        self._running = False
        self.n_trims = 0
        self.released_bytes = 0

    @property
    def available(self) -> bool:
        return self._libc is not None

    def session_ended(self) -> None:
        """Schedule a trim TRIM_DELAY_S from now (on the running loop), unless one is already due."""
        if self._libc is None or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._start)

    def _start(self) -> None:
        self._pending = None
        if self._running:
            return
        self._running = True
        future = asyncio.get_running_loop().run_in_executor(None, self.trim)
        future.add_done_callback(lambda _: setattr(self, "_running", False))

    def trim(self) -> int:
        """Return free heap memory to the system now; the bytes of resident memory that went."""
        if self._libc is None:
            return 0
        before, started = resident_bytes(), time.perf_counter()
        self._libc.malloc_trim(0)
        released = max(0, before - resident_bytes())
        self.n_trims += 1
        self.released_bytes += released
        log.debug("memory trimmed", extra={"released_mb": round(released / 2**20, 1),
                                           "took_ms": round(1000 * (time.perf_counter() - started), 1)})
        return released
