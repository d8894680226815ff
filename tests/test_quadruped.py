"""The quadruped driver against the virtual servo board over a real pseudo-terminal,
with MuJoCo physics behind the board."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import serial

import robots
from daydream.core.config import load_config
from daydream.core.spaces import validate
from robots import protocol as P
from robots.base import ConnectionLost, RobotFault
from robots.quadruped import Quadruped


def make(*overrides: str) -> Quadruped:
    config = load_config(overrides=["robot.name=sim_quadruped", *overrides])
    return robots.make("sim_quadruped", config)


@pytest.fixture
def robot():
    r = make("sim_quadruped.board_timeout_s=0.3")
    r.connect()
    yield r
    r.disconnect()


def board_of(robot: Quadruped):
    return robot.companion.board


def physics_of(robot: Quadruped):
    return robot.companion.physics


def zero() -> dict[str, np.ndarray]:
    return {"action": np.zeros(12, np.float32)}


def wait_for(condition, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_driver_opens_the_pty_with_pyserial_and_arms_the_board_timeout(robot):
    board = board_of(robot)
    assert robot.port == board.port and robot.port.startswith("/dev/")
    assert isinstance(robot._serial, serial.Serial)
    assert board.timeout == pytest.approx(0.3)
    assert board.timeout_action == P.TimeoutAction.RELAX
    assert board.commands[P.MsgType.SET_TIMEOUT] == 1
    assert board.commands[P.MsgType.GAINS] == 1
    assert np.allclose(board.kp, 1000.0)


def test_observations_match_the_declared_spaces_and_episodes_are_reset_free():
    r = make("quadruped.episode_length=5")
    with r:
        obs = r.reset()
        validate(obs, r.obs_space)
        assert obs["is_first"] and not obs["is_last"]
        rng = np.random.default_rng(0)
        for t in range(1, 6):
            obs = execute(r, {"action": r.act_space["action"].sample(rng)})
            validate(obs, r.obs_space)
            assert not obs["is_first"] and not obs["is_terminal"]
            assert bool(obs["is_last"]) == (t == 5)
        x_before = physics_of(r).data.qpos[0]
        obs = r.reset()  # reset-free: the robot is not moved back
        assert physics_of(r).data.qpos[0] == x_before
        assert obs["is_first"]


def test_standing_still_earns_the_upright_reward(robot):
    robot.reset()
    for _ in range(20):
        obs = execute(robot, zero())
    assert 0.95 < obs["reward"] < 1.1  # upright ~1, forward velocity ~0
    assert abs(obs["imu"][0]) < 0.1 and abs(obs["imu"][1]) < 0.1


def execute(robot, action: dict) -> dict:
    """What the safety supervisor does: the robot's own limits, then exactly that command."""
    limited, _ = robot.limit_command(action)
    return robot.step(limited)


def test_actions_become_targets_within_limits_and_per_step_change(robot):
    robot.reset()
    board = board_of(robot)
    previous = board.targets.copy()
    for _ in range(30):
        execute(robot, {"action": np.ones(12, np.float32)})
        assert np.all(np.abs(board.targets - previous) <= robot.max_delta + 1e-6)
        assert np.all(board.targets >= robot.lower - 1e-6)
        assert np.all(board.targets <= robot.upper + 1e-6)
        previous = board.targets.copy()
    # after enough ticks the target reaches action_fraction of the way to the upper limit
    expected = robot.stand_pose + robot.task.fraction * (robot.upper - robot.stand_pose)
    assert np.allclose(board.targets, expected, atol=1e-5)


def test_the_limited_action_is_the_one_whose_targets_the_board_gets(robot):
    robot.reset()
    board = board_of(robot)
    limited, notes = robot.limit_command({"action": np.ones(12, np.float32)})
    assert notes  # a jump to +1 is beyond max_delta from the standing pose
    assert np.all(limited["action"] < 1.0)
    robot.step(limited)
    np.testing.assert_allclose(board.targets, robot.task.targets_for(limited["action"]), atol=1e-5)


def test_step_refuses_targets_beyond_max_delta_instead_of_clamping_them(robot):
    robot.reset()
    board = board_of(robot)
    before = board.commands[P.MsgType.TARGETS]
    with pytest.raises(RobotFault, match="max_delta"):
        robot.step({"action": np.ones(12, np.float32)})  # skipped limit_command
    assert board.commands[P.MsgType.TARGETS] == before  # nothing was sent


def test_board_times_out_into_relax_when_commands_stop_and_reset_recovers(robot):
    robot.reset()
    for _ in range(5):
        execute(robot, zero())
    board = board_of(robot)
    before = physics_of(robot).body_height()
    assert wait_for(lambda: board.timed_out, timeout=2.0)
    assert board.mode == P.Status.RELAXED
    assert np.all(physics_of(robot).model.actuator_gainprm[:, 0] == 0)  # no servo torque
    time.sleep(0.4)  # relaxed servos: the robot sags under its weight in real time
    assert physics_of(robot).body_height() < before - 0.05
    with pytest.raises(ConnectionLost, match="timed out"):
        execute(robot, zero())
    robot.reset()
    assert board.mode == P.Status.ACTIVE and not board.timed_out
    execute(robot, zero())


def test_no_simulated_time_passes_on_a_paused_board_even_relaxed(robot):
    board, physics = board_of(robot), physics_of(robot)
    assert board.mode == P.Status.RELAXED  # connected, not yet reset: the physics runs free
    with robot.paused():
        before = physics.time
        time.sleep(0.2)  # ten control periods of wall time
        assert physics.time == before
    assert wait_for(lambda: physics.time > before)


def test_a_board_paused_past_its_command_timeout_sleeps_between_checks(monkeypatch):
    # A simulated robot waiting for the learner is paused ACTIVE for seconds at a time; the
    # board thread then spun select() with a zero wait once the (suspended) timeout had passed,
    # taking a core from the learner (two quadrupeds halved its updates per second).
    import robots.sim.virtual_board as vb

    r = make("sim_quadruped.board_timeout_s=0.15")
    with r:
        r.reset()
        execute(r, zero())
        board = board_of(r)
        waits: list[float] = []
        real_select = vb.select.select

        def counted(rlist, wlist, xlist, timeout):
            waits.append(timeout)
            return real_select(rlist, wlist, xlist, timeout)

        with r.paused():
            time.sleep(0.2)  # past the command timeout, paused: it must not count
            monkeypatch.setattr(vb.select, "select", counted)
            time.sleep(0.3)
            monkeypatch.setattr(vb.select, "select", real_select)
            assert board.mode == P.Status.ACTIVE and not board.timed_out
        assert len(waits) <= 0.3 / vb.VirtualBoard.POLL + 5, f"{len(waits)} checks in 0.3 s"
        assert min(waits) > 0
        execute(r, zero())  # the timeout counts from the resume


def test_board_times_out_into_hold_when_so_configured():
    r = make("sim_quadruped.board_timeout_s=0.2", "quadruped.timeout_action=hold")
    with r:
        r.reset()
        execute(r, zero())
        board = board_of(r)
        height = physics_of(r).body_height()
        assert wait_for(lambda: board.timed_out, timeout=2.0)
        assert board.mode == P.Status.HOLDING
        time.sleep(0.3)
        assert physics_of(r).body_height() == pytest.approx(height, abs=0.02)


def test_fallen_robot_is_stood_up_by_reset(robot):
    physics = physics_of(robot)
    physics.knock_over()
    assert robot._fallen(robot._transact(P.GetState()))
    obs = robot.reset()
    assert robot.stand_ups == 1 and physics.stand_ups == 1
    assert np.cos(obs["imu"][0]) * np.cos(obs["imu"][1]) > 0.95
    assert physics.body_height() > 0.35


def test_robot_fallen_during_an_episode_is_stood_up_after_fallen_steps():
    r = make("quadruped.standup.fallen_steps=3")
    with r:
        r.reset()
        physics_of(r).knock_over(roll=np.pi / 2)
        rewards = [float(execute(r, zero())["reward"]) for _ in range(3)]
        assert r.stand_ups == 1
        assert rewards[0] < 0.8  # lying on its side
        obs = execute(r, zero())
        assert obs["reward"] > 0.9 and not obs["is_last"]


def test_stop_holds_or_relaxes_is_idempotent_and_blocks_steps(robot):
    robot.reset()
    board = board_of(robot)
    robot.stop()
    robot.stop()
    assert wait_for(lambda: board.mode == P.Status.HOLDING)
    with pytest.raises(RobotFault, match="stopped"):
        execute(robot, zero())
    robot.stop(hard=True)
    assert wait_for(lambda: board.mode == P.Status.RELAXED)
    robot.reset()
    assert board.mode == P.Status.ACTIVE


def test_stop_from_another_thread_while_stepping_does_not_deadlock(robot):
    robot.reset()
    errors: list[Exception] = []

    def stepper():
        try:
            for _ in range(200):
                execute(robot, zero())
        except RobotFault as e:  # stopped midway: expected
            errors.append(e)

    t = threading.Thread(target=stepper)
    t.start()
    time.sleep(0.02)
    stoppers = [threading.Thread(target=robot.stop, kwargs={"hard": h}) for h in (False, True)]
    for s in stoppers:
        s.start()
    for s in (*stoppers, t):
        s.join(timeout=5)
        assert not s.is_alive()
    assert wait_for(lambda: board_of(robot).mode in (P.Status.HOLDING, P.Status.RELAXED))


def test_silent_board_raises_connection_lost_quickly():
    r = make("sim_quadruped.reply_timeout_s=0.1")
    with r:
        r.reset()
        board_of(r).set_silent(True)
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost, match="no answer"):
            execute(r, zero())
        assert time.monotonic() - t0 < 1.0  # (retries + 1) * reply_timeout = 0.3 s


def test_corrupted_replies_and_line_noise_are_dropped_and_counted(robot):
    robot.reset()
    board = board_of(robot)
    board.corrupt_replies(1)
    execute(robot, zero())  # the corrupted answer is dropped; the re-asked state arrives
    assert robot.decoder_stats.crc_errors == 1
    board.send_raw(b"\xa5\x5a\x30garbage" + bytes(range(256)))
    for _ in range(3):
        execute(robot, zero())
    assert robot.decoder_stats.rejected >= 2


def test_board_ignores_corrupted_commands(robot):
    robot.reset()
    board = board_of(robot)
    targets = board.targets.copy()
    frame = bytearray(P.encode(P.Targets(robot.upper), seq=999))
    frame[10] ^= 0x01
    robot._serial.write(bytes(frame))
    assert wait_for(lambda: board.rx_errors == 1)
    assert np.array_equal(board.targets, targets)


def test_board_fault_raises_robot_fault_until_cleared(robot):
    robot.reset()
    board_of(robot).inject_fault(P.Fault.OVERCURRENT)
    with pytest.raises(RobotFault, match="OVERCURRENT"):
        execute(robot, zero())
    robot.clear_faults()
    robot.reset()
    execute(robot, zero())


def test_unopenable_port_says_what_to_do():
    config = load_config(overrides=["quadruped.port=/dev/does-not-exist"])
    r = robots.make("quadruped", config)
    with pytest.raises(ConnectionLost, match="dialout.*--set quadruped.port"):
        r.connect()


def test_disconnect_stops_the_board_thread_and_holds(robot):
    robot.reset()
    board = board_of(robot)
    robot.disconnect()
    assert not board.running
    robot.disconnect()  # idempotent


def test_image_observation_from_the_simulated_camera():
    pytest.importorskip("mujoco")
    r = make("quadruped.image.enabled=true", "quadruped.image.size=[32,48]")
    try:
        with r:
            obs = r.reset()
            validate(obs, r.obs_space)
            assert obs["image"].shape == (32, 48, 3) and obs["image"].std() > 0
    except Exception as e:  # no OpenGL (EGL/OSMesa) on this machine
        if "gl" in str(e).lower() or "egl" in str(e).lower():
            pytest.skip(f"no OpenGL context for MuJoCo rendering: {e}")
        raise


def test_simulated_robot_runs_well_over_100_control_steps_per_second(robot):
    robot.reset()
    action = zero()
    t0 = time.perf_counter()
    for _ in range(200):
        execute(robot, action)
    rate = 200 / (time.perf_counter() - t0)
    assert rate > 150, f"{rate:.0f} control steps/s"


def test_the_simulated_robot_ticks_at_its_own_rate_while_its_physics_stays_lock_step():
    robot = make("sim_quadruped.control_period_s=0.0", "quadruped.control_period_s=0.02")
    assert robot.control_period == 0.0 and robot.simulated and not robot.pace
    assert board_of(robot).control_period == 0.02  # physics seconds per command


def test_episode_info_is_the_forward_velocity_of_this_episode_only(robot):
    # The quadruped is reset-free: each episode is a reset() and episode_length ticks. Its
    # forward velocity was averaged since the robot was made, never since the episode began
    # (a learning run's last episode said 0.17 m/s; the policy, evaluated alone, walked 0.61).
    robot.reset()
    for _ in range(5):
        execute(robot, zero())
    physics_of(robot).data.qvel[0] = 1.0  # a shove forward at the end of the first episode
    execute(robot, zero())
    robot.reset()
    execute(robot, zero())
    _, _, _, vx = physics_of(robot).measure()  # what the board reported for this tick
    assert robot.episode_info() == {"forward_velocity": pytest.approx(vx, rel=1e-5)}
