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

    def report_episode(self, episode_return, length, info=None):
        pass

    def tick_done(self):
        pass

    def behind(self):
        return 0

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


def test_the_model_is_fed_the_executed_action_not_the_proposal(tmp_path):
    """With a person's override active, the recurrent state after a tick is the one computed
    from the executed action: a_{t-1} in h_t = f(h_{t-1}, z_{t-1}, a_{t-1}) is what was done."""
    import torch

    from daydream.agent.agent import Agent

    person = np.array([-1.0, 0.5, -0.25], np.float32)

    def take_over():
        actor.sup.set_override(True, action=person)

    actor, link = reach_actor(tmp_path, after_tick=take_over)
    actor.mode = "eval"  # deterministic latents: the test recomputes them
    actor.max_steps = 6
    learner = Agent(actor.robot.obs_space, actor.robot.act_space, actor.config, device="cpu")
    weights = learner.policy_weights()
    weights.version = 1
    actor.slots.stage(weights)
    actor.run()
    rec = link.records()
    agent, _ = actor.slots.current()
    steps = int((~rec["is_last"]).sum())
    assert steps == 6 and np.all(rec["intervention"][1:steps] == 1)

    def replay_state(use_executed: bool):
        state = None
        for t in range(steps):
            obs = {k: rec[k][t] for k in rec if k not in ("action", "intervention")}
            proposal, state = agent.policy(obs, state, mode="eval")
            if use_executed:
                state = (state[0], torch.as_tensor(rec["action"][t])[None])
        return state

    expected, fed_proposals = replay_state(True), replay_state(False)
    latent, action = actor.state
    torch.testing.assert_close(action, expected[1])
    for key in latent:
        torch.testing.assert_close(latent[key], expected[0][key])
    # and the test can tell: feeding the proposals gives another state
    assert not torch.allclose(fed_proposals[0]["deter"], expected[0]["deter"])


# ---------------------------------------------------------------- holding the training ratio
class BehindLink(CapturingLink):
    """A learner that says it is far behind its ratio until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.release = threading.Event()

    def behind(self) -> int:
        return 0 if self.release.is_set() else 10_000


def make_real_pendulum(config, **_):
    robot = robots.make("gym", config)
    robot.simulated = False  # as a real robot declares itself
    return robot


def pendulum_actor(tmp_path, robot_name: str, link: BehindLink) -> RobotActor:
    config = load_config("configs/pendulum.yaml", overrides=[
        *tiny_model(), f"logdir={tmp_path}", "actor.chunk_length=4", "actor.period_s=0.002",
        "safety.watchdog_deadline_s=0.2",
    ])  # fmt: skip
    return RobotActor(config, lambda *_: link, "arm", robot_name=robot_name, max_steps=100)


def run_in_thread(actor: RobotActor):
    import threading

    thread = threading.Thread(target=actor.run, daemon=True)
    thread.start()
    return thread


def test_a_simulated_robot_waits_while_the_learner_is_behind_and_its_watchdog_does_not_fire(
    tmp_path,
):
    import time

    link = BehindLink()
    actor = pendulum_actor(tmp_path, "gym", link)
    thread = run_in_thread(actor)
    time.sleep(1.0)  # five watchdog deadlines
    waited_at = actor.steps
    assert waited_at <= 1  # one tick, then it waits for the learner
    link.release.set()
    thread.join(timeout=30)
    assert actor.steps == 100
    assert actor.held_s >= 0.8
    assert not actor.sup.stopped  # paused while waiting: no false watchdog stop


def test_a_real_robot_keeps_its_rate_whatever_the_learner_says(tmp_path, monkeypatch):
    import time

    monkeypatch.setitem(robots.REGISTRY, "real_pendulum",
                        ("tests.test_robot_contract:make_real_pendulum", "robots.gym:gym_spaces"))
    link = BehindLink()
    actor = pendulum_actor(tmp_path, "real_pendulum", link)
    t0 = time.monotonic()
    run_in_thread(actor).join(timeout=30)
    assert actor.steps == 100 and actor.held_s == 0.0
    assert time.monotonic() - t0 < 5.0


def test_two_simulated_robots_draw_different_targets(tmp_path):
    overrides = [*tiny_model(), f"logdir={tmp_path}"]
    config = load_config("configs/sim_ur5_reach.yaml", overrides=overrides)
    targets = []
    for actor_id in ("actor-0", "actor-1"):
        actor = RobotActor(config, lambda *_: CapturingLink(), actor_id)
        with actor.robot:
            actor.robot.reset()
            targets.append(actor.robot.task.target.copy())
    assert not np.allclose(targets[0], targets[1])
    assert config.seed == 0  # the caller's config is not changed
