"""Handing freed heap memory back to the kernel once a burst is over.

glibc's malloc keeps what a burst of requests freed (thousands of connections' buffers, request
and reply objects) in its arenas for reuse, so the daemon's RSS stays at the burst's high-water
mark for good. `malloc_trim(0)` returns the free pages at the top of each arena and the free
whole pages inside them. The daemon calls it when the doors have gone idle after work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl, not macOS)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def trim_heap() -> bool:
    """Give free heap pages back to the kernel; False where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class IdleTrimmer:
    """Decides when to trim: once after each stretch of work, when a sample finds the doors idle.
    Plain logic, fed samples of (requests in flight, requests ever tracked)."""

    def __init__(self) -> None:
        self._seen_total = 0

    def should_trim(self, in_flight: int, tracked_total: int) -> bool:
        if in_flight or tracked_total == self._seen_total:
            return False  # still busy, or nothing happened since the last trim
        self._seen_total = tracked_total
        return True
