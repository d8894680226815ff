"""Atomic file writes (``daydream.core.files``): the direct (O_DIRECT) path writes the same
bytes as the buffered one, falls back where a file system refuses it, and never leaves a
torn or temporary file behind."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from daydream.core import files
from daydream.core.files import DIRECT_ALIGN, DIRECT_STAGING_BYTES, atomic_write

SIZES = [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, DIRECT_STAGING_BYTES,
         DIRECT_STAGING_BYTES + DIRECT_ALIGN + 7, 2 * DIRECT_STAGING_BYTES + 1]  # fmt: skip


def write_in_uneven_parts(data: bytes):
    """A writer like the replay's: buffers of odd sizes, some numpy arrays, some memoryviews."""
    cuts = [0, len(data) // 7, len(data) // 3, len(data) // 3 + 5, len(data)]

    def write(f) -> None:
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            f.write(np.frombuffer(data, np.uint8)[a:b] if a % 2 else memoryview(data)[a:b])

    return write


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux's")
@pytest.mark.parametrize("size", SIZES)
def test_a_direct_write_leaves_the_same_bytes_as_a_buffered_one(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    direct = atomic_write(tmp_path / "direct", write_in_uneven_parts(data), direct=True)
    buffered = atomic_write(tmp_path / "buffered", write_in_uneven_parts(data))
    assert direct.read_bytes() == buffered.read_bytes() == data
    assert tmp_path not in files._direct_refused  # it did go the direct way here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffered", "direct"]


def test_a_file_system_that_refuses_o_direct_gets_a_buffered_write(tmp_path, monkeypatch):
    opened = []
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            opened.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")  # what tmpfs or an old NFS says
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(files, "_direct_refused", set())
    data = b"x" * (DIRECT_STAGING_BYTES + 3)
    for name in ("first", "second"):
        assert atomic_write(tmp_path / name, data, direct=True).read_bytes() == data
    assert len(opened) == (1 if hasattr(os, "O_DIRECT") else 0)  # asked once, then remembered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]


@pytest.mark.parametrize("direct", [True, False])
def test_a_writer_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path, direct):
    path = atomic_write(tmp_path / "f", b"old")

    def failing(f) -> None:
        f.write(b"y" * (DIRECT_STAGING_BYTES + 10))  # past one full staging buffer
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="broke"):
        atomic_write(path, failing, direct=direct)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]
