"""Atomic file writes: the one way daydream replaces a file on disk.

    atomic_write(path, b"...")                    # bytes
    atomic_write(path, lambda f: torch.save(x, f))  # or a function that writes to a binary file
    atomic_write(path, write_records, direct=True)  # large files: past the page cache (Linux)

The data goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over ``path``, and the directory is fsynced so the rename itself is durable: a
crash at any moment leaves either the old file or the new one, never a torn one, and a
file this returns from survives a power cut. Checkpoints, replay chunk files, outbox
spill files, the latched safety stop, status files and written configs all use it.

``direct=True`` writes with ``O_DIRECT`` from a reused, page-aligned staging buffer instead of
copying into the page cache: about half the CPU for the replay's multi-megabyte chunk files
(``bench/ingest.py``), and a replay ingesting hundreds of MB/s no longer pushes every other
file out of memory. The file's bytes are the same. Where the file system refuses ``O_DIRECT``
(tmpfs before Linux 6.6, some network and overlay file systems) or the OS has none, the write
is buffered as without it (and ``data(file)`` may be called a second time, on a fresh file).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"
DIRECT_ALIGN = 4096  # O_DIRECT: buffer address, offset and length in multiples of the block size
DIRECT_STAGING_BYTES = 4 * 2**20  # per writing thread, reused (fresh pages cost a page fault each)

_direct_refused: set[Path] = set()  # directories whose file system refused O_DIRECT
_staging = threading.local()


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
    path: str | Path,
    data: bytes | bytearray | memoryview | Callable[[BinaryIO], None],
    direct: bool = False,
) -> Path:
    """Replace ``path`` with ``data`` (or what ``data(file)`` writes) durably and atomically;
    ``direct``: past the page cache where the file system allows it (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    write = data if callable(data) else (lambda f: f.write(data))
    try:
        if not (direct and _write_direct(tmp, write)):
            with open(tmp, "wb") as f:
                write(f)
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


# ---------------------------------------------------------------- O_DIRECT


def _write_direct(tmp: Path, write: Callable[[BinaryIO], None]) -> bool:
    """Write ``tmp`` with O_DIRECT and fsync it; False (nothing left behind) where the OS or
    the file system does not allow it."""
    if not hasattr(os, "O_DIRECT") or tmp.parent in _direct_refused:
        return False
    try:
        with _DirectFile(tmp) as f:
            write(f)  # type: ignore[arg-type]
        return True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _direct_refused.add(tmp.parent)
        log.info("%s: the file system refuses O_DIRECT (%s); writing through the page cache",
                 tmp.parent, e)  # fmt: skip
        tmp.unlink(missing_ok=True)
        return False


class _DirectFile:
    """A new file written with O_DIRECT through this thread's page-aligned staging buffer:
    each full buffer goes to the disk as it fills; leaving the ``with`` block writes the whole
    blocks of the rest directly, the last partial block (under ``DIRECT_ALIGN`` bytes) with
    O_DIRECT cleared, and fsyncs. Only ``write`` is offered (what the writers given to
    ``atomic_write`` use)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
        if getattr(_staging, "buffer", None) is None:
            _staging.buffer = memoryview(mmap.mmap(-1, DIRECT_STAGING_BYTES))  # page-aligned
        self._buffer: memoryview = _staging.buffer
        self._used = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            take = min(len(view), len(self._buffer) - self._used)
            self._buffer[self._used : self._used + take] = view[:take]
            self._used += take
            view = view[take:]
            if self._used == len(self._buffer):
                self._write_out(self._used)
                self._used = 0
        return size

    def _write_out(self, size: int) -> None:
        done = 0
        while done < size:
            done += os.write(self._fd, self._buffer[done:size])

    def __enter__(self) -> _DirectFile:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                whole = self._used // DIRECT_ALIGN * DIRECT_ALIGN
                self._write_out(whole)
                if whole < self._used:  # the tail: not a whole block, so through the cache
                    import fcntl

                    flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                    fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                    rest = self._buffer[whole : self._used]
                    while rest:
                        rest = rest[os.write(self._fd, rest) :]
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
