"""Teleoperation: keyboard, the CURVE remote console, `daydream drive`, `daydream teleop`."""

from __future__ import annotations

import argparse
import shutil
import time

import msgpack
import numpy as np
import pytest
import zmq
from test_safety import TICK, RecordingRobot, continuous, discrete, safety_config

from daydream.core.config import load_config
from daydream.safety.console import ConsoleClient, ConsoleServer
from daydream.safety.keyboard import KeyboardTeleop, parse_keys
from daydream.safety.supervisor import SafetySupervisor
from daydream.wire.curve import create_keypair, create_keys

TELEOP = load_config().teleop


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def supervised(space=None, **limits):
    robot = RecordingRobot(space or continuous(2))
    sup = SafetySupervisor(robot, safety_config(**limits))
    sup.reset()
    return sup, robot


# ---------------------------------------------------------------- keyboard


def test_parse_keys_names_space_tab_and_arrow_escape_sequences():
    assert parse_keys(" \tw\x1b[A\x1b[D\x1b") == ["space", "tab", "w", "up", "left", "esc"]


def test_toggle_override_and_a_held_motion_key_drive_the_robot_with_the_intervention_flag():
    sup, robot = supervised()
    clock = FakeClock()
    kb = KeyboardTeleop(sup, sup.space, TELEOP, clock=clock)
    policy = {"action": np.array([0.3, 0.3])}
    kb.feed("tab")  # override on (toggle)
    kb.feed("w")  # dimension 0, +delta
    _, executed, intervention = sup.step(policy)
    assert intervention
    np.testing.assert_allclose(executed["action"], [TELEOP.delta, 0.0])
    clock.t += TELEOP.hold_window_s + 0.01  # the key stopped repeating: back to rest
    kb.tick()
    _, executed, intervention = sup.step(policy)
    assert intervention
    np.testing.assert_allclose(executed["action"], [0.0, 0.0])
    kb.feed("tab")  # override off: the policy again
    _, executed, intervention = sup.step(policy)
    assert not intervention
    np.testing.assert_allclose(executed["action"], [0.3, 0.3])


def test_hold_mode_override_ends_when_the_key_stops_repeating():
    sup, _ = supervised()
    clock = FakeClock()
    config = load_config(overrides=["teleop.override_mode=hold"]).teleop
    kb = KeyboardTeleop(sup, sup.space, config, clock=clock)
    kb.feed("tab")
    for _ in range(5):  # auto-repeat while held
        clock.t += config.hold_window_s / 2
        kb.feed("tab")
        kb.tick()
        assert sup.overridden
    clock.t += config.hold_window_s + 0.01
    kb.tick()
    assert not sup.overridden


def test_discrete_motion_keys_select_one_hot_actions():
    sup, robot = supervised(discrete(4))
    kb = KeyboardTeleop(sup, sup.space, TELEOP, rest=sup.rest_action()["action"])
    kb.feed("tab")
    kb.feed("3")
    _, executed, intervention = sup.step({"action": np.eye(4, dtype=np.float32)[0]})
    assert intervention
    np.testing.assert_array_equal(executed["action"], np.eye(4)[2])


def test_stop_and_reset_keys_latch_and_release_the_stop():
    sup, robot = supervised()
    kb = KeyboardTeleop(sup, sup.space, TELEOP)
    kb.feed("space")
    assert sup.stopped and robot.stops and sup.status["stop_source"] == "keyboard"
    assert sup.step({"action": np.zeros(2)})[1] is None
    kb.feed("r")
    assert not sup.stopped


# ---------------------------------------------------------------- remote console


@pytest.fixture
def keys(tmp_path):
    """Workstation and robot keys as `daydream keys` makes them, plus the console allow-list."""
    create_keys(tmp_path, ["actor"])
    allowed = tmp_path / "console_allowed"
    allowed.mkdir()
    shutil.copy(tmp_path / "gateway.key", allowed / "gateway.key")
    create_keypair(tmp_path / "elsewhere", "intruder")
    return tmp_path


@pytest.fixture
def console(keys):
    sup, robot = supervised()
    server = ConsoleServer(
        sup, "tcp://127.0.0.1:0", keys / "actor.key_secret", keys / "console_allowed"
    ).start()
    yield sup, robot, server
    server.close()


def client_for(keys, endpoint, name="gateway", timeout=2.0):
    directory = keys if name == "gateway" else keys / "elsewhere"
    return ConsoleClient(endpoint, directory / f"{name}.key_secret", keys / "actor.key", timeout)


def test_console_stop_reaches_the_robot_within_one_tick_and_reset_releases_it(console, keys):
    sup, robot, server = console
    client = client_for(keys, server.endpoint)
    assert client.status() is not None  # connected (handshake done)
    t0 = time.monotonic()
    reply = client.request_stop()
    assert reply["ok"] and reply["status"]["stopped"]
    assert robot.stops[0][0] - t0 < TICK
    assert reply["status"]["stop_source"] == "console:gateway"  # who, from the CURVE key
    time.sleep(2 * TICK)
    assert client.status()["status"]["stopped"]  # still latched
    reply = client.reset_stop()
    assert reply["ok"] and not reply["status"]["stopped"] and not sup.stopped
    client.close()


def test_console_override_and_action_are_executed_next_tick(console, keys):
    sup, robot, server = console
    client = client_for(keys, server.endpoint)
    assert client.set_override(True, [0.5, -0.5])["status"]["overridden"]
    _, executed, intervention = sup.step({"action": np.zeros(2)})
    assert intervention
    np.testing.assert_allclose(executed["action"], [0.5, -0.5])
    client.set_teleop_action([-0.2, 0.1])
    np.testing.assert_allclose(sup.step({"action": np.zeros(2)})[1]["action"], [-0.2, 0.1])
    client.close()


def test_console_refuses_a_client_without_an_allowed_key(console, keys):
    sup, robot, server = console
    intruder = client_for(keys, server.endpoint, name="intruder", timeout=0.5)
    before = sup.status
    assert intruder.request_stop() is None  # no reply within the timeout
    assert intruder.set_override(True, [1.0, 1.0]) is None
    assert intruder.status() is None
    assert not sup.stopped and not robot.stops and not sup.overridden
    assert sup.status["episode"] == before["episode"]
    intruder.close()
    # the allowed key still gets in
    assert client_for(keys, server.endpoint).status() is not None


def test_console_rejects_malformed_messages_and_keeps_serving(console, keys):
    sup, _, server = console
    for data in (b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({"cmd": "launch"}),
                 msgpack.packb({"cmd": "action", "action": "rm -rf"})):
        reply = server.handle(data, "test")
        assert not reply["ok"] and reply["error"]
    assert not sup.stopped
    assert client_for(keys, server.endpoint).status()["ok"]


def test_teleop_cli_send_stop_latches_the_robot(console, keys, capsys):
    from daydream.cli import teleop

    sup, robot, server = console
    parser = argparse.ArgumentParser()
    teleop.add_arguments(parser)
    args = parser.parse_args(["--robot", server.endpoint, "--keys", str(keys), "--send", "stop"])
    assert teleop.main(args) == 0
    assert sup.stopped and robot.stops and "STOPPED" in capsys.readouterr().out


def test_teleop_cli_says_what_to_check_when_the_robot_does_not_answer(keys, capsys):
    from daydream.cli import teleop

    parser = argparse.ArgumentParser()
    teleop.add_arguments(parser)
    port = zmq.Context.instance().socket(zmq.REP)
    free = port.bind_to_random_port("tcp://127.0.0.1")
    port.close()
    args = parser.parse_args(
        ["--robot", f"tcp://127.0.0.1:{free}", "--keys", str(keys), "--send", "status",
         "--set", "teleop.reply_timeout_s=0.3"]
    )
    assert teleop.main(args) == 1
    assert "console_allowed" in capsys.readouterr().err


# ---------------------------------------------------------------- daydream drive


MADE: list[RecordingRobot] = []  # robots built by `daydream drive` through the registry


def make_double(config):
    robot = RecordingRobot(continuous(2), episode_length=7)
    robot.control_period = 0.002
    MADE.append(robot)
    return robot


def spaces(config):
    return RecordingRobot(continuous(2)).obs_space, {"action": continuous(2)}


def drive_args(*argv):
    from daydream.cli import drive

    parser = argparse.ArgumentParser()
    drive.add_arguments(parser)
    return drive, parser.parse_args(["--robot", "teleop_test_double", "--no-keyboard", *argv])


@pytest.fixture
def double_registered(monkeypatch):
    import robots

    MADE.clear()
    monkeypatch.setitem(
        robots.REGISTRY, "teleop_test_double", ("test_teleop:make_double", "test_teleop:spaces")
    )
    return MADE


def test_drive_random_policy_runs_the_robot_under_the_supervisor(double_registered):
    drive, args = drive_args("--policy", "random", "--steps", "20",
                             "--set", "safety.max_change=0.2")
    assert drive.main(args) == 0
    robot = double_registered[0]
    assert len(robot.commands) == 20 and robot.stops and not robot.connected
    prev = np.zeros(2)
    for i, (_, c) in enumerate(robot.commands):
        if i % 7 == 0:
            prev = np.zeros(2)  # a new episode every 7 steps
        assert np.all(np.abs(c - prev) <= 0.2 + 1e-5) and np.all(np.abs(c) <= 1)
        prev = c


def test_drive_teleop_policy_without_a_terminal_or_console_says_what_to_do(
    double_registered, capsys
):
    drive, args = drive_args("--policy", "teleop", "--steps", "5")
    assert drive.main(args) == 2
    assert "--console" in capsys.readouterr().err


def test_drive_runs_a_trained_checkpoint_in_eval_mode(double_registered, tmp_path):
    from daydream.agent import checkpoint
    from daydream.agent.agent import Agent
    from tests.tiny import tiny_model

    probe = make_double(None)
    double_registered.clear()
    agent = Agent(probe.obs_space, probe.act_space, load_config(None, overrides=tiny_model()))
    checkpoint.save(tmp_path, checkpoint.agent_payload(agent))

    runs = []
    for seed in ("1", "2"):  # a random policy would differ between seeds; the checkpoint's not
        drive, args = drive_args("--policy", str(tmp_path), "--steps", "10", "--seed", seed,
                                 "--set", "safety.max_change=2.0")
        assert drive.main(args) == 0
        robot = double_registered[-1]
        assert len(robot.commands) == 10 and not robot.connected
        runs.append(np.stack([c for _, c in robot.commands]))
    np.testing.assert_allclose(runs[0], runs[1])
    assert np.all(np.abs(runs[0]) <= 1) and np.abs(runs[0]).sum() > 0
