"""Spaces and the step record: what an observation, an action and a stored step hold.

Observations are flat dicts of numpy arrays. Every observation carries the step keys
(``STEP_KEYS``)::

    reward       float32 ()   reward for arriving in this state
    is_first     bool    ()   first step of an episode (the model resets its state)
    is_last      bool    ()   last step of an episode (reset() comes next)
    is_terminal  bool    ()   the episode ended in a terminal state (no bootstrapping)

plus the robot's sensors: images as (H, W, C) uint8, vectors as (N,) float32.
Actions are a dict with the key ``action``: a float32 vector in [low, high] for
continuous robots, or a one-hot float32 vector of length N for discrete robots.

A *record* is what the replay stores for one step t, the same in every runtime::

    {**o_t, "action": a_t executed at o_t, "intervention": 1.0 if a person's command}

(the last record of an episode holds a zero action). ``record_spaces`` and
``make_record`` are the one definition of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STEP_KEYS = ("reward", "is_first", "is_last", "is_terminal")
#: keys a record adds to the observation
RECORD_KEYS = ("action", "intervention")


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

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)


def step_spaces() -> dict[str, Space]:
    """The spaces of the keys every observation carries."""
    return {
        "reward": Space((), np.float32),
        "is_first": Space((), bool),
        "is_last": Space((), bool),
        "is_terminal": Space((), bool),
    }


def record_spaces(obs_space: dict[str, Space], act_space: dict[str, Space]) -> dict[str, Space]:
    """The keys of one stored step: the observation, the executed action, the intervention flag."""
    return {
        **obs_space,
        "action": act_space["action"],
        "intervention": Space((), np.float32, 0.0, 1.0),
    }


def make_record(
    obs: dict[str, np.ndarray], action: np.ndarray | None, space: Space, intervention: bool
) -> dict[str, np.ndarray]:
    """The record of step t: ``o_t``, the action executed at it (None: zeros, an episode's
    last record) and whether a person's command replaced the policy's."""
    action = space.zeros() if action is None else np.asarray(action, space.dtype)
    return {**obs, "action": action, "intervention": np.float32(intervention)}


def nonfinite_keys(values: dict[str, np.ndarray]) -> list[str]:
    """The keys whose floating-point values hold a NaN or an infinity."""
    bad = []
    for key, value in values.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            bad.append(key)
    return bad


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


def space_to_dict(space: Space) -> dict:
    """A plain (JSON- and msgpack-able) description of a space."""

    def bound(b):
        return None if b is None else np.asarray(b, np.float64).tolist()

    return {
        "shape": list(space.shape),
        "dtype": space.dtype.str,
        "low": bound(space.low),
        "high": bound(space.high),
        "discrete": space.discrete,
    }


def space_from_dict(d: dict) -> Space:
    return Space(tuple(d["shape"]), np.dtype(d["dtype"]), d["low"], d["high"], d["discrete"])


def spaces_to_dict(spaces: dict[str, Space]) -> dict:
    return {k: space_to_dict(v) for k, v in spaces.items()}


def spaces_from_dict(d: dict) -> dict[str, Space]:
    return {k: space_from_dict(v) for k, v in d.items()}
