"""The robot interface every driver implements, real or simulated.

A robot declares its observation and action spaces before it connects, so that the
agent can be built (and a checkpoint checked) without touching hardware.

Observations are flat dicts of numpy arrays. Every observation carries:
    reward       float32 ()   reward for arriving in this state
    is_first     bool    ()   first step of an episode (the model resets its state)
    is_last      bool    ()   last step of an episode (call reset() next)
    is_terminal  bool    ()   the episode ended in a terminal state (no bootstrapping)
plus the robot's sensors: images as (H, W, C) uint8, vectors as (N,) float32.

Actions are a dict with the key ``action``: a float32 vector in [low, high] for
continuous robots, or a one-hot float32 vector of length N for discrete robots.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

STEP_KEYS = ("reward", "is_first", "is_last", "is_terminal")


@dataclass(frozen=True)
class Space:
    """Shape, dtype and bounds of one array in an observation or action."""

    shape: tuple[int, ...]
    dtype: np.dtype = field(default=np.dtype(np.float32))
    low: float | np.ndarray | None = None
    high: float | np.ndarray | None = None
    discrete: bool = False  # actions only: one-hot over shape[0] choices

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3 and self.dtype == np.uint8

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random value of this space (one-hot for discrete spaces)."""
        if self.discrete:
            out = np.zeros(self.shape, self.dtype)
            out[rng.integers(self.shape[0])] = 1
            return out
        low = -1.0 if self.low is None else self.low
        high = 1.0 if self.high is None else self.high
        return rng.uniform(low, high, self.shape).astype(self.dtype)


def step_spaces() -> dict[str, Space]:
    """The spaces of the keys every observation carries."""
    return {
        "reward": Space((), np.float32),
        "is_first": Space((), bool),
        "is_last": Space((), bool),
        "is_terminal": Space((), bool),
    }


class ObservationError(ValueError):
    """An observation that does not match the robot's declared space."""


def validate(
    values: dict[str, np.ndarray], spaces: dict[str, Space], what: str = "observation"
) -> None:
    """Raise ObservationError naming the key, expected and actual shape/dtype on a mismatch."""
    missing = set(spaces) - set(values)
    if missing:
        raise ObservationError(f"{what} is missing keys {sorted(missing)}")
    for key, space in spaces.items():
        value = np.asarray(values[key])
        if value.shape != space.shape:
            raise ObservationError(
                f"{what} key '{key}' has shape {value.shape}, expected {space.shape}"
            )
        if value.dtype != space.dtype:
            raise ObservationError(
                f"{what} key '{key}' has dtype {value.dtype}, expected {space.dtype} "
                f"(shape {space.shape})"
            )


class RobotFault(RuntimeError):
    """The robot cannot go on safely: the safety supervisor latches its stop on this."""


class ProtectiveStop(RobotFault):
    """The controller entered a protective or emergency stop."""


class ConnectionLost(RobotFault):
    """The link to the controller or board is gone, or its state stopped updating."""


class LimitViolation(ValueError):
    """A command the robot refuses outright (for example a target outside its joint limits).

    Raised by :meth:`Robot.limit_command`; the safety supervisor does not execute the
    command, counts and logs the refusal, and holds the previous command instead.
    """


class Robot(abc.ABC):
    """A robot (or simulated robot): its spaces, its connection, and how it stops.

    Subclasses own their hardware connection. Usable as a context manager:
    ``with make(...) as robot: obs = robot.reset()``.
    """

    #: observation spaces, including the step keys (reward, is_first, ...)
    obs_space: dict[str, Space]
    #: action spaces: {"action": Space}
    act_space: dict[str, Space]
    #: seconds per control tick (the rate the driver expects to be stepped at)
    control_period: float = 0.0

    @abc.abstractmethod
    def connect(self) -> None:
        """Open connections to the hardware or simulation."""

    @abc.abstractmethod
    def reset(self) -> dict[str, np.ndarray]:
        """Start an episode and return its first observation (is_first=True)."""

    @abc.abstractmethod
    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute one action and return the next observation."""

    @abc.abstractmethod
    def stop(self, hard: bool = False) -> None:
        """Bring the robot to a safe stop. Idempotent and callable from any thread."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop safely and close connections."""

    def limit_command(
        self, action: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Apply this robot's own limits (workspace box, joint limits, tool speed) to a command.

        Called by the safety supervisor after its generic limits (action bounds, per-step
        change) and right before :meth:`step`. Returns the possibly clamped action and
        human-readable notes on what was changed (empty when nothing was). Raise
        :class:`LimitViolation` to refuse the command. The default passes it through.
        """
        return action, []

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
