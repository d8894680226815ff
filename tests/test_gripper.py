"""The Robotiq URCap client (robots/gripper.py) against the simulated URCap server on loopback."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from robots.gripper import OBJ_AT_POSITION, OBJ_DETECTED_CLOSING, GripperError, RobotiqGripper
from robots.sim.gripper_server import SimGripperServer
from robots.sim.scene import Scene


@pytest.fixture
def cell():
    scene = Scene(
        bins=[[0.34, -0.26, 0.58, -0.04]],
        table_low=(0.3, -0.28),
        table_high=(0.62, 0.28),
        objects=1,
    )
    server = SimGripperServer(scene)
    gripper = RobotiqGripper(server.host, server.port, timeout=1.0)
    gripper.connect()
    yield scene, server, gripper
    gripper.disconnect()
    server.close()


def test_activation_sets_the_status_to_active(cell):
    _, server, gripper = cell
    assert gripper.get("STA") == 0
    gripper.activate()
    assert gripper.get("STA") == 3 and server.regs["GTO"] == 1


def test_closing_on_nothing_reaches_the_end_and_reports_no_object(cell):
    scene, _, gripper = cell
    scene.move_tcp(np.array([0.46, 0.1, 0.03]))
    gripper.activate()
    assert gripper.close() == OBJ_AT_POSITION
    assert gripper.position() == 1.0 and not gripper.object_detected()
    gripper.open()
    assert gripper.position() == 0.0


def test_closing_on_a_cube_stops_on_it_and_reports_the_object(cell):
    scene, _, gripper = cell
    scene.objects[0] = [0.46, -0.15, 0.02]
    scene.move_tcp(np.array([0.465, -0.15, 0.03]))
    gripper.activate()
    assert gripper.close() == OBJ_DETECTED_CLOSING
    assert gripper.object_detected() and 0.0 < gripper.position() < 1.0
    assert scene.held == 0
    scene.move_tcp(np.array([0.46, 0.15, 0.15]))
    gripper.open()
    np.testing.assert_allclose(scene.objects[0], [0.46, 0.15, 0.02])


def test_requests_are_plain_ascii_lines_with_acks(cell):
    _, server, _ = cell
    with (
        socket.create_connection((server.host, server.port), timeout=1.0) as s,
        s.makefile("rb") as f,
    ):
        s.sendall(b"SET ACT 1\nGET STA\nSET POS 300\nGET PRE\nBOGUS\n")
        assert [f.readline() for _ in range(5)] == [
            b"ack\n",
            b"STA 3\n",
            b"ack\n",
            b"PRE 255\n",
            b"?\n",
        ]


def test_an_unreachable_gripper_says_where_it_looked_and_what_to_set():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(GripperError, match=rf"127.0.0.1:{port}.*--set ur5.gripper.port"):
            RobotiqGripper("127.0.0.1", port, timeout=0.5).connect()


def test_a_nonsense_reply_is_an_error():
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(100)
            conn.sendall(b"what?\n")
            conn.recv(100)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    gripper = RobotiqGripper("127.0.0.1", listener.getsockname()[1], timeout=1.0)
    gripper.connect()
    with pytest.raises(GripperError, match="what\\?"):
        gripper.get("POS")
    gripper.disconnect()
    t.join(1.0)
    listener.close()
