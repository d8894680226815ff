"""The process's C heap: keep the memory an update frees for the next one (glibc's malloc).

glibc hands every allocation above its mmap threshold (32 MiB at most) to the kernel as a
fresh ``mmap`` and unmaps it again on ``free``. A learner's update at Dreamer's size on a CPU
allocates dozens of such tensors (the first convolution's activations of 16 x 64 images alone
are 190 MB) and frees them before the next update, so every update faults in and zeroes
gigabytes of new pages: 15 to 20 of the 87 to 107 CPU seconds of ``bench/train_step.py
--only dreamer`` (2 cores) were the kernel's. ``keep_freed_memory`` tells malloc to serve
large allocations from its heap too and never to give the heap's top back (``mallopt``:
``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` at its largest): the next update reuses the pages as
they are, 1.2-1.3x faster updates at Dreamer's and DreamerV2's size. The price is resident
memory held near the update's peak: Dreamer's learner at 3.1-3.2 GB instead of 2.5-2.6, flat
from its 30th update to its 80th (glibc 2.36). The laptop size allocates nothing that large
and is unaffected. It is a no-op where the C library is not glibc (no ``mallopt``: macOS,
musl).

``resident_mb`` reads the process's resident memory: the learner logs it
(``learner_resident_mb`` in metrics.jsonl) so that what the kept heap holds is seen.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Large allocations from the heap and no trimming, for the rest of this process's life.
    Returns whether the C library took both settings."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    no_mmap = mallopt(M_MMAP_MAX, 0) == 1
    no_trim = mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD) == 1
    return no_mmap and no_trim


def resident_mb() -> float | None:
    """This process's resident memory in MiB (Linux's /proc/self/statm); None where unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
