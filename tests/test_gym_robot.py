"""Any gymnasium environment as a robot: spaces, observations, action conversion."""

from __future__ import annotations

import numpy as np
import pytest

from daydream.core.spaces import validate
from robots.gym import GymRobot


def test_vector_and_image_observations_match_the_declared_spaces():
    with GymRobot("Pendulum-v1", obs="both", image_size=(32, 48)) as robot:
        assert robot.obs_space["image"].shape == (32, 48, 3)
        obs = robot.reset()
        validate(obs, robot.obs_space)
        assert obs["is_first"] and not obs["is_last"]
        assert obs["image"].std() > 0  # a rendered frame, not a blank one
        obs = robot.step({"action": np.zeros(1, np.float32)})
        validate(obs, robot.obs_space)
        assert not obs["is_first"]


def test_box_actions_in_minus_one_one_are_rescaled_to_the_environment_bounds():
    robot = GymRobot("Pendulum-v1")  # torque bounds [-2, 2]
    assert robot.act_space["action"].low == -1.0 and robot.act_space["action"].high == 1.0
    robot.reset()
    sent = []
    original = robot.env.step
    robot.env.step = lambda a: (sent.append(np.array(a)), original(a))[1]
    robot.step({"action": np.array([1.0], np.float32)})
    robot.step({"action": np.array([-0.5], np.float32)})
    robot.step({"action": np.array([7.0], np.float32)})  # clipped to the bound
    np.testing.assert_allclose(np.concatenate(sent), [2.0, -1.0, 2.0])


def test_discrete_actions_are_one_hot_and_episodes_end_with_is_last():
    robot = GymRobot("CartPole-v1", time_limit=20)
    space = robot.act_space["action"]
    assert space.discrete and space.shape == (2,)
    obs = robot.reset()
    for _ in range(25):
        obs = robot.step({"action": np.array([0.0, 1.0], np.float32)})
        if obs["is_last"]:
            break
    assert obs["is_last"]


def test_unknown_environment_says_what_to_try():
    with pytest.raises(ValueError, match="Pendulum-v1"):
        GymRobot("NoSuchEnv-v0")
