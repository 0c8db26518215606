"""Process-wide memory settings."""

from __future__ import annotations

import os

M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas; call before a verb starts its download threads.

    glibc gives each thread that meets contention an arena of its own (up to eight per core) and
    seldom returns their free memory to the system: two arenas cut a large restore's peak RSS by
    a quarter, no slower (docs/PERFORMANCE.md, "Restore and check: two malloc arenas"). Backups
    showed no difference, so they skip the ctypes import this needs. A no-op without glibc, or
    when MALLOC_ARENA_MAX is set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, arenas)
