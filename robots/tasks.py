"""Tasks: what a robot's actions mean, its reward and its episodes, apart from its hardware.

A driver (robots/ur5.py, robots/quadruped.py) owns the connection, the health checks and
the hardware limits; a task owns the action space, the extra observations, the reward
and how an action becomes a motion target. The same driver runs any task it is given:

    UR5(config.ur5, task=make_ur5_task(config.ur5, seed), control=..., ...)

UR5 cell tasks (``ur5.task``):
- ``reach``: actions in [-1, 1]^3, a Cartesian step of ``action * max_step`` metres; reward
  is minus the distance from the TCP to a random target inside the workspace, which is
  part of the observation (``target``).
- ``pick_place`` (DayDreamer): one-hot actions over PICK_PLACE_ACTIONS; x/y moves of one
  ``grid`` cell inside the workspace, lower/raise between fixed Z levels, and a gripper
  toggle; +1 for a grasp, -1 for a release over the bin the cube came from, +10 for a
  release over the other bin.

Quadruped task ``walk`` (DayDreamer's A1), see :class:`WalkTask`.

Every task says how its episode went, beside the return: ``episode_info()`` gives figures
of the episode since ``begin()`` (the driver calls it at reset), for the runtime to log with
the episode's return and for bench/learn.py to read: reach ``final_distance`` (metres from
the TCP to the target at the last step), pick_place ``placements`` (releases over the other
bin, the +10 rewards), walk ``forward_velocity`` (m/s, the mean over the episode's ticks).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from daydream.core.spaces import Space

PICK_PLACE_ACTIONS = ("+x", "-x", "+y", "-y", "lower", "raise", "toggle_gripper")
_MOVES = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1)}  # action -> (dx, dy) in grid cells
_GRASPED = 2  # Robotiq OBJ status: stopped on an object while closing


class Cell(Protocol):
    """What a cell task may use of its UR5 driver."""

    low: np.ndarray  # workspace box, metres
    high: np.ndarray
    gripper: Any

    def tcp_position(self) -> np.ndarray: ...

    def move_to(self, position: np.ndarray) -> None: ...


class ReachTask:
    """Owns the reach target and the meaning of a Cartesian step action."""

    name = "reach"

    def __init__(self, max_step: float, seed: int = 0) -> None:
        self.max_step = float(max_step)
        self.act_space = {"action": Space((3,), np.float32, -1.0, 1.0)}
        self.obs_space = {"target": Space((3,), np.float32)}
        self._rng = np.random.default_rng(seed)
        self.target = np.zeros(3)
        self.distance = float("nan")  # from the TCP to the target, at the last reward

    def seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def begin(self, cell: Cell) -> float:
        """A new episode (the arm is home): a new target; returns the first reward."""
        self.target = self._rng.uniform(cell.low, cell.high)
        return self.reward(cell)

    def limit(self, action: np.ndarray, cell: Cell) -> tuple[np.ndarray, list[str]]:
        """The step that keeps the TCP inside the workspace box, as an action."""
        here = cell.tcp_position()
        goal = here + np.asarray(action, np.float64) * self.max_step
        inside = np.clip(goal, cell.low, cell.high)
        if np.array_equal(inside, goal):
            return action, []
        limited = np.clip((inside - here) / self.max_step, -1.0, 1.0).astype(np.float32)
        return limited, ["step shortened at the workspace box"]

    def execute(self, action: np.ndarray, cell: Cell) -> float:
        here = cell.tcp_position()
        cell.move_to(here + np.asarray(action, np.float64) * self.max_step)
        return self.reward(cell)

    def reward(self, cell: Cell) -> float:
        self.distance = float(np.linalg.norm(cell.tcp_position() - self.target))
        return -self.distance

    def observe(self) -> dict[str, np.ndarray]:
        return {"target": self.target.astype(np.float32)}

    def episode_info(self) -> dict[str, float]:
        return {"final_distance": self.distance}


class PickPlaceTask:
    """Owns the grasp state and DayDreamer's discrete grid actions and rewards."""

    name = "pick_place"

    def __init__(self, grid: float, z_levels, rewards: dict, bins) -> None:
        self.grid = float(grid)
        self.z_levels = sorted(float(z) for z in z_levels)
        self.rewards = {k: float(v) for k, v in dict(rewards).items()}
        self.bins = [tuple(map(float, b)) for b in bins]
        self.act_space = {"action": Space((len(PICK_PLACE_ACTIONS),), discrete=True)}
        self.obs_space: dict[str, Space] = {}
        self._closed = self._holding = False
        self._grasp_bin: int | None = None
        self.placements = 0  # releases over the other bin this episode

    def seed(self, seed: int) -> None:
        pass  # nothing random

    def begin(self, cell: Cell) -> float:
        self._closed = self._holding = False
        self._grasp_bin = None
        self.placements = 0
        return 0.0

    def goal(self, index: int, here: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Where a move action takes the TCP: one grid cell in x/y, or the next Z level,
        never beyond the workspace box (a move toward an edge stops at it)."""
        goal = here.copy()
        if index in _MOVES:
            goal[:2] += np.asarray(_MOVES[index]) * self.grid
        else:
            levels = np.asarray(self.z_levels)
            if index == 4:  # lower
                below = levels[levels < here[2] - 1e-3]
                goal[2] = below[-1] if below.size else levels[0]
            else:  # raise
                above = levels[levels > here[2] + 1e-3]
                goal[2] = above[0] if above.size else levels[-1]
        return np.clip(goal, low, high)

    def limit(self, action: np.ndarray, cell: Cell) -> tuple[np.ndarray, list[str]]:
        index = int(np.argmax(action))
        if index == len(PICK_PLACE_ACTIONS) - 1:
            return action, []
        here = cell.tcp_position()
        moved = self.goal(index, here, cell.low, cell.high) - here
        if index in _MOVES and np.abs(moved[:2]).max() < self.grid - 1e-9:
            return action, [f"{PICK_PLACE_ACTIONS[index]} stops at the workspace box"]
        return action, []

    def execute(self, action: np.ndarray, cell: Cell) -> float:
        index = int(np.argmax(action))
        here = cell.tcp_position()
        if index == len(PICK_PLACE_ACTIONS) - 1:
            return self._toggle_gripper(cell, here)
        cell.move_to(self.goal(index, here, cell.low, cell.high))
        return 0.0

    def _bin_of(self, position: np.ndarray) -> int | None:
        for i, (x0, y0, x1, y1) in enumerate(self.bins):
            if x0 <= position[0] <= x1 and y0 <= position[1] <= y1:
                return i
        return None

    def _toggle_gripper(self, cell: Cell, here: np.ndarray) -> float:
        if not self._closed:
            status = cell.gripper.close()
            self._closed = True
            if status == _GRASPED:
                self._holding, self._grasp_bin = True, self._bin_of(here)
                return self.rewards["grasp"]
            return 0.0
        cell.gripper.open()
        self._closed = False
        if not self._holding:
            return 0.0
        self._holding = False
        where = self._bin_of(here)
        if where is None:
            return 0.0
        if where == self._grasp_bin:
            return self.rewards["same_bin"]
        self.placements += 1
        return self.rewards["other_bin"]

    def observe(self) -> dict[str, np.ndarray]:
        return {}

    def episode_info(self) -> dict[str, float]:
        return {"placements": float(self.placements)}


def make_ur5_task(cfg: Any, seed: int = 0) -> ReachTask | PickPlaceTask:
    """The task named by ``ur5.task`` from the ``ur5`` config block (a mapping)."""
    name = cfg["task"]
    if name == "reach":
        return ReachTask(cfg["reach"]["max_step"], seed)
    if name == "pick_place":
        pp = cfg["pick_place"]
        return PickPlaceTask(pp["grid"], pp["z_levels"], pp["rewards"], cfg["bins"])
    raise ValueError(f"unknown ur5 task '{name}'; use pick_place or reach (ur5.task)")


class WalkTask:
    """Owns what a quadruped's action means, its reward and when it has fallen.

    - action: 12 values in [-1, 1]; 0 is the standing pose, +-1 is ``action_fraction`` of
      the way from the standing pose to the upper / lower joint limit (``targets_for``,
      exact and invertible: ``action_for``);
    - reward: upright * (1 + cos(roll) cos(pitch)) / 2
              + forward * clip(forward_velocity / target_speed, -1, 1)
    - episodes of ``episode_length`` ticks, reset-free, never terminal; fallen when
      cos(roll) cos(pitch) < ``upright_threshold``.
    """

    name = "walk"

    def __init__(
        self,
        stand_pose: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        action_fraction: float,
        upright: float,
        forward: float,
        target_speed: float,
        episode_length: int,
        upright_threshold: float,
    ) -> None:
        self.stand_pose = np.asarray(stand_pose, np.float32)
        self.lower, self.upper = np.asarray(lower, np.float32), np.asarray(upper, np.float32)
        self.fraction = float(action_fraction)
        self.w_upright, self.w_forward = float(upright), float(forward)
        self.target_speed = float(target_speed)
        self.episode_length = int(episode_length)
        self.upright_threshold = float(upright_threshold)
        self.act_space = {"action": Space(self.stand_pose.shape, np.float32, -1.0, 1.0)}
        # +1 and -1 reach these distances from the standing pose
        self._up = np.maximum(self.fraction * (self.upper - self.stand_pose), 1e-9)
        self._down = np.maximum(self.fraction * (self.stand_pose - self.lower), 1e-9)
        self._velocity_sum, self._ticks = 0.0, 0  # forward velocity this episode

    def begin(self) -> None:
        """A new episode: its figures start from nothing (the driver calls this at reset)."""
        self._velocity_sum, self._ticks = 0.0, 0

    def targets_for(self, action: np.ndarray) -> np.ndarray:
        """Joint targets of an action in [-1, 1] (no limit applied: that is the driver's)."""
        a = np.asarray(action, np.float32)
        return (self.stand_pose + np.where(a >= 0, a * self._up, a * self._down)).astype(
            np.float32
        )

    def action_for(self, targets: np.ndarray) -> np.ndarray:
        """The action whose targets are ``targets`` (the inverse of ``targets_for``)."""
        d = np.asarray(targets, np.float32) - self.stand_pose
        return np.clip(np.where(d >= 0, d / self._up, d / self._down), -1.0, 1.0).astype(
            np.float32
        )

    def reward(self, imu: np.ndarray, forward_velocity: float) -> float:
        upright = (1.0 + np.cos(imu[0]) * np.cos(imu[1])) / 2.0
        vx = 0.0 if not np.isfinite(forward_velocity) else float(forward_velocity)
        self._velocity_sum += vx
        self._ticks += 1
        forward = np.clip(vx / self.target_speed, -1.0, 1.0) if self.target_speed > 0 else 0.0
        return float(self.w_upright * upright + self.w_forward * forward)

    def fallen(self, imu: np.ndarray) -> bool:
        return float(np.cos(imu[0]) * np.cos(imu[1])) < self.upright_threshold

    def episode_info(self) -> dict[str, float]:
        """The mean forward velocity (m/s) of the ticks rewarded since begin()."""
        mean = self._velocity_sum / self._ticks if self._ticks else float("nan")
        return {"forward_velocity": mean}
