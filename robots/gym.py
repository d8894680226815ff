"""Any gymnasium environment as a robot: how users bring their own simulator.

Observations: ``state`` (the environment's vector observation, float32) and/or
``image`` (the rendered frame resized to ``gym.image_size``, uint8), chosen by
``gym.obs``. Box actions are exposed in [-1, 1] and rescaled to the environment's
bounds; Discrete actions are exposed as one-hot vectors.
"""

from __future__ import annotations

import cv2
import gymnasium
import numpy as np

from daydream.core.spaces import Space, step_spaces
from robots.base import Robot


class GymRobot(Robot):
    """Owns one gymnasium environment and converts it to the robot interface."""

    simulated = True

    def __init__(
        self,
        env_id: str,
        obs: str = "vector",
        image_size: tuple[int, int] = (64, 64),
        action_repeat: int = 1,
        time_limit: int = 0,
        seed: int = 0,
    ) -> None:
        if obs not in ("vector", "image", "both"):
            raise ValueError(f"gym.obs must be vector, image or both, got {obs!r}")
        self.env_id, self.obs_mode = env_id, obs
        self.image_size = tuple(int(s) for s in image_size)
        self.action_repeat, self.seed = int(action_repeat), seed
        kwargs = {"render_mode": "rgb_array"} if obs != "vector" else {}
        if time_limit:
            kwargs["max_episode_steps"] = int(time_limit)
        try:
            self.env = gymnasium.make(env_id, **kwargs)
        except gymnasium.error.Error as e:
            raise ValueError(
                f"gymnasium cannot make '{env_id}': {e} (try --set gym.env=Pendulum-v1)"
            ) from e
        space = self.env.observation_space
        self.obs_space = dict(step_spaces())
        if obs in ("vector", "both"):
            if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
                raise ValueError(
                    f"{env_id} has no vector observation ({space}); use --set gym.obs=image"
                )
            self.obs_space["state"] = Space(space.shape, np.float32)
        if obs in ("image", "both"):
            self.obs_space["image"] = Space((*self.image_size, 3), np.uint8)
        act = self.env.action_space
        if isinstance(act, gymnasium.spaces.Discrete):
            self.act_space = {"action": Space((int(act.n),), np.float32, 0.0, 1.0, discrete=True)}
        elif isinstance(act, gymnasium.spaces.Box) and len(act.shape) == 1:
            self.act_space = {"action": Space(act.shape, np.float32, -1.0, 1.0)}
            self._low, self._high = act.low.astype(np.float64), act.high.astype(np.float64)
        else:
            raise ValueError(
                f"{env_id}: only Discrete and 1-D Box action spaces are supported, got {act}"
            )
        self._episodes = 0

    def connect(self) -> None:
        pass

    def _obs(self, raw, reward: float, first: bool, last: bool, terminal: bool) -> dict:
        obs = {
            "reward": np.float32(reward),
            "is_first": np.bool_(first),
            "is_last": np.bool_(last),
            "is_terminal": np.bool_(terminal),
        }
        if "state" in self.obs_space:
            obs["state"] = np.asarray(raw, np.float32)
        if "image" in self.obs_space:
            frame = self.env.render()
            obs["image"] = cv2.resize(frame, self.image_size[::-1], interpolation=cv2.INTER_AREA)
        return obs

    def reset(self) -> dict[str, np.ndarray]:
        raw, _ = self.env.reset(seed=self.seed + self._episodes)
        self._episodes += 1
        return self._obs(raw, 0.0, True, False, False)

    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a = np.asarray(action["action"])
        if self.act_space["action"].discrete:
            env_action = int(np.argmax(a))
        else:
            a = np.clip(a, -1.0, 1.0)
            env_action = (self._low + (a + 1.0) * 0.5 * (self._high - self._low)).astype(np.float32)
        total = 0.0
        for _ in range(self.action_repeat):
            raw, reward, terminated, truncated, _ = self.env.step(env_action)
            total += float(reward)
            if terminated or truncated:
                break
        return self._obs(raw, total, False, terminated or truncated, terminated)

    def stop(self, hard: bool = False) -> None:
        pass  # a simulation has nothing to halt

    def disconnect(self) -> None:
        self.env.close()


def make_gym_robot(config, **_) -> GymRobot:
    g = config.gym
    return GymRobot(g.env, g.obs, tuple(g.image_size), g.action_repeat, g.time_limit, config.seed)


def gym_spaces(config) -> tuple[dict[str, Space], dict[str, Space]]:
    """The spaces of the configured environment (gymnasium has to make it to know them; no
    hardware is involved, and it is closed again at once)."""
    robot = make_gym_robot(config)
    try:
        return dict(robot.obs_space), dict(robot.act_space)
    finally:
        robot.disconnect()
