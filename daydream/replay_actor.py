"""The replay as a Ray actor, with the samples-per-insert limiter that throttles the learner.

``ReplayService`` is a thread-safe plain class (usable in one process, e.g. the gateway's
thread mode and tests); ``ReplayActor`` is the same class as a threaded Ray actor::

    replay = ReplayActor.options(name="replay").remote(capacity=..., directory=..., ...)
    ok = ray.get(replay.add.remote("robot-0", 7, chunk))
    batch = ray.get(replay.sample.remote(16, 64, timeout=1.0))   # None while throttled

The limiter only ever makes *sampling* wait: an add never waits for the learner.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import ray

from daydream.replay import Replay


class SamplesPerInsert:
    """Owns the rule "the learner may replay at most ``ratio`` steps per inserted step".

    Sampling ``n`` steps is allowed when the replay holds ``min_size`` inserted steps and
    ``sampled + n <= ratio * inserted + tolerance``; ``ratio <= 0`` turns the limit off
    (only ``min_size`` applies). Inserting is never limited.
    """

    def __init__(self, ratio: float, tolerance: float, min_size: int):
        self.ratio = float(ratio)
        self.tolerance = float(tolerance)
        self.min_size = int(min_size)
        self.inserted = 0
        self.sampled = 0

    def can_sample(self, steps: int) -> bool:
        if self.inserted < self.min_size:
            return False
        if self.ratio <= 0:
            return True
        return self.sampled + steps <= self.ratio * self.inserted + self.tolerance

    def state(self) -> dict:
        return {"inserted_steps": self.inserted, "sampled_steps": self.sampled}


class ReplayService:
    """Owns a :class:`Replay` behind a lock, plus the samples-per-insert limiter."""

    def __init__(
        self,
        capacity: int,
        directory: str | Path | None = None,
        recency: float = 0.0,
        seed: int = 0,
        samples_per_insert: float = 0.0,
        spi_tolerance: float = 0.0,
        min_size: int = 1,
    ):
        self._replay = Replay(capacity, directory=directory or None, recency=recency, seed=seed)
        self._limiter = SamplesPerInsert(samples_per_insert, spi_tolerance, min_size)
        self._limiter.inserted = self._replay.num_steps  # reloaded steps count as inserted
        self._cond = threading.Condition()
        self._throttled = 0
        self._rejected = 0

    @classmethod
    def from_config(cls, config, logdir: str | Path | None = None) -> ReplayService:
        """Build from the ``replay`` block of a daydream config (directory relative to logdir)."""
        return cls(**replay_kwargs(config, logdir))

    def add(self, stream: str, seq: int, chunk: dict[str, np.ndarray]) -> bool:
        """Store a chunk (durably when the replay has a directory); False for a duplicate."""
        with self._cond:
            added = self._replay.add(stream, seq, chunk)
            if added:
                self._limiter.inserted += len(next(iter(chunk.values())))
                self._cond.notify_all()
            return added

    def add_batch(self, items: list[tuple[str, int, dict[str, np.ndarray]]]) -> list:
        """Add several chunks with one disk commit; per item True (added), False (duplicate)
        or an error string (refused: wrong keys, shapes or dtypes)."""
        with self._cond:
            results = self._replay.add_batch(items)  # one disk commit for the whole batch
            for (_, _, chunk), result in zip(items, results, strict=True):
                if result is True:
                    self._limiter.inserted += len(next(iter(chunk.values())))
                elif result is not False:
                    self._rejected += 1
            self._cond.notify_all()
        return results

    def sample(
        self, batch_size: int, length: int, timeout: float = 0.0
    ) -> dict[str, np.ndarray] | None:
        """A (B, L, ...) batch, or None if the limiter (or too little data) still says no after
        waiting up to ``timeout`` seconds."""
        steps = batch_size * length
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._limiter.can_sample(steps) and self._replay.ready(length)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._throttled += 1
                    return None
                self._cond.wait(remaining)
            self._limiter.sampled += steps
            return self._replay.sample(batch_size, length)

    def ready(self, length: int) -> bool:
        """True when min_size is reached and a sequence of ``length`` steps exists."""
        with self._cond:
            return self._limiter.inserted >= self._limiter.min_size and self._replay.ready(length)

    def keys(self) -> list[tuple[str, int]]:
        """(stream, seq) of every chunk held, oldest first."""
        with self._cond:
            return self._replay.keys()

    def num_steps(self) -> int:
        with self._cond:
            return self._replay.num_steps

    def stats(self) -> dict:
        with self._cond:
            return {
                **self._replay.stats(),
                **self._limiter.state(),
                "throttled": self._throttled,
                "rejected": self._rejected,
            }


def replay_kwargs(config, logdir: str | Path | None = None) -> dict:
    """Constructor arguments for ReplayService/ReplayActor from a daydream config."""
    r = config.replay
    directory = None
    if r.directory:
        directory = Path(r.directory)
        if not directory.is_absolute() and logdir is not None:
            directory = Path(logdir) / directory
    return dict(
        capacity=int(r.capacity),
        directory=str(directory) if directory else None,
        recency=float(r.recency),
        seed=int(config.seed),
        samples_per_insert=float(r.samples_per_insert),
        spi_tolerance=float(r.spi_tolerance),
        min_size=int(r.min_size),
    )


# A threaded actor: sample() may wait for inserts while add() calls keep being served.
ReplayActor = ray.remote(max_concurrency=8, num_cpus=0)(ReplayService)
