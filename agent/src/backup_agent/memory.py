"""Process-wide memory settings."""

from __future__ import annotations

import gc
import os
from typing import Any

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Backups (return_big_buffers): allocations of this size or more get a mapping of their own,
# given back to the system when freed, and free memory at the top of the heap beyond HEAP_TRIM
# goes back too.
BIG_BUFFER = 4 << 20
HEAP_TRIM = 4 << 20
# Backups (reuse_pack_buffers): the same, sized for awscrt's buffer of each PUT (a pack).
PACK_MMAP_THRESHOLD = 32 << 20
PACK_TRIM_THRESHOLD = 64 << 20
# Restore and check (limit_malloc_arenas): blocks up to this size come from the heap, and this
# much free memory stays at its top.
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 64 << 20
# One-shot backups (fewer_gc_passes): the youngest generation is collected after this many
# allocations of containers (Python's default: 700).
GC_YOUNG = 10_000


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas; call before a verb starts its download threads (after
    return_big_buffers, whose thresholds this replaces for reading).

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
    mallopt = _mallopt()
    if mallopt is None:
        return
    for var, param, value in (("MALLOC_ARENA_MAX", M_ARENA_MAX, arenas),
                              ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                              ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if not os.environ.get(var):
            mallopt(param, value)


def reuse_pack_buffers(threshold: int = PACK_MMAP_THRESHOLD, trim: int = PACK_TRIM_THRESHOLD) -> None:
    """For a backup (`run`): keep the buffers a PUT needs for reuse; call before its threads start.

    awscrt allocates a buffer of the body's size for every PUT (a pack: `pack_size`, 16 MiB) and
    frees it when the PUT ends; copying the pack into fresh pages was 9 % of a big random file's
    backup CPU, and page faults as much again (docs/PERFORMANCE.md, "The random-data anchor
    again"). Up to `threshold` (glibc's maximum, 32 MiB) blocks come from the heap, which keeps up
    to `trim` free at its top: about four PUTs' buffers, the packs in flight by default. Fixing
    the mmap threshold also stops glibc raising it by itself, which is why both are set (a trim
    threshold alone left it at 128 KiB and mapped every chunk afresh: 3.5 times the CPU).
    A no-op without glibc; each setting is left alone when its MALLOC_*_ variable is set."""
    _set_thresholds(threshold, trim)


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
    Used by the daemon only: in a backup (`run`) the 4 MiB threshold mapped and page-faulted a big
    file's 16 MiB reads afresh each time, and its full backup took 50 % more CPU (a 200 MiB log:
    2.8 → 4.3 s), which the ~40 MB it saved on a tree of small files did not pay for.
    A no-op without glibc, or when MALLOC_MMAP_THRESHOLD_ is set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    _set_thresholds(threshold, trim)


def _set_thresholds(threshold: int, trim: int) -> None:
    mallopt = _mallopt()
    if mallopt is None:
        return
    for var, param, value in (("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, threshold),
                              ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, trim)):
        if not os.environ.get(var):
            mallopt(param, value)


def _mallopt() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def fewer_gc_passes() -> None:
    """For a one-shot backup (`run`), once its imports are done. What exists then (modules,
    classes, the config) lives until the process exits: gc.freeze takes it out of the collector's
    passes. A scan allocates entries, tuples and closures by the hundred thousand, few of them
    in cycles, so the youngest generation is collected every GC_YOUNG allocations, not every 700.
    The collector's passes were 3-4 % of a real tree's backup CPU (docs/PERFORMANCE.md, "Small
    files off the scan thread"). Not for the daemon, which runs jobs for months in one process:
    what is frozen is never collected."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 20)
