"""Process-wide memory settings."""

from __future__ import annotations

import os

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Blocks up to this size come from the heap, and this much free memory stays at its top (see
# limit_malloc_arenas).
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 64 << 20


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas; call before a verb starts its download threads.

    glibc gives each thread that meets contention an arena of its own (up to eight per core) and
    seldom returns their free memory to the system: two arenas cut a large restore's peak RSS by
    a quarter, no slower (docs/PERFORMANCE.md, "Restore and check: two malloc arenas"). Backups
    showed no difference, so they skip the ctypes import this needs. A no-op without glibc; each
    setting is left alone when its MALLOC_*_ variable is set.

    Reading also frees and allocates the same large blocks over and over (awscrt's buffer for each
    window of a GET, the window's bytes in Python): glibc mapped each one fresh and returned
    it after use, so every byte downloaded was page-faulted and zeroed by the kernel once more
    (a tenth of a big file's restore CPU). Blocks up to MMAP_THRESHOLD come from the heap, which
    keeps up to TRIM_THRESHOLD free at its top: a db file's restore took 40 % less system time
    for ~10 MB more peak RSS."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for var, param, value in (("MALLOC_ARENA_MAX", M_ARENA_MAX, arenas),
                              ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                              ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if not os.environ.get(var):
            mallopt(param, value)
