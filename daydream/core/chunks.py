"""Chunks: a few to a few dozen consecutive steps of one actor stream, stacked as (T, ...) arrays.

A step is a flat dict of numpy arrays (``image``, ``vector``, ``action``, ``reward``,
``is_first``, ``is_last``, ``is_terminal``, ...). A chunk is the same dict with a leading
time axis. Chunks are what the actor sends, the gateway validates and the replay stores.
"""

from __future__ import annotations

import numpy as np


def chunk_length(chunk: dict[str, np.ndarray]) -> int:
    """Number of steps T in a chunk; raises ValueError when the arrays disagree or it is empty."""
    if not chunk:
        raise ValueError("a chunk needs at least one array (got an empty dict)")
    lengths = {k: (v.shape[0] if np.ndim(v) else -1) for k, v in chunk.items()}
    values = set(lengths.values())
    if len(values) != 1 or -1 in values:
        raise ValueError(f"chunk arrays must share a leading time axis T >= 1, got {lengths}")
    (length,) = values
    if length < 1:
        raise ValueError("a chunk must hold at least one step (T >= 1)")
    return int(length)


class ChunkBuilder:
    """Owns the steps collected since the last chunk; stacks them into a chunk every ``length``.

    >>> builder = ChunkBuilder(32)
    >>> chunk = builder.add(step)   # None until 32 steps are collected, then a (32, ...) dict
    >>> tail = builder.flush()      # the partial chunk at shutdown (or None)
    """

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"chunk length must be >= 1, got {length}")
        self.length = int(length)
        self._steps: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Append one step; return the stacked chunk when ``length`` steps are collected."""
        if self._steps and step.keys() != self._steps[0].keys():
            raise ValueError(
                f"step keys {sorted(step)} differ from the chunk's keys {sorted(self._steps[0])}"
            )
        self._steps.append({k: np.asarray(v) for k, v in step.items()})
        if len(self._steps) >= self.length:
            return self.flush()
        return None

    def flush(self) -> dict[str, np.ndarray] | None:
        """Stack and return whatever steps are collected (a partial chunk), or None if none."""
        if not self._steps:
            return None
        steps, self._steps = self._steps, []
        return {k: np.stack([s[k] for s in steps]) for k in steps[0]}
