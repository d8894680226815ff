"""Atomic file writes: the one way daydream replaces a file on disk.

    atomic_write(path, b"...")                    # bytes
    atomic_write(path, lambda f: torch.save(x, f))  # or a function that writes to a binary file

The data goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over ``path``, and the directory is fsynced so the rename itself is durable: a
crash at any moment leaves either the old file or the new one, never a torn one, and a
file this returns from survives a power cut. Checkpoints, replay chunk files, outbox
spill files, the latched safety stop, status files and written configs all use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """Where ``atomic_write`` writes before the rename (hidden; reloaders may delete these)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_directory(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | Path, data: bytes | bytearray | memoryview | Callable[[BinaryIO], None]
) -> Path:
    """Replace ``path`` with ``data`` (or what ``data(file)`` writes) durably and atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``atomic_write`` of UTF-8 text."""
    return atomic_write(path, text.encode())
