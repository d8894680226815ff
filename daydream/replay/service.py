"""The replay service: the chunk store behind a lock, with the samples-per-insert limiter.

``ReplayService`` is a thread-safe plain class: the single-process runner and the tests
use it in one process, and ``daydream.replay.remote.ReplayActor`` is the same class as a
threaded Ray actor (``ReplayHost``: it may also run the gateway in its process, which then
calls ``add_batch`` directly). The limiter only ever makes *sampling* wait: an add waits for
the disk and for the batches that came before it, never for the limiter or the sampler.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from daydream.replay.limiter import SamplesPerInsert
from daydream.replay.store import Replay


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
        self._warned = 0  # warnings of the replay already handed to pop_warnings' callers

    def add(self, stream: str, seq: int, chunk: dict[str, np.ndarray]) -> bool:
        """Store a chunk (durably when the replay has a directory); False for a duplicate."""
        return bool(self._add([(stream, seq, chunk)], raise_errors=True)[0])

    def add_batch(self, items: list[tuple], copy: bool = True) -> list:
        """Add several chunks with one disk commit: items ``(stream, seq, chunk[, robot
        key])``; per item True (added), False (duplicate), None (the same chunk is being
        written by a batch before: not answered) or ``"<reason>: <detail>"`` (refused;
        ``store.REFUSALS``). ``copy=False``: keep read-only arrays the caller gives away
        (``Replay.add_batch``).

        The file is written outside the lock, so the learner samples meanwhile and several
        batches go to disk at once; they enter the replay in the order they came."""
        return self._add(items, copy=copy)

    def _add(self, items: list[tuple], raise_errors: bool = False, copy: bool = True) -> list:
        replay = self._replay
        with self._cond:
            results, batch = replay.reserve(items, raise_errors, copy)
            self._rejected += sum(isinstance(r, str) for r in results)
        if batch is None:
            return results
        committed = False
        try:
            replay.write(batch)  # outside the lock
            with self._cond:
                self._cond.wait_for(lambda: replay.next_to_commit(batch))
                replay.commit(batch)
                committed = True
                self._limiter.inserted += sum(length for _, _, length in batch.chunks)
                self._cond.notify_all()
        finally:
            if not committed:  # the write failed: later batches must not wait for this one
                with self._cond:
                    replay.abort(batch)
                    self._cond.notify_all()
        return results

    def sample(
        self, batch_size: int, length: int, timeout: float = 0.0, counted: bool = True
    ) -> dict[str, np.ndarray] | None:
        """A (B, L, ...) batch, or None if the limiter (or too little data) still says no after
        waiting up to ``timeout`` seconds. ``counted=False`` (the learner's pretraining right
        after prefill) needs only ``min_size`` and is not counted against the ratio."""
        steps = batch_size * length
        deadline = time.monotonic() + timeout

        def allowed() -> bool:
            if not self._replay.ready(length):
                return False
            if counted:
                return self._limiter.can_sample(steps)
            return self._limiter.inserted >= self._limiter.min_size

        with self._cond:
            while not allowed():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._throttled += 1
                    return None
                self._cond.wait(remaining)
            if counted:
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

    def restore_sampled(self, sampled: int) -> None:
        """The learner resumed having replayed ``sampled`` steps: count them again, but never
        more than the ratio allows for what the replay holds now (so a resumed learner goes
        on at the ratio instead of replaying the whole reloaded replay at once)."""
        with self._cond:
            limiter = self._limiter
            if limiter.ratio > 0:
                sampled = min(sampled, int(limiter.ratio * limiter.inserted))
            limiter.load_state(sampled)

    def start_ratio(self) -> None:
        """Count the ratio from now on: the prefill (``min_size`` steps, trained on by the
        uncounted pretraining) owes no updates. Steps stored beyond it (fast simulated robots
        overshoot while the learner starts pretraining) are owed, as one process owes them."""
        with self._cond:
            limiter = self._limiter
            forgiven = min(limiter.inserted, limiter.min_size)
            limiter.load_state(max(limiter.sampled, int(limiter.ratio * forgiven)))

    def rebind(self, stream: str, key: str) -> str | None:
        """Give ``stream`` to the robot key ``key`` (Z85 text) on purpose; returns the key it
        belonged to (None: nobody)."""
        with self._cond:
            return self._replay.rebind(stream, key)

    def pop_warnings(self) -> list[str]:
        """What the replay found wrong with its files (reload) since the last call: the Ray
        actor's log goes nowhere, so the learner prints these."""
        with self._cond:
            warnings = self._replay.warnings[self._warned :]
            self._warned += len(warnings)
            return warnings

    def close(self) -> None:
        """Nothing to release in one process (the Ray handle's close kills the actor)."""

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


def replay_options(block, logdir: str | Path | None, seed: int) -> dict:
    """Constructor arguments of ReplayService / ReplayActor from the ``replay`` config block
    (its directory relative to ``logdir``; samples_per_insert and min_size are resolved
    from the train block when the config loads)."""
    directory = None
    if block.directory:
        directory = Path(block.directory)
        if not directory.is_absolute() and logdir is not None:
            directory = Path(logdir) / directory
    return dict(
        capacity=block.capacity,
        directory=str(directory) if directory else None,
        recency=block.recency,
        seed=seed,
        samples_per_insert=block.samples_per_insert,
        spi_tolerance=block.spi_tolerance,
        min_size=block.min_size,
    )
