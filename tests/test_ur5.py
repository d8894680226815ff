"""The UR5 driver (robots/ur5.py) on the simulated controller (robots/sim/sim_ur5.py).

The driver is the real one; the controller, the Robotiq server (a real loopback socket)
and the camera are simulated. Every command the driver sends is in ``sim.commands``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import robots
from daydream.core.config import load_config
from daydream.core.spaces import validate
from robots.base import ConnectionLost, ProtectiveStop, RobotFault
from robots.sim.scene import _OBJECT_COLOURS
from robots.sim.sim_ur5 import forward_kinematics, inverse_kinematics, rotvec_to_matrix
from robots.ur5 import PICK_PLACE_ACTIONS, StaleStateDetector

A = {name: i for i, name in enumerate(PICK_PLACE_ACTIONS)}


def one_hot(name: str) -> dict[str, np.ndarray]:
    action = np.zeros(len(PICK_PLACE_ACTIONS), np.float32)
    action[A[name]] = 1
    return {"action": action}


def make(*overrides: str):
    return robots.make("sim_ur5", load_config(overrides=["robot.name=sim_ur5", *overrides]))


@pytest.fixture
def pick():
    robot = make("ur5.task=pick_place")
    with robot:
        yield robot


@pytest.fixture
def reach():
    robot = make("ur5.task=reach")
    with robot:
        yield robot


def place_cube(robot, x: float, y: float) -> None:
    """Cube 0 at (x, y) on the floor; the other cubes out of the way in the first bin's corner."""
    objects = robot.cell.scene.objects
    objects[:] = [0.36, -0.25, 0.02]
    objects[0] = [x, y, 0.02]


def execute(robot, action: dict) -> dict:
    """What the safety supervisor does: the robot's own limits, then exactly that command."""
    limited, _ = robot.limit_command(action)
    return robot.step(limited)


def run(robot, names: list[str]) -> list[float]:
    return [float(robot.step(one_hot(n))["reward"]) for n in names]


# ---------------------------------------------------------------- kinematics
def test_inverse_kinematics_reaches_poses_across_the_workspace():
    q = np.array([2.9, -1.62, 1.93, -1.89, -1.57, -1.81])
    for x in (0.30, 0.46, 0.62):
        for y in (-0.28, 0.0, 0.28):
            for z in (0.03, 0.30):
                pose = np.array([x, y, z, np.pi, 0, 0])
                q = inverse_kinematics(pose, q, 0.16)
                reached = forward_kinematics(q, 0.16)
                np.testing.assert_allclose(reached[:3], pose[:3], atol=1e-5)
                np.testing.assert_allclose(
                    rotvec_to_matrix(reached[3:]), rotvec_to_matrix(pose[3:]), atol=1e-5
                )


# ---------------------------------------------------------------- task and rewards
def test_observations_match_the_declared_spaces(pick, reach):
    for robot in (pick, reach):
        obs = robot.reset()
        validate(obs, robot.obs_space)
        assert obs["is_first"] and not obs["is_last"]
        obs = robot.step({"action": robot.act_space["action"].sample(np.random.default_rng(0))})
        validate(obs, robot.obs_space)
        assert not obs["is_first"]
    np.testing.assert_allclose(pick.reset()["tcp_pose"][:3], [0.46, 0.0, 0.15], atol=1e-4)


def test_scripted_pick_and_place_into_the_other_bin_earns_grasp_and_place(pick):
    pick.reset()
    place_cube(pick, 0.46, -0.16)  # first bin, 4 grid cells to the left of home
    script = ["-y"] * 4 + ["lower", "toggle_gripper", "raise"] + ["+y"] * 8 + ["toggle_gripper"]
    rewards = run(pick, script)
    assert rewards[5] == 1.0  # grasp
    assert rewards[-1] == 10.0  # released over the other bin
    assert sum(rewards) == 11.0
    cube = pick.cell.scene.objects[0]
    assert pick.cell.scene.bin_of(cube[0], cube[1]) == 1
    assert cube[2] == pytest.approx(0.02)


def test_release_over_the_same_bin_costs_one(pick):
    pick.reset()
    place_cube(pick, 0.42, -0.12)
    script = ["-x", "-y", "-y", "-y", "lower", "toggle_gripper", "raise", "+x", "toggle_gripper"]
    rewards = run(pick, script)
    assert rewards[5] == 1.0
    assert rewards[-1] == -1.0
    assert sum(rewards) == 0.0


def test_closing_on_nothing_earns_nothing_and_the_gripper_reports_closed(pick):
    pick.reset()
    place_cube(pick, 0.38, -0.20)
    obs = pick.step(one_hot("lower"))
    obs = pick.step(one_hot("toggle_gripper"))
    assert obs["reward"] == 0.0
    assert obs["gripper"][0] == pytest.approx(1.0)
    obs = pick.step(one_hot("toggle_gripper"))
    assert obs["reward"] == 0.0 and obs["gripper"][0] == pytest.approx(0.0)


def test_episodes_end_after_episode_length_steps():
    robot = make("ur5.episode_length=5")
    with robot:
        robot.reset()
        lasts = [bool(robot.step(one_hot("+x"))["is_last"]) for _ in range(5)]
        assert lasts == [False] * 4 + [True]
        with pytest.raises(RuntimeError, match="reset"):
            robot.step(one_hot("+x"))


def test_reach_reward_is_minus_the_distance_to_the_target(reach):
    obs = reach.reset()
    target = obs["target"]
    assert np.all(target >= reach.low - 1e-6) and np.all(target <= reach.high + 1e-6)
    before = -float(obs["reward"])
    direction = np.sign(target - obs["tcp_pose"][:3]).astype(np.float32)
    obs = execute(reach, {"action": direction})
    distance = np.linalg.norm(obs["tcp_pose"][:3] - target)
    assert float(obs["reward"]) == pytest.approx(-distance, abs=1e-5)
    assert distance < before


def target_pixels(image: np.ndarray) -> np.ndarray:
    """(row, column) of the pixels drawn in the reach target's orange."""
    orange = np.abs(image.astype(int) - (255, 140, 0)).max(-1) <= 40
    return np.argwhere(orange)


def test_the_reach_target_is_drawn_in_the_camera_image_where_it_is(reach):
    obs = reach.reset()
    scene = reach.cell.scene
    drawn = target_pixels(obs["image"])
    assert len(drawn) >= 9, "the target should be a visible disc at 64x64"
    column, row = scene._pixel(*obs["target"][:2])
    assert np.abs(drawn.mean(0) - (row, column)).max() <= 1.0
    # another target, away from the cubes (first bin) and the gripper (home): the disc moves
    reach.task.target = np.array([0.52, 0.18, 0.10])
    image = reach.camera.read()
    column, row = scene._pixel(0.52, 0.18)
    assert np.abs(target_pixels(image).mean(0) - (row, column)).max() <= 1.0
    assert not np.array_equal(image, obs["image"])


def test_a_higher_reach_target_looks_bigger_as_the_gripper_does(reach):
    reach.reset()
    sizes = []
    for z in (0.03, 0.15, 0.30):
        reach.task.target = np.array([0.42, 0.15, z])
        sizes.append(len(target_pixels(reach.camera.read())))
    assert sizes[0] < sizes[1] < sizes[2]


def test_on_the_target_the_gripper_ring_sits_inside_the_target_disc(reach):
    """The target is a disc of twice the ring's radius at its height: with the TCP on it, orange
    shows beyond the ring on every side. (Of a disc of the ring's own radius, 28-92 px at 64x64,
    a trained model's state kept too little to reach it: bench/probe.py.)"""
    reach.reset()
    scene = reach.cell.scene
    target = np.array([0.46, 0.05, 0.15])
    reach.task.target = target
    scene.move_tcp(target)
    drawn = target_pixels(scene.render())
    column, row = scene._image_point(*target[:2])
    offsets = drawn - (row, column)
    beyond = scene._ring_radius(target[2]) + 1.5  # outside the ring's 2 px line
    for axis in (0, 1):
        assert (offsets[:, axis] > beyond).any() and (offsets[:, axis] < -beyond).any()


def gripper_centre(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(row, column) of the gripper ring: the centre of what differs from the empty table,
    weighted by how much it differs (the ring is anti-aliased)."""
    weight = np.abs(image.astype(float) - background).sum(-1)
    rows, columns = np.indices(weight.shape)
    return np.array([(weight * rows).sum(), (weight * columns).sum()]) / weight.sum()


def test_the_gripper_ring_moves_with_the_tcp_by_fractions_of_a_pixel(reach):
    """A camera sees the arm move continuously: a step of a third of a pixel moves the drawn
    ring by about a third of a pixel (anti-aliasing is not exact), so a world model's image of
    it is a smooth function of the TCP."""
    reach.reset()
    scene = reach.cell.scene
    scene.objects, scene.target = np.zeros((0, 3)), None  # the ring alone on the table
    background = scene._background.astype(float)
    px = (scene.table_high[1] - scene.table_low[1]) / (scene._size[1] - 1)  # metres per column
    centres = []
    for k in range(4):
        scene.move_tcp(np.array([0.46, 0.05 + k * px / 3, 0.15]))
        centres.append(gripper_centre(scene.render(), background))
    steps = np.diff(np.array(centres)[:, 1])  # columns follow y
    assert np.all((steps > 0.1) & (steps < 0.6)), steps  # every third of a pixel shows
    assert steps.sum() == pytest.approx(1.0, abs=0.15)
    assert np.ptp(np.array(centres)[:, 0]) < 0.2  # a move along y keeps the row


def test_reach_from_pixels_sees_no_cubes():
    """configs/sim_ur5_reach_pixels.yaml: the table shows the bins, the target and the gripper;
    no cube, whose place would depend on the robot's seed."""
    robot = robots.make("sim_ur5", load_config(path="configs/sim_ur5_reach_pixels.yaml"))
    with robot:
        image = robot.reset()["image"].astype(int)
    for colour in _OBJECT_COLOURS:
        assert not (np.abs(image - colour).max(-1) <= 40).any(), colour
    assert len(target_pixels(image)) >= 9


def test_pick_and_place_images_show_no_target(pick):
    assert len(target_pixels(pick.reset()["image"])) == 0


# ---------------------------------------------------------------- limits
def moves(robot) -> np.ndarray:
    return np.array([c[1] for c in robot.cell.controller.commands if c[0] == "moveL"])


def assert_inside(robot, poses: np.ndarray) -> None:
    assert np.all(poses[:, :3] >= robot.low - 1e-9), poses[poses[:, :3].argmin(0)]
    assert np.all(poses[:, :3] <= robot.high + 1e-9), poses[poses[:, :3].argmax(0)]
    np.testing.assert_allclose(poses[:, 3:], np.broadcast_to(robot.rotation, poses[:, 3:].shape))


@pytest.fixture(scope="module")
def long_pick():
    with make("ur5.task=pick_place", "ur5.episode_length=1000") as robot:
        yield robot


@pytest.fixture(scope="module")
def long_reach():
    with make("ur5.task=reach", "ur5.episode_length=1000") as robot:
        yield robot


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(PICK_PLACE_ACTIONS) - 1), min_size=1, max_size=60))
def test_pick_place_never_commands_a_pose_outside_the_workspace(long_pick, actions):
    robot = long_pick
    robot.reset()
    robot.cell.controller.commands.clear()
    for a in actions:
        here = robot.cell.controller.tcp_pose[:3].copy()
        before = len(moves(robot))
        robot.step(one_hot(PICK_PLACE_ACTIONS[a]))
        sent = moves(robot)
        if len(sent) > before:
            step = np.abs(sent[-1][:2] - here[:2])
            assert np.all(step <= robot.task.grid + 1e-9)  # at most one grid cell in x and y
            assert sent[-1][2] in robot.task.z_levels or abs(sent[-1][2] - here[2]) < 1e-9
    poses = moves(robot)
    if len(poses):
        assert_inside(robot, poses)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=60,
    )
)
@example([[10.0, 10.0, 10.0]] * 30)  # pushes against three faces of the box
@example([[-1.0, -1.0, -1.0]] * 30)
def test_reach_never_commands_a_pose_outside_the_workspace_or_beyond_the_step_limit(
    long_reach, actions
):
    robot = long_reach
    robot.reset()
    robot.cell.controller.commands.clear()
    for a in actions:
        here = robot.cell.controller.tcp_pose[:3].copy()
        execute(robot, {"action": np.clip(np.asarray(a, np.float32), -1, 1)})
        sent = moves(robot)[-1]
        assert np.all(np.abs(sent[:3] - here) <= robot.task.max_step + 1e-9)
    assert_inside(robot, moves(robot))


def test_reach_limit_shortens_the_step_at_the_box_and_step_executes_exactly_that(reach):
    reach.reset()
    sim = reach.cell.controller
    high = reach.high
    for _ in range(40):  # push against the +x, +y, +z faces until the TCP sits on them
        execute(reach, {"action": np.ones(3, np.float32)})
    here = sim.tcp_pose[:3].copy()
    np.testing.assert_allclose(here, high, atol=1e-4)
    limited, notes = reach.limit_command({"action": np.ones(3, np.float32)})
    assert notes and np.all(np.abs(limited["action"]) < 0.01)  # nothing left to move: ~0
    reach.step(limited)
    np.testing.assert_allclose(moves(reach)[-1][:3], here + limited["action"] * reach.task.max_step)


def test_reach_step_refuses_a_command_outside_the_workspace_instead_of_clamping_it(reach):
    reach.reset()
    for _ in range(40):
        execute(reach, {"action": np.ones(3, np.float32)})
    before = len(moves(reach))
    with pytest.raises(RobotFault, match="outside the workspace"):
        reach.step({"action": np.ones(3, np.float32)})  # skipped limit_command
    assert len(moves(reach)) == before  # nothing was sent


def test_reset_from_outside_the_workspace_commands_only_poses_inside(pick):
    # Someone jogged the arm far outside the box (above and beyond it) at the pendant.
    sim = pick.cell.controller
    outside = inverse_kinematics([0.66, 0.32, 0.36, np.pi, 0, 0], sim.q, sim.tcp_offset)
    sim.move_joints(outside)
    sim.commands.clear()
    obs = pick.reset()
    poses = moves(pick)
    assert len(poses) == 2
    assert_inside(pick, poses)
    np.testing.assert_allclose(obs["tcp_pose"][:3], [0.46, 0.0, 0.15], atol=1e-4)


# ---------------------------------------------------------------- faults, watchdog, stop
def test_watchdog_is_armed_on_connect_and_kicked_every_step():
    robot = make("ur5.watchdog_min_frequency=4.0")
    with robot:
        sim = robot.cell.controller
        assert ("setWatchdog", (4.0,)) in sim.commands
        robot.reset()
        kicks = []
        original = sim.kick
        sim.kick = lambda: (kicks.append(1), original())
        for _ in range(3):
            robot.step(one_hot("+x"))
        assert len(kicks) == 3


def test_a_missed_watchdog_kick_stops_the_simulated_control_script():
    robot = make("sim_ur5.enforce_watchdog=true", "ur5.watchdog_min_frequency=10.0")
    with robot:
        sim = robot.cell.controller
        now = [0.0]

        def clock() -> float:  # a controller clock that only moves forward, 1 ms per look
            now[0] += 0.001
            return now[0]

        sim.clock = clock
        robot.reset()
        now[0] += 0.5  # five periods without a kick (the policy stalled)
        assert sim.move_linear(np.array([0.46, 0.0, 0.15, np.pi, 0, 0])) is False
        with pytest.raises(RobotFault, match="control script is not running"):
            robot.step(one_hot("+x"))


@pytest.mark.parametrize(
    "inject, fault",
    [
        ("inject_protective_stop", ProtectiveStop),
        ("inject_emergency_stop", ProtectiveStop),
        ("inject_disconnect", ConnectionLost),
    ],
)
def test_faults_raise_and_end_the_episode(pick, inject, fault):
    pick.reset()
    pick.step(one_hot("+x"))
    getattr(pick.cell.controller, inject)()
    with pytest.raises(fault):
        pick.step(one_hot("+x"))
    with pytest.raises(RuntimeError, match="reset"):
        pick.step(one_hot("+x"))
    with pytest.raises(fault):
        pick.reset()


def test_stop_halts_softly_or_triggers_a_protective_stop_and_is_idempotent(pick):
    pick.reset()
    sim = pick.cell.controller
    threads = [threading.Thread(target=pick.stop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c[0] for c in sim.commands].count("stopL") == 4
    assert sim.safety_mode == 1  # a soft stop is not a protective stop
    pick.stop(hard=True)
    pick.stop(hard=True)
    assert "triggerProtectiveStop" in [c[0] for c in sim.commands]
    with pytest.raises(ProtectiveStop):
        pick.reset()


class _FrozenReceive:
    """An RTDE receive interface whose link is up but whose state stopped updating."""

    def __init__(self) -> None:
        self.stamp = 1.0
        self.connected = True

    def isConnected(self) -> bool:  # noqa: N802
        return self.connected

    def getTimestamp(self) -> float:  # noqa: N802
        return self.stamp


def test_stale_state_is_detected_when_the_timestamp_stops_advancing():
    receive = _FrozenReceive()
    detector = StaleStateDetector(timeout=0.02)
    assert detector.check(receive) == 1.0
    receive.stamp = 1.008
    assert detector.check(receive) == 1.008
    with pytest.raises(ConnectionLost, match="stale"):
        detector.check(receive)
    receive.connected = False
    with pytest.raises(ConnectionLost, match="link"):
        detector.check(receive)


def test_disconnect_closes_the_simulated_gripper_server():
    robot = make()
    robot.connect()
    robot.reset()
    robot.disconnect()
    robot.disconnect()  # idempotent
    assert robot.control is None
    with pytest.raises(OSError):
        import socket

        socket.create_connection(
            (robot.cell.gripper_server.host, robot.cell.gripper_server.port), 0.2
        )


def test_the_simulated_arm_ticks_at_its_own_rate_and_detects_staleness_at_the_real_arm_s():
    fast = make("ur5.task=reach")  # sim_ur5.control_period_s: 0, moves complete at once
    assert fast.control_period == 0.0 and fast.simulated
    paced = make("ur5.task=reach", "sim_ur5.control_period_s=0.05", "ur5.control_period_s=0.2")
    assert paced.control_period == 0.05
    assert paced._stale.timeout == pytest.approx(0.5 * 0.2)  # ur5.stale_periods x the real period
