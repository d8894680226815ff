"""The real ur_rtde receive interface against the simulated RTDE server (robots/sim/rtde_server.py).

``rtde_receive.RTDEReceiveInterface`` takes no port argument in Python, so the server
binds 127.0.0.1:30004, the controller's RTDE port; the tests skip when it is taken.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import robots
from daydream.core.config import load_config
from robots.base import ConnectionLost
from robots.sim.rtde_server import RTDE_PORT, RTDEServerProcess
from robots.sim.sim_ur5 import UR5_READY_Q, forward_kinematics

rtde_receive = pytest.importorskip("rtde_receive", reason="ur-rtde is not installed")

CONTROL_PERIOD = 0.05


def _port_free() -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", RTDE_PORT))
        except OSError:
            return False
    return True


@pytest.fixture
def link():
    """A server process streaming a simulated UR5, and the real RTDE receive interface on it."""
    if not _port_free():
        pytest.skip(f"127.0.0.1:{RTDE_PORT} is in use (a UR controller simulator or another test?)")
    server = RTDEServerProcess(timeout=10.0)
    receive = rtde_receive.RTDEReceiveInterface("127.0.0.1")
    yield server, receive
    server.close()
    receive.disconnect()


@pytest.fixture
def robot():
    """The ur5 driver (on a simulated controller) whose receive link will be swapped."""
    config = load_config(overrides=["robot.name=sim_ur5", f"ur5.control_period_s={CONTROL_PERIOD}"])
    with robots.make("sim_ur5", config) as r:
        yield r


def test_joint_angles_tcp_pose_and_timestamp_arrive(link):
    _, receive = link
    assert receive.isConnected()
    q = np.array(receive.getActualQ())
    np.testing.assert_allclose(q, UR5_READY_Q)
    np.testing.assert_allclose(receive.getActualTCPPose(), forward_kinematics(q, 0.16), atol=1e-9)
    assert receive.getSafetyMode() == 1 and not receive.isProtectiveStopped()
    first = receive.getTimestamp()
    time.sleep(0.05)
    assert receive.getTimestamp() > first  # streamed at 125 Hz: several packages in 50 ms


def _seconds_until_fault(robot, since: float) -> float:
    deadline = since + 2.0
    while time.monotonic() < deadline:
        try:
            robot.check_health()
        except ConnectionLost:
            return time.monotonic() - since
        time.sleep(CONTROL_PERIOD / 5)  # a control loop ticking faster than the fault shows
    raise AssertionError("the driver never noticed the stale state")


def test_a_stalled_stream_is_detected_within_one_control_period(link, robot):
    server, receive = link
    robot.receive = receive  # the driver now reads the real ur_rtde interface
    robot.check_health()
    server.stall()  # the controller hangs: the link stays up, the values stop changing
    stalled = time.monotonic()
    assert receive.isConnected()
    assert _seconds_until_fault(robot, stalled) < CONTROL_PERIOD


def test_a_dead_server_is_detected_within_one_control_period(link, robot):
    server, receive = link
    robot.receive = receive
    robot.check_health()
    server.close()
    closed = time.monotonic()
    assert _seconds_until_fault(robot, closed) < CONTROL_PERIOD
    assert not receive.isConnected()
