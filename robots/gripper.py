"""A Robotiq 2F gripper (2F-85 / 2F-140) through its URCap socket on the UR controller.

The URCap listens on TCP port 63352 and speaks one ASCII line per request:
``SET ACT 1`` (activate), ``SET GTO 1`` (go to the requested position),
``SET POS n`` / ``SET SPE n`` / ``SET FOR n`` (0..255; POS 0 is open, 255 closed),
several variables may share one SET line; every SET is answered ``ack``.
``GET POS`` is answered ``POS n``; ``GET STA`` (3: activated), ``GET OBJ``
(0: moving, 1: stopped on an object while opening, 2: stopped on an object
while closing, 3: reached the requested position, no object), ``GET FLT``.
"""

from __future__ import annotations

import socket
import threading
import time

OBJ_MOVING, OBJ_DETECTED_OPENING, OBJ_DETECTED_CLOSING, OBJ_AT_POSITION = 0, 1, 2, 3
STA_ACTIVE = 3


class GripperError(RuntimeError):
    """The gripper did not answer, answered nonsense, or did not finish a motion in time."""


class RobotiqGripper:
    """Owns one socket to the Robotiq URCap: activation, open/close, position and object status."""

    def __init__(
        self, host: str, port: int = 63352, timeout: float = 2.0, speed: int = 255, force: int = 100
    ) -> None:
        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self.speed, self.force = int(speed), int(force)
        self._sock: socket.socket | None = None
        self._file = None
        self._lock = threading.Lock()

    # connection ---------------------------------------------------------
    def connect(self) -> None:
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise GripperError(
                f"cannot reach the Robotiq gripper at {self.host}:{self.port} ({e}); is the "
                "Robotiq URCap installed and the gripper plugged in? set the port with "
                "--set ur5.gripper.port=..."
            ) from e
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")

    def disconnect(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            if self._sock is not None:
                self._sock.close()
            self._sock = self._file = None

    def _request(self, line: str) -> str:
        with self._lock:
            if self._sock is None:
                raise GripperError("gripper not connected; call connect() first")
            try:
                self._sock.sendall(line.encode("ascii") + b"\n")
                reply = self._file.readline()
            except OSError as e:
                raise GripperError(
                    f"gripper at {self.host}:{self.port}: '{line}' failed ({e})"
                ) from e
        if not reply:
            raise GripperError(f"gripper at {self.host}:{self.port} closed the connection")
        return reply.decode("ascii", "replace").strip()

    # protocol -----------------------------------------------------------
    def set(self, **values: int) -> None:
        """``SET K1 v1 K2 v2 ...``; raise unless the URCap answers ``ack``."""
        line = "SET " + " ".join(f"{k.upper()} {int(v)}" for k, v in values.items())
        reply = self._request(line)
        if reply != "ack":
            raise GripperError(f"gripper answered '{reply}' to '{line}' (expected 'ack')")

    def get(self, var: str) -> int:
        """``GET VAR`` -> the integer in the reply ``VAR n``."""
        reply = self._request(f"GET {var.upper()}")
        parts = reply.split()
        if len(parts) != 2 or parts[0] != var.upper():
            raise GripperError(f"gripper answered '{reply}' to 'GET {var.upper()}'")
        try:
            return int(parts[1])
        except ValueError:
            raise GripperError(f"gripper answered '{reply}' to 'GET {var.upper()}'") from None

    def activate(self) -> None:
        """Activate (the fingers open and close once on a real gripper) and wait until ready."""
        if self.get("STA") == STA_ACTIVE:
            self.set(gto=1)
            return
        self.set(act=1)
        deadline = time.monotonic() + max(self.timeout, 5.0)
        while self.get("STA") != STA_ACTIVE:
            if time.monotonic() > deadline:
                raise GripperError(
                    "gripper did not finish activating; check it for faults (GET FLT)"
                )
            time.sleep(0.05)
        self.set(gto=1)

    def move(self, position: int, wait: bool = True) -> int:
        """Go to ``position`` (0 open .. 255 closed); with ``wait``, return the object status."""
        self.set(pos=max(0, min(255, int(position))), spe=self.speed, **{"for": self.force})
        if not wait:
            return OBJ_MOVING
        return self.wait_until_stopped()

    def wait_until_stopped(self) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.get("OBJ")
            if status != OBJ_MOVING:
                return status
            if time.monotonic() > deadline:
                raise GripperError(f"gripper still moving after {self.timeout} s; is it blocked?")
            time.sleep(0.005)

    def open(self) -> int:
        return self.move(0)

    def close(self) -> int:
        return self.move(255)

    def position(self) -> float:
        """Finger position in [0, 1]: 0 fully open, 1 fully closed."""
        return self.get("POS") / 255.0

    def object_detected(self) -> bool:
        return self.get("OBJ") in (OBJ_DETECTED_OPENING, OBJ_DETECTED_CLOSING)
