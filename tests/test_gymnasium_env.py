"""Simulated daydream robots as gymnasium environments (robots/gymnasium_env.py)."""

from __future__ import annotations

import time

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from daydream.core.config import load_config
from robots.gymnasium_env import RobotEnv

REACH_VECTORS = ("tcp_pose", "joints", "gripper", "target")


def reach_env(*overrides: str, **kwargs) -> RobotEnv:
    return RobotEnv(load_config("configs/sim_ur5_reach.yaml", overrides=list(overrides)), **kwargs)


def rollout(env: RobotEnv, seed: int, actions: list) -> list:
    obs, _ = env.reset(seed=seed)
    steps = [obs]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        steps.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return steps


def assert_same(a, b) -> None:
    assert gymnasium.utils.env_checker.data_equivalence(a, b, exact=True)


@pytest.mark.parametrize(
    "task, kwargs",
    [
        ("configs/sim_ur5_reach.yaml", {"keys": REACH_VECTORS, "flat": True}),
        ("configs/sim_quadruped.yaml", {}),
        ("configs/pendulum.yaml", {"flat": True}),
    ],
    ids=["sim_ur5_reach", "sim_quadruped", "pendulum"],
)
def test_gymnasiums_env_checker_passes_in_full_determinism_included(task, kwargs, recwarn):
    # made through the registry, so the checker has a spec and compares seeded resets
    with gymnasium.make("daydream/Robot-v0", config=load_config(task), **kwargs) as env:
        check_env(env.unwrapped)
    complaints = [str(w.message) for w in recwarn if "WARN:" in str(w.message)]
    assert not complaints  # gymnasium's logger.warn: "WARN: ..."


@pytest.mark.parametrize(
    "task, kwargs",
    [("configs/sim_ur5_reach_pixels.yaml", {}), ("configs/sim_quadruped.yaml", {})],
    ids=["sim_ur5_reach_with_image", "sim_quadruped"],
)
def test_the_same_seed_gives_the_same_episode_step_for_step(task, kwargs):
    with RobotEnv(load_config(task), **kwargs) as env:
        actions = [env.action_space.sample() for _ in range(15)]
        first = rollout(env, 7, actions)
        rollout(env, 8, actions)  # something else in between
        assert_same(rollout(env, 7, actions), first)


def test_seeds_choose_the_reach_target_and_the_cubes():
    with reach_env() as env:
        a, _ = env.reset(seed=1)
        cubes_a = env.robot.cell.scene.objects.copy()
        b, _ = env.reset(seed=2)
        assert not np.array_equal(a["target"], b["target"])
        assert not np.array_equal(cubes_a, env.robot.cell.scene.objects)
        again, _ = env.reset()  # no seed: the next episode of the same robot, a new target
        assert not np.array_equal(again["target"], b["target"])


def test_actions_pass_the_robots_own_limits_and_info_holds_what_was_executed():
    with reach_env(keys=REACH_VECTORS, flat=True) as env:
        env.reset(seed=0)
        for _ in range(20):  # drive into the top of the workspace box
            _, _, _, _, info = env.step(np.array([0.0, 0.0, 1.0], np.float32))
        top = float(env.robot.high[2])
        assert env.robot.tcp_position()[2] == pytest.approx(top)
        assert info["executed"][2] == pytest.approx(0.0, abs=1e-6)  # shortened to nothing
        _, _, _, _, info = env.step(np.array([5.0, 0.0, 0.0], np.float32))  # beyond the bounds
        assert info["executed"][0] == pytest.approx(1.0)


def test_an_episode_ends_truncated_not_terminated_with_the_robots_figures():
    with reach_env("ur5.episode_length=5", keys=REACH_VECTORS, flat=True) as env:
        env.reset(seed=0)
        task = env.robot.task
        env.robot.episode_info = task.episode_info  # what the robot contract gives
        ends = [env.step(env.action_space.sample())[2:] for _ in range(5)]
        assert [(t, tr) for t, tr, _ in ends] == [(False, False)] * 4 + [(False, True)]
        assert "episode_info" not in ends[0][2]
        assert ends[-1][2]["episode_info"] == {"final_distance": pytest.approx(task.distance)}


def test_a_one_hot_robot_takes_discrete_actions():
    with RobotEnv(load_config("configs/sim_ur5_pick.yaml"), keys=("tcp_pose", "gripper")) as env:
        assert env.action_space == gymnasium.spaces.Discrete(7)
        env.reset(seed=0)
        info = env.step(2)[-1]
        np.testing.assert_array_equal(info["executed"], np.eye(7, dtype=np.float32)[2])


def test_the_robot_is_paused_between_calls_so_the_caller_may_think():
    # the simulated controller stops its script when the watchdog (2 Hz) is not kicked
    with reach_env("sim_ur5.enforce_watchdog=true", keys=REACH_VECTORS, flat=True) as env:
        env.reset(seed=0)
        for _ in range(2):
            time.sleep(0.7)  # longer than the watchdog period
            env.step(env.action_space.sample())
        assert env.robot.cell.controller.program_running


def test_a_real_robot_is_refused():
    config = load_config("configs/ur5_pick.yaml")
    with pytest.raises(ValueError, match="simulated robots only"):
        RobotEnv(config)


def test_flat_observations_refuse_images():
    with pytest.raises(ValueError, match="not"):
        reach_env("ur5.camera.enabled=true", keys=("image", "target"), flat=True)
