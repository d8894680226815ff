"""Train ratio: how many updates are owed after so many environment steps."""

from __future__ import annotations


class Ratio:
    """Owns the count of updates done against environment steps seen; survives a resume.

    ``ratio`` is replayed steps per environment step; one update replays
    ``batch_size * batch_length`` steps, so ``updates_per_step = ratio / (B * T)``.
    """

    def __init__(self, ratio: float, batch_steps: int) -> None:
        if ratio < 0 or batch_steps < 1:
            raise ValueError(f"train.ratio must be >= 0 and batch >= 1, got {ratio}, {batch_steps}")
        self.per_step = ratio / batch_steps
        self.done = 0

    def owed(self, env_steps: int) -> int:
        """Updates to run now so that done ~= env_steps * per_step; counts them as done."""
        due = int(env_steps * self.per_step) - self.done
        due = max(due, 0)
        self.done += due
        return due

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = int(state["done"])
