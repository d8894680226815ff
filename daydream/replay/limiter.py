"""The samples-per-insert limiter: how far the learner may replay ahead of the robots.

Reverb's rate limiter, reduced to what daydream needs: it only ever makes *sampling*
wait, never inserting (a real robot never waits for the learner). Plain class, not
thread-safe: ``ReplayService`` holds it under its lock.
"""

from __future__ import annotations


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

    def load_state(self, sampled: int) -> None:
        """Restore the sampled count after a restart (the learner's checkpoint holds it), so a
        resumed learner does not replay ``ratio`` times the whole reloaded replay at once."""
        self.sampled = int(sampled)
