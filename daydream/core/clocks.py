"""Named clocks for loops: ``if should_save(): save()`` instead of hand-kept timers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Every:
    """Owns the time something was last due; true once every ``seconds``.

    ``Every(5.0)`` is due at once the first time (``first=True``) or only after five
    seconds (``first=False``); ``Every(0)`` is always due; ``Every(math.inf)`` never.
    """

    def __init__(
        self, seconds: float, first: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = float(seconds)
        self.clock = clock
        self.last = -math.inf if first else clock()

    def __call__(self) -> bool:
        """True (and restart the interval) when the interval has passed."""
        now = self.clock()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False

    def reset(self) -> None:
        """Restart the interval now (e.g. after something else did the job)."""
        self.last = self.clock()
