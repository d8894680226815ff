"""How far the learner is behind its training ratio, told to the robots many times a second.

Simulated robots wait while the learner is more than ``actor.sim_max_lag_steps`` environment
steps behind ``train.ratio`` (real robots never wait), so that ``daydream run`` learns per
environment step as one process does. A simulation can step hundreds of times a second, so
the figure must be fresh: :class:`PaceThread` reads the replay's inserted count and the
learner's own update count every ``PACE_EVERY_S`` seconds, from its own thread (an update
takes far longer than that), and hands the result to the gateway, which puts it in every
acknowledgement and weights announcement.

    behind = inserted - trained / ratio        (environment steps)
    trained = sampled_at_start + (updates - updates_at_start) * batch_size * batch_length

``start`` is when the ratio begins to count (after the prefill and the uncounted
pretraining, or at once for a resumed run). Before it, the robots may run ``min_size``
steps (the prefill) and then wait; while pretraining they wait (``PRETRAINING``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

PACE_EVERY_S = 0.05  # a simulated robot at 300 steps/s runs 15 steps between two figures
PRETRAINING = 2**31 - 1  # "behind" while pretraining: simulated robots wait for it


class RatioPace:
    """Owns the starting point of the training ratio and turns counts into steps behind."""

    def __init__(self, ratio: float, min_size: int, batch_steps: int) -> None:
        self.ratio, self.min_size, self.batch_steps = float(ratio), int(min_size), batch_steps
        self.pretraining = False
        self._start: tuple[int, int] | None = None  # (replay's sampled steps, learner updates)

    def start(self, sampled: int, updates: int) -> None:
        """The ratio counts from here: the replay had sampled ``sampled`` steps (its limiter's
        count, set by start_ratio or restored on resume) and the learner made ``updates``."""
        self._start = (int(sampled), int(updates))
        self.pretraining = False

    def behind(self, inserted: int, updates: int) -> int:
        if self.ratio <= 0:
            return 0
        if self.pretraining:
            return PRETRAINING
        if self._start is None:
            return max(0, inserted - self.min_size)
        sampled, at = self._start
        trained = sampled + (updates - at) * self.batch_steps
        return max(0, int(inserted - trained / self.ratio))


class PaceThread:
    """Owns the thread that tells the gateway, every PACE_EVERY_S, how far behind it is."""

    def __init__(
        self,
        pace: RatioPace,
        inserted: Callable[[], int],
        updates: Callable[[], int],
        tell: Callable[[int], None],
    ) -> None:
        self.pace, self._inserted, self._updates, self._tell = pace, inserted, updates, tell
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learner-pace", daemon=True)

    def start(self) -> PaceThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def tell_now(self) -> None:
        self._tell(self.pace.behind(self._inserted(), self._updates()))

    def _run(self) -> None:
        while not self._stop.wait(PACE_EVERY_S):
            try:
                self.tell_now()
            except Exception as e:  # noqa: BLE001 - only pacing: never stop training for it
                self.errors += 1
                if self.errors == 1:
                    print(f"learner: could not tell the robots its pace ({e})", flush=True)
