"""What each task reports about its episode (robots/tasks.py ``episode_info``): the figures
bench/learn.py prints beside the return, checked on small stand-in cells."""

from __future__ import annotations

import numpy as np
import pytest

from robots.tasks import PickPlaceTask, ReachTask, WalkTask


class FakeGripper:
    def __init__(self) -> None:
        self.holding = False

    def close(self) -> int:
        return 2 if self.holding else 3  # Robotiq OBJ: 2 stopped on an object, 3 fully closed

    def open(self) -> None:
        pass


class FakeCell:
    """A TCP that goes where it is told inside the box: what a cell task may use of a driver."""

    def __init__(self) -> None:
        self.low, self.high = np.array([0.3, -0.28, 0.03]), np.array([0.62, 0.28, 0.3])
        self.here = np.array([0.46, 0.0, 0.15])
        self.gripper = FakeGripper()

    def tcp_position(self) -> np.ndarray:
        return self.here.copy()

    def move_to(self, position: np.ndarray) -> None:
        self.here = np.asarray(position, np.float64)


def test_reach_reports_the_distance_to_the_target_at_the_last_step():
    task, cell = ReachTask(max_step=0.02, seed=3), FakeCell()
    task.begin(cell)
    for _ in range(5):
        reward = task.execute(np.sign(task.target - cell.here).astype(np.float32), cell)
    assert task.episode_info() == {"final_distance": pytest.approx(-reward)}
    assert task.episode_info()["final_distance"] == pytest.approx(
        np.linalg.norm(cell.here - task.target)
    )


def test_pick_place_counts_the_releases_over_the_other_bin_and_starts_again_at_begin():
    bins = [[0.34, -0.26, 0.58, -0.04], [0.34, 0.04, 0.58, 0.26]]
    rewards = {"grasp": 1.0, "same_bin": -1.0, "other_bin": 10.0}
    task, cell = PickPlaceTask(0.04, [0.03, 0.15], rewards, bins), FakeCell()
    toggle = np.eye(7, dtype=np.float32)[6]
    task.begin(cell)
    earned = []
    for y_grasp, y_release in ((-0.15, 0.15), (-0.15, -0.10), (0.15, -0.15)):
        cell.here, cell.gripper.holding = np.array([0.46, y_grasp, 0.03]), True
        earned.append(task.execute(toggle, cell))
        cell.here = np.array([0.46, y_release, 0.03])
        earned.append(task.execute(toggle, cell))
    assert earned == [1.0, 10.0, 1.0, -1.0, 1.0, 10.0]
    assert task.episode_info() == {"placements": 2.0}
    task.begin(cell)
    assert task.episode_info() == {"placements": 0.0}


def test_walk_reports_the_mean_forward_velocity_since_begin():
    n = 12
    task = WalkTask(np.zeros(n), -np.ones(n), np.ones(n), 0.5, 1.0, 1.0, 0.5, 1000, 0.5)
    level = np.zeros(5, np.float32)
    task.reward(level, 3.0)  # the episode before
    task.begin()
    for vx in (0.1, 0.3, float("nan"), 0.4):  # a non-finite reading counts as standing still
        task.reward(level, vx)
    assert task.episode_info() == {"forward_velocity": pytest.approx(0.2)}
