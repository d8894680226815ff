"""A simulated daydream robot as a ``gymnasium.Env``: model-free learners (bench/baseline.py)
and gymnasium's tools on the very robots and driver code the world models learn on.

    env = RobotEnv(config)                                          # Dict: every sensor
    env = RobotEnv(config, keys=("tcp_pose", "target"), flat=True)  # one Box of vector keys
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

What each gymnasium notion is on the robot contract (robots/base.py):

    observation    the robot's sensors, without the step keys: a Dict of ``keys`` (default
                   every sensor), or with ``flat`` their vectors concatenated in ``keys``
                   order into one float32 Box (what an MLP policy takes)
    action         a Box of the robot's action space, or Discrete(n) for a one-hot robot;
                   clipped to the action bounds, then through ``robot.limit_command`` and
                   exactly that to ``robot.step``, as under the safety supervisor
    reward         the observation's reward (for arriving in it)
    terminated     is_terminal
    truncated      is_last and not is_terminal
    info           ``executed``: the action the robot executed; at the end of an episode also
                   ``episode_info``: the robot's figures of it (``Robot.episode_info()``, e.g.
                   the reach task's final_distance) where the robot gives them
    reset(seed=s)  the robot is built anew from the config with ``seed: s`` (its cubes,
                   targets and physics all follow the config's seed) and connected and reset
                   while paused, so the same seed gives the same episode, step for step;
                   reset() alone starts the robot's next one
    between calls  the robot is paused (``Robot.paused``: no time passes for it, its
                   watchdog and board timeout wait), so the caller may think as long as it
                   likes between two steps, as the learner does in ``daydream train``

Only simulated robots (``Robot.simulated``): nothing here is the safety supervisor (no
teleoperation, watchdog or latched stop), so a real robot is refused; it runs under
``daydream actor`` or ``daydream drive``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np

import robots
from daydream.core.spaces import STEP_KEYS, Space
from robots.base import Robot

_FLOAT_MAX = float(np.finfo(np.float32).max)  # the bound of a vector the robot leaves unbounded


def _bounds(space: Space) -> tuple[np.ndarray, np.ndarray]:
    if space.is_image:
        return np.zeros(space.shape, np.uint8), np.full(space.shape, 255, np.uint8)
    low = -_FLOAT_MAX if space.low is None else space.low
    high = _FLOAT_MAX if space.high is None else space.high
    return (np.broadcast_to(np.asarray(low, space.dtype), space.shape),
            np.broadcast_to(np.asarray(high, space.dtype), space.shape))  # fmt: skip


def box(space: Space) -> gymnasium.spaces.Box:
    """The gymnasium Box of a daydream Space."""
    low, high = _bounds(space)
    return gymnasium.spaces.Box(low, high, space.shape, space.dtype)


class RobotEnv(gymnasium.Env):
    """Owns one simulated robot (rebuilt on a seeded reset) and converts its contract to
    gymnasium's. See the module docstring for the mapping."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        config: Any,
        robot: str | None = None,
        keys: Sequence[str] | None = None,
        flat: bool = False,
    ) -> None:
        self.config = config
        self.robot_name = robot or str(config.robot.name)
        obs_space, act_space = robots.spaces(self.robot_name, config)
        sensors = {k: v for k, v in obs_space.items() if k not in STEP_KEYS}
        self.keys = tuple(keys) if keys is not None else tuple(sensors)
        unknown = [k for k in self.keys if k not in sensors]
        if unknown:
            raise ValueError(
                f"robot '{self.robot_name}' has no observation {unknown}; it has {sorted(sensors)}"
            )
        self.flat = bool(flat)
        chosen = {k: sensors[k] for k in self.keys}
        if self.flat:
            not_vectors = [k for k, s in chosen.items() if len(s.shape) != 1]
            if not_vectors:
                raise ValueError(
                    f"flat=True concatenates vectors; {not_vectors} are not (leave them out of "
                    "keys, or use the Dict observation)"
                )
            bounds = [_bounds(s) for s in chosen.values()]
            self.observation_space = gymnasium.spaces.Box(
                np.concatenate([lo for lo, _ in bounds]).astype(np.float32),
                np.concatenate([hi for _, hi in bounds]).astype(np.float32),
                dtype=np.float32,
            )
        else:
            self.observation_space = gymnasium.spaces.Dict({k: box(s) for k, s in chosen.items()})
        self._act = act_space["action"]
        if self._act.discrete:
            self.action_space = gymnasium.spaces.Discrete(self._act.shape[0])
        else:
            self.action_space = box(self._act)
        self.robot: Robot | None = None
        self._connected = False
        self._pause: Any = None  # the robot's paused() context while the caller has control
        self._build(int(config.seed))

    # ------------------------------------------------------------ the robot
    def _build(self, seed: int) -> None:
        """A fresh robot whose randomness all follows ``seed``."""
        self.close()
        config = copy.deepcopy(self.config)
        config.seed = seed
        robot = robots.make(self.robot_name, config)
        if not robot.simulated:
            robot.disconnect()
            raise ValueError(
                f"robot '{self.robot_name}' is real: RobotEnv runs simulated robots only (a real "
                "robot's commands pass the safety supervisor: daydream actor or daydream drive)"
            )
        self.robot = robot

    def _hold(self) -> None:
        """Pause the robot until the next call (the caller has control)."""
        if self._pause is None:
            self._pause = self.robot.paused()
            self._pause.__enter__()

    def _release(self) -> None:
        if self._pause is not None:
            pause, self._pause = self._pause, None
            pause.__exit__(None, None, None)

    def close(self) -> None:
        if self.robot is not None:
            self._release()
            self.robot.disconnect()
            self.robot, self._connected = None, False

    # ------------------------------------------------------------ gymnasium
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self.robot is None:
            self._build(int(self.config.seed) if seed is None else int(seed))
        self._hold()  # connect and reset with the simulation's clock stopped
        if not self._connected:
            self.robot.connect()
            self._connected = True
        return self._observation(self.robot.reset()), {}

    def step(self, action):
        if self.robot is None:
            raise RuntimeError("RobotEnv is closed (or was never reset); call reset() first")
        command = {"action": self._command(action)}
        self._release()
        try:
            executed, _ = self.robot.limit_command(command)
            obs = self.robot.step(executed)
        finally:
            self._hold()
        info: dict[str, Any] = {"executed": np.array(executed["action"], np.float32)}
        terminated, last = bool(obs["is_terminal"]), bool(obs["is_last"])
        if last and hasattr(self.robot, "episode_info"):
            info["episode_info"] = dict(self.robot.episode_info())
        truncated = last and not terminated
        return self._observation(obs), float(obs["reward"]), terminated, truncated, info

    def _command(self, action) -> np.ndarray:
        if self._act.discrete:
            return np.eye(self._act.shape[0], dtype=np.float32)[int(action)]
        low, high = self.action_space.low, self.action_space.high
        return np.clip(np.asarray(action, np.float32), low, high)

    def _observation(self, obs: dict[str, np.ndarray]):
        if self.flat:
            return np.concatenate([np.asarray(obs[k], np.float32).ravel() for k in self.keys])
        return {k: np.array(obs[k], self.observation_space[k].dtype) for k in self.keys}


gymnasium.register("daydream/Robot-v0", entry_point=RobotEnv, nondeterministic=False)
