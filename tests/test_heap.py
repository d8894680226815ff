"""train.keep_freed_memory: a large tensor freed and allocated again reuses the pages it had.

Each case runs in a child process: the setting is process-wide and permanent."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = 96 * 2**20 // 4096  # the second tensor below, in 4 KiB pages

# Page faults of allocating and filling a 96 MiB tensor after a 100 MiB one was freed (an update
# frees its activations and allocates the next update's). The second is a little smaller so
# that it fits in the freed block wherever that block starts (torch asks for 64-byte aligned
# memory, and an aligned request needs a little more than its size from malloc).
CHILD = """
import resource, sys
import torch
from daydream.core.heap import keep_freed_memory

took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(25 * 2**20)
del x
before = faults()
y = torch.ones(24 * 2**20)
print(took, faults() - before)
"""


def refaults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, cwd=ROOT,
        timeout=120, check=True,
    )  # fmt: skip
    took, faults = out.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_memory_is_reused_without_faulting_its_pages_in_again():
    took, kept = refaults("keep")
    assert took == "True"
    assert kept < PAGES // 100, f"{kept} page faults for {PAGES} pages reused"
    # without it the freed tensor went back to the kernel: its pages fault in (and are zeroed)
    # again, one by one (or one huge page at a time where transparent huge pages are on)
    _, returned = refaults("default")
    assert returned > kept


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="Linux's /proc")
def test_resident_memory_counts_pages_as_they_are_touched():
    import mmap

    from daydream.core.heap import resident_mb

    size = 100 * 2**20
    block = mmap.mmap(-1, size)  # fresh pages of its own (not malloc's, which may keep some)
    before = resident_mb()
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    grown = resident_mb() - before
    block.close()
    assert 95 <= grown <= 110, grown
