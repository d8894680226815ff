"""The robot contract: what the driver really executed is what the actor stores.

The supervisor passes every command through the robot's ``limit_command`` and the driver's
``step`` executes exactly that; the record of the tick holds the executed action, with the
``intervention`` flag when a person's command replaced the policy's.
"""

from __future__ import annotations

import numpy as np
import pytest

import robots
from daydream.core.config import load_config
from daydream.core.spaces import Space, record_spaces
from daydream.runtime.robot_actor import RobotActor
from tests.tiny import tiny_model


class CapturingLink:
    """A link that keeps what the actor sends (the records), for the test to read."""

    def __init__(self) -> None:
        self.chunks: list[dict] = []

    def start(self):
        return self

    def send_chunk(self, chunk):
        self.chunks.append(chunk)

    def report_episode(self, episode_return, length):
        pass

    def tick_done(self):
        pass

    def close(self, grace):
        return {"pending": 0}

    def status(self):
        return {}

    def records(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}


def reach_actor(tmp_path, after_tick=None):
    config = load_config("configs/sim_ur5_reach.yaml", overrides=[
        *tiny_model(), f"logdir={tmp_path}", "actor.chunk_length=1", "ur5.episode_length=25",
    ])  # fmt: skip
    link = CapturingLink()
    actor = RobotActor(config, lambda *_: link, "arm", max_steps=25, after_tick=after_tick)
    return actor, link


def assert_stored_actions_are_the_executed_motion(actor: RobotActor, rec: dict) -> None:
    """tcp_{t+1} = tcp_t + a_t * max_step for every executed tick: the stored a_t moved the arm."""
    step = actor.robot.task.max_step
    executed = ~rec["is_last"][:-1]
    moved = rec["tcp_pose"][1:, :3] - rec["tcp_pose"][:-1, :3]
    np.testing.assert_allclose(
        moved[executed], rec["action"][:-1][executed] * step, atol=2e-4
    )


@pytest.fixture
def push_to_the_corner(monkeypatch):
    """The random policy always asks for +1 on every axis: into the workspace box's faces."""
    monkeypatch.setattr(Space, "sample", lambda self, rng: np.ones(self.shape, self.dtype))


def test_a_command_clamped_at_the_workspace_box_is_stored_as_executed(tmp_path, push_to_the_corner):
    actor, link = reach_actor(tmp_path)
    actor.run()
    rec = link.records()
    executed = ~rec["is_last"]
    assert_stored_actions_are_the_executed_motion(actor, rec)
    # the policy asked for ones all the time; at the box the driver shortened the step, and
    # what was stored is the shortened step, not the request
    assert np.any(rec["action"][executed] < 0.99)
    assert np.all(rec["action"][executed] <= 1.0)
    assert np.all(rec["intervention"] == 0)


def test_a_persons_override_is_stored_as_the_executed_command_with_the_flag(
    tmp_path, push_to_the_corner
):
    def take_over():  # from the first tick on, a person drives toward -x at full speed
        actor.sup.set_override(True, action=np.array([-1.0, 1.0, 1.0], np.float32))

    actor, link = reach_actor(tmp_path, after_tick=take_over)
    actor.run()
    rec = link.records()
    executed = ~rec["is_last"]
    assert_stored_actions_are_the_executed_motion(actor, rec)
    flags = rec["intervention"][executed]
    assert flags[0] == 0 and np.all(flags[1:] == 1)  # the policy's first tick, then the person
    person = rec["action"][executed][1:]
    # home is 8 steps of 2 cm from the -x face: executed as asked until the face shortened it
    assert np.all(person[:5, 0] == -1.0) and np.any(person[:, 0] > -0.99)
    assert np.any(person[:, 1:] < 0.99)  # the +y/+z faces shortened the person's command too


def test_the_records_have_the_layout_record_spaces_defines(tmp_path, push_to_the_corner):
    actor, link = reach_actor(tmp_path)
    actor.run()
    rec = link.records()
    spaces = record_spaces(*robots.spaces("sim_ur5", actor.config))
    assert set(rec) == set(spaces)
    for key, space in spaces.items():
        assert rec[key].dtype == space.dtype and rec[key].shape[1:] == space.shape, key
