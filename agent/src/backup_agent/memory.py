"""Process-wide memory settings."""

from __future__ import annotations

import os
from typing import Any

M_ARENA_MAX = -8  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
# Allocations of this size or more get a mapping of their own, given back to the system when freed.
BIG_BUFFER = 4 << 20
# Free memory at the top of the heap beyond this goes back to the system.
HEAP_TRIM = 4 << 20


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas; call before a verb starts its download threads.

    glibc gives each thread that meets contention an arena of its own (up to eight per core) and
    seldom returns their free memory to the system: two arenas cut a large restore's peak RSS by
    a quarter, no slower (docs/PERFORMANCE.md, "Restore and check: two malloc arenas"). Backups
    showed no difference, so they skip the ctypes import this needs. A no-op without glibc, or
    when MALLOC_ARENA_MAX is set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_ARENA_MAX, arenas)


def return_big_buffers(threshold: int = BIG_BUFFER, trim: int = HEAP_TRIM) -> None:
    """Give large buffers back to the system when they are freed; call before a verb's threads start.

    glibc maps an allocation above its mmap threshold (128 KiB at first) and unmaps it when freed,
    but then raises the threshold to that size (up to 32 MiB): the next such buffers come from the
    heap, and their memory stays with the process once freed. A backup's packs (16 MiB, copied
    into awscrt's buffer for their PUT) kept 30-40 MB per upload in flight that way, for the rest
    of the run (docs/PERFORMANCE.md, "Peak memory after format 3"). A fixed threshold ends that
    adjustment; 4 MiB keeps the chunker's blocks and most small files on the heap (fresh
    memory costs a page fault per 4 KiB). Fixing it stops glibc adjusting the heap's trim
    threshold too, so that is set as well: 4 MiB (real tree backup peak ~196 MB) faulted about as
    often as glibc's defaults; 1 MiB peaked lower (~170 MB) but took ~30 % more page faults and
    looked a little slower; 128 KiB (glibc's start) peaked like 1 MiB, with still more faults.
    A no-op without glibc, or when MALLOC_MMAP_THRESHOLD_ is set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, threshold)
        mallopt(M_TRIM_THRESHOLD, trim)


def _mallopt() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
