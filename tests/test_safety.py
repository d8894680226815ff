"""SafetySupervisor: latched stop, override, limits, watchdog, faults (DESIGN.md section 3)."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daydream.core.config import load_config
from daydream.core.spaces import Space, step_spaces
from daydream.safety.supervisor import SafetyStopped, SafetySupervisor
from robots.base import ConnectionLost, LimitViolation, ProtectiveStop, Robot, RobotFault

TICK = 0.05  # control period of the tests' control loops (seconds)
EPS = 1e-5


class RecordingRobot(Robot):
    """A robot double: records every command and stop call with its time; faults on demand."""

    control_period = TICK

    def __init__(self, space: Space, episode_length: int = 0, box: float | None = None):
        self.obs_space = {**step_spaces(), "x": Space((2,))}
        self.act_space = {"action": space}
        self.episode_length = episode_length
        self.box = box  # limit_command: clamp action[0] to <= box, refuse action[-1] < -box
        self.commands: list[tuple[float, np.ndarray]] = []
        self.stops: list[tuple[float, bool]] = []
        self.fault: RobotFault | None = None
        self.t = 0
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def _obs(self, first: bool, last: bool) -> dict[str, np.ndarray]:
        return {
            "x": np.full(2, self.t, np.float32),
            "reward": np.float32(0 if first else 1),
            "is_first": np.array(first),
            "is_last": np.array(last),
            "is_terminal": np.array(False),
        }

    def reset(self) -> dict[str, np.ndarray]:
        self.t = 0
        return self._obs(True, False)

    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.commands.append((time.monotonic(), np.array(action["action"], copy=True)))
        if self.fault is not None:
            raise self.fault
        self.t += 1
        return self._obs(False, bool(self.episode_length and self.t >= self.episode_length))

    def stop(self, hard: bool = False) -> None:
        self.stops.append((time.monotonic(), hard))

    def limit_command(self, action):
        if self.box is None:
            return action, []
        a = np.array(action["action"], copy=True)
        if a[-1] < -self.box:
            raise LimitViolation(f"action[-1] {a[-1]} below {-self.box}")
        notes = ["box"] if a[0] > self.box else []
        a[0] = min(a[0], self.box)
        return {"action": a}, notes


@functools.lru_cache(maxsize=64)
def _load_safety(overrides: tuple[str, ...]):
    return load_config(overrides=overrides).safety


def safety_config(**overrides):
    return _load_safety(tuple(f"safety.{k}={v}" for k, v in sorted(overrides.items())))


def continuous(n: int = 2, low=-1.0, high=1.0) -> Space:
    return Space((n,), np.float32, low=low, high=high)


def discrete(n: int = 4) -> Space:
    return Space((n,), np.float32, discrete=True)


# ---------------------------------------------------------------- limits, property-based

finite_or_not = st.one_of(
    st.floats(-3, 3, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_command_reaching_the_robot_violates_the_continuous_limits(data):
    n = data.draw(st.integers(1, 4), label="dims")
    low = np.array(data.draw(st.lists(st.floats(-2, 0), min_size=n, max_size=n)), np.float32)
    high = np.array(data.draw(st.lists(st.floats(0.01, 2), min_size=n, max_size=n)), np.float32)
    max_abs = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.5]))
    max_change = data.draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    refuse = data.draw(st.sampled_from([0.0, 0.2, 0.8, 2.0]))
    box = data.draw(st.sampled_from([None, 0.3]))
    robot = RecordingRobot(continuous(n, low, high), box=box)
    sup = SafetySupervisor(
        robot, safety_config(max_abs=max_abs, max_change=max_change, refuse_change=refuse)
    )
    action = st.one_of(
        st.lists(finite_or_not, min_size=n, max_size=n),  # adversarial values
        st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n),  # plausible
        st.lists(st.floats(-1, 1, width=32), min_size=0, max_size=6),  # wrong shapes
    )
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("policy"), action),
                st.tuples(st.just("override"), st.booleans()),
                st.tuples(st.just("teleop"), action),
                st.tuples(st.just("reset"), st.none()),
            ),
            min_size=1,
            max_size=40,
        )
    )
    sup.reset()
    episodes = [len(robot.commands)]  # index of the first command of each episode
    for op, arg in ops:
        if op == "reset":
            sup.reset()
            episodes.append(len(robot.commands))
        elif op == "override":
            sup.set_override(arg)
        elif op == "teleop":
            sup.set_teleop_action(np.array(arg))
        else:
            prev = robot.commands[-1][1] if len(robot.commands) > episodes[-1] else None
            obs, executed, _ = sup.step({"action": np.array(arg)})
            a = np.array(arg, np.float64)
            ref = prev if prev is not None else np.zeros(n)
            in_limits = (
                a.shape == (n,)
                and np.all(np.isfinite(a))
                and np.all(a >= low)
                and np.all(a <= high)
                and (not max_abs or np.all(np.abs(a) <= max_abs))
                and (not max_change or np.all(np.abs(a - ref) <= max_change))
                and (not refuse or np.all(np.abs(a - ref) <= refuse))
                and (box is None or (a[0] <= box and a[-1] >= -box))
            )
            if in_limits and not sup.overridden:  # within every limit: executed unchanged
                np.testing.assert_allclose(executed["action"], a, atol=EPS)

    # Every command the robot received, episode by episode, against the previous one.
    bounds = list(episodes) + [len(robot.commands)]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        prev = np.clip(np.zeros(n), low, high)
        for _, c in robot.commands[start:end]:
            assert c.shape == (n,) and c.dtype == np.float32
            assert np.all(np.isfinite(c))
            assert np.all(c >= low - EPS) and np.all(c <= high + EPS)
            if max_abs:
                assert np.all(np.abs(c) <= max_abs + EPS)
            if max_change:
                assert np.all(np.abs(c - prev) <= max_change + EPS)
            if refuse:
                assert np.all(np.abs(c - prev) <= refuse + EPS)
            if box is not None:
                assert c[0] <= box + EPS and c[-1] >= -box - EPS
            prev = c


@settings(max_examples=80, deadline=None)
@given(
    actions=st.lists(
        st.one_of(
            st.integers(0, 3).map(lambda i: np.eye(4, dtype=np.float32)[i]),
            st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, np.nan]), min_size=4, max_size=4),
            st.lists(st.just(1.0), min_size=0, max_size=6),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_discrete_commands_reaching_the_robot_are_always_one_hot(actions):
    robot = RecordingRobot(discrete(4))
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    for a in actions:
        _, executed, _ = sup.step({"action": np.array(a)})
        a = np.array(a, np.float64)
        if a.shape == (4,) and np.isfinite(a).all() and sorted(a.tolist()) == [0, 0, 0, 1]:
            np.testing.assert_array_equal(executed["action"], a)
    for _, c in robot.commands:
        assert c.shape == (4,) and np.count_nonzero(c == 1) == 1 and np.count_nonzero(c) == 1


def test_a_jump_beyond_refuse_change_is_refused_counted_and_the_previous_command_held():
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config(refuse_change=0.5, max_change=0.3))
    sup.reset()
    sup.step({"action": np.array([0.2, 0.0])})
    _, executed, _ = sup.step({"action": np.array([0.9, 0.0])})  # +0.7: refused
    np.testing.assert_allclose(executed["action"], [0.2, 0.0])
    assert sup.status["refused_count"] == 1 and "refused" in sup.status["last_fault"]
    _, executed, _ = sup.step({"action": np.array([0.6, 0.0])})  # +0.4: clamped to +0.3
    np.testing.assert_allclose(executed["action"], [0.5, 0.0], atol=EPS)


def test_consecutive_refusals_latch_the_stop_when_configured():
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config(stop_after_refusals=3))
    sup.reset()
    for _ in range(3):
        sup.step({"action": np.array([np.nan, 0.0])})
    assert sup.stopped and robot.stops


# ---------------------------------------------------------------- the latched stop


def run_control_loop(sup, robot, policy, stop_event, ticks_log):
    """The actor's loop: ticks every TICK seconds, never commands the robot while stopped."""
    obs = sup.reset()
    while not stop_event.is_set():
        t0 = time.monotonic()
        if sup.stopped:
            sup.wait_released(TICK)
            continue
        if obs["is_last"]:
            try:
                obs = sup.reset()
            except SafetyStopped:
                continue
        obs, executed, _ = sup.step(policy())
        ticks_log.append(t0)
        time.sleep(max(0.0, TICK - (time.monotonic() - t0)))


@pytest.fixture
def running():
    """A supervised robot driven by a control loop thread; yields (sup, robot, stall).

    While ``stall`` is set the policy hangs (as a stuck or crashed policy would).
    """
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config(watchdog_deadline_s=0.2)).start()
    done, stall = threading.Event(), threading.Event()
    ticks: list[float] = []
    rng = np.random.default_rng(0)

    def policy():
        while stall.is_set() and not done.is_set():
            time.sleep(0.01)
        return {"action": rng.uniform(-1, 1, 2)}

    loop = threading.Thread(
        target=run_control_loop, args=(sup, robot, policy, done, ticks), daemon=True
    )
    loop.start()
    time.sleep(3 * TICK)
    yield sup, robot, stall
    done.set()
    loop.join(2)
    sup.close()


def assert_latched_until_reset(sup, robot):
    stop_time = robot.stops[0][0]
    time.sleep(6 * TICK)  # the loop keeps ticking; time alone must not release the stop
    late = [t for t, _ in robot.commands if t > stop_time + TICK]
    assert not late, "a command reached the robot while the stop was latched"
    assert sup.stopped
    with pytest.raises(SafetyStopped):
        sup.reset()
    assert sup.reset_stop("test person")
    time.sleep(4 * TICK)
    assert not sup.stopped and any(t > stop_time + TICK for t, _ in robot.commands)


def test_keyboard_stop_key_stops_the_robot_within_one_tick_and_stays_latched(running):
    from daydream.safety.keyboard import KeyboardTeleop

    sup, robot, _ = running
    keyboard = KeyboardTeleop(sup, robot.act_space["action"], load_config().teleop)
    t0 = time.monotonic()
    keyboard.feed("space")
    assert robot.stops and robot.stops[0][0] - t0 < TICK
    assert_latched_until_reset(sup, robot)


def test_watchdog_stops_the_robot_when_the_policy_sleeps_past_its_deadline():
    robot = RecordingRobot(continuous(2))
    deadline = 0.15
    sup = SafetySupervisor(robot, safety_config(watchdog_deadline_s=deadline)).start()
    try:
        sup.reset()
        for _ in range(3):  # a healthy policy: no stop
            sup.step({"action": np.zeros(2)})
            time.sleep(TICK)
        assert not robot.stops
        time.sleep(deadline + 3 * TICK)  # the policy stalls
        assert robot.stops, "the watchdog did not stop the robot"
        last_command = robot.commands[-1][0]
        assert deadline <= robot.stops[0][0] - last_command < deadline + TICK
        assert sup.status["stop_source"] == "watchdog"
        _, executed, _ = sup.step({"action": np.zeros(2)})  # the policy wakes up
        assert executed is None and len(robot.commands) == 3
        time.sleep(2 * deadline)
        assert sup.stopped  # no timer releases it
    finally:
        sup.close()


def test_watchdog_stop_from_a_running_loop_stays_latched_until_reset(running):
    sup, robot, stall = running
    stall.set()
    time.sleep(0.2 + 3 * TICK)
    assert robot.stops and sup.status["stop_source"] == "watchdog"
    stall.clear()
    assert_latched_until_reset(sup, robot)


def test_a_stop_arriving_while_a_command_is_in_flight_is_sent_again_after_it():
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    original = robot.step

    def slow_step(action):
        threading.Thread(target=sup.request_stop, args=("test",)).start()
        time.sleep(0.05)
        return original(action)

    robot.step = slow_step
    sup.step({"action": np.zeros(2)})
    assert len(robot.stops) == 2 and robot.stops[1][0] > robot.commands[-1][0]


@pytest.mark.parametrize(
    "fault", [ProtectiveStop("protective stop: collision"), ConnectionLost("RTDE state stale")]
)
def test_a_robot_fault_latches_the_stop(fault):
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    sup.step({"action": np.zeros(2)})
    robot.fault = fault
    obs, executed, _ = sup.step({"action": np.zeros(2)})
    assert executed is None and bool(obs["is_last"])
    assert sup.stopped and robot.stops and type(fault).__name__ in sup.status["reason"]
    robot.fault = None
    n = len(robot.commands)
    assert sup.step({"action": np.zeros(2)})[1] is None and len(robot.commands) == n
    sup.reset_stop("test person")
    assert sup.step({"action": np.zeros(2)})[1] is None  # a new episode must start first
    sup.reset()
    assert sup.step({"action": np.zeros(2)})[1] is not None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_sensor_value_is_a_fault_and_never_reaches_the_policy(bad):
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    good, _, _ = sup.step({"action": np.zeros(2)})
    robot._obs = lambda first, last: {**RecordingRobot._obs(robot, first, last),
                                      "x": np.array([1.0, bad], np.float32)}  # fmt: skip
    obs, executed, _ = sup.step({"action": np.zeros(2)})
    assert executed is None and bool(obs["is_last"])  # the last good observation, closed
    np.testing.assert_array_equal(obs["x"], good["x"])
    assert sup.stopped and robot.stops and "'x'" in sup.status["reason"]
    sup.reset_stop("test person")
    with pytest.raises(SafetyStopped, match="'x'"):
        sup.reset()  # the sensor still reads garbage: no episode starts on it


def test_an_unexpected_robot_error_latches_the_stop_and_is_raised():
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    robot.fault = ZeroDivisionError("driver bug")
    with pytest.raises(ZeroDivisionError):
        sup.step({"action": np.zeros(2)})
    assert sup.stopped and robot.stops


# ---------------------------------------------------------------- override


def test_override_executes_the_persons_action_next_tick_with_the_intervention_flag():
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    policy = {"action": np.array([0.5, 0.5])}
    _, executed, intervention = sup.step(policy)
    assert not intervention
    sup.set_override(True, np.array([-0.25, 0.75]))
    _, executed, intervention = sup.step(policy)
    assert intervention
    np.testing.assert_allclose(executed["action"], [-0.25, 0.75])
    np.testing.assert_allclose(robot.commands[-1][1], [-0.25, 0.75])
    sup.set_override(False)
    _, executed, intervention = sup.step(policy)
    assert not intervention
    np.testing.assert_allclose(executed["action"], [0.5, 0.5])


def test_override_actions_obey_the_limits_too():
    robot = RecordingRobot(continuous(2))
    sup = SafetySupervisor(robot, safety_config(max_change=0.1))
    sup.reset()
    sup.set_override(True, np.array([1.0, -1.0]))
    _, executed, intervention = sup.step({"action": np.zeros(2)})
    assert intervention
    np.testing.assert_allclose(executed["action"], [0.1, -0.1], atol=EPS)


# ---------------------------------------------------------------- simulated robots


def _make_sim(name: str):
    """The simulated robot ``name``, or a skip while its driver or config is not there yet."""
    import robots

    try:
        config = load_config()
        return robots.make(name, config), config
    except (KeyError, ImportError, AttributeError) as e:
        pytest.skip(f"simulated robot '{name}' is not available yet: {e}")


def _step_until_stopped(sup, ticks: int = 20) -> None:
    for _ in range(ticks):
        if sup.step(sup.rest_action())[1] is None:
            return


def test_a_protective_stop_of_the_simulated_ur5_latches_the_stop():
    robot, config = _make_sim("sim_ur5")
    with robot:
        sup = SafetySupervisor(robot, config.safety)
        sup.reset()
        assert sup.step(sup.rest_action())[1] is not None
        robot.cell.controller.inject_protective_stop()  # e.g. a collision
        _step_until_stopped(sup)
        assert sup.stopped and "ProtectiveStop" in sup.status["reason"]
        assert sup.step(sup.rest_action())[1] is None  # nothing is commanded while latched


def test_a_board_timeout_of_the_virtual_quadruped_latches_the_stop():
    robot, config = _make_sim("sim_quadruped")
    with robot:
        sup = SafetySupervisor(robot, config.safety)
        sup.reset()
        assert sup.step(sup.rest_action())[1] is not None
        robot.companion.board.set_silent(True)  # the board stops answering: serial timeout
        _step_until_stopped(sup)
        assert sup.stopped and "ConnectionLost" in sup.status["reason"]


def test_a_latched_stop_survives_a_restart_until_a_person_resets_it(tmp_path):
    latch = tmp_path / "actor-0" / "SAFETY_STOP"
    robot = RecordingRobot(continuous())
    first = SafetySupervisor(robot, safety_config(), latch_file=latch)
    first.reset()
    first.request_stop("keyboard", reason="person pressed stop")
    assert latch.is_file() and "person pressed stop" in latch.read_text()
    first.close()

    # A new process (crash, service restart) finds the file and starts latched.
    robot = RecordingRobot(continuous())
    second = SafetySupervisor(robot, safety_config(), latch_file=latch)
    assert second.stopped and "person pressed stop" in second.status["reason"]
    with pytest.raises(SafetyStopped):
        second.reset()
    assert robot.commands == []  # nothing reached the robot
    assert second.reset_stop("operator")
    assert not latch.exists()
    second.reset()
    second.step({"action": np.zeros(2, np.float32)})
    assert len(robot.commands) == 1


# ---------------------------------------------------------------- the record of a stopped tick
def test_a_stop_keeps_the_observations_own_reward_and_is_first_and_sets_only_is_last():
    robot = RecordingRobot(continuous(2))
    robot.connect()
    sup = SafetySupervisor(robot, safety_config())
    sup.reset()
    obs, executed, _ = sup.step({"action": np.zeros(2, np.float32)})
    assert executed is not None and float(obs["reward"]) == 1.0
    sup.request_stop("keyboard")
    stopped, executed, _ = sup.step({"action": np.zeros(2, np.float32)})
    assert executed is None
    # the observation the policy acted on, closed: its reward for arriving is kept
    assert float(stopped["reward"]) == 1.0 and not stopped["is_first"] and stopped["is_last"]
    np.testing.assert_array_equal(stopped["x"], obs["x"])


def test_a_stop_at_the_first_tick_keeps_is_first():
    robot = RecordingRobot(continuous(2))
    robot.connect()
    sup = SafetySupervisor(robot, safety_config())
    first = sup.reset()
    sup.request_stop("keyboard")
    stopped, executed, _ = sup.step({"action": np.zeros(2, np.float32)})
    assert executed is None
    assert stopped["is_first"] and stopped["is_last"]  # a one-observation episode
    assert float(stopped["reward"]) == float(first["reward"])
