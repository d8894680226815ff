"""A simulated Robotiq 2F URCap server on loopback, acting on the simulated scene.

Speaks the same ASCII protocol as the URCap on a UR controller (see robots/gripper.py),
so the real ``RobotiqGripper`` client talks to it over a real TCP socket. Motions
finish at once; closing on a cube stops at the cube's width and reports OBJ 2.
"""

from __future__ import annotations

import socket
import threading

from robots.sim.scene import Scene

_CUBE_POSITION = 130  # finger position when closed on a 4 cm cube (2F-85: 85 mm stroke)


class SimGripperServer:
    """Owns a listening socket and its threads; one gripper state shared by all clients."""

    def __init__(self, scene: Scene, host: str = "127.0.0.1", port: int = 0) -> None:
        self.scene = scene
        self.regs = {
            "ACT": 0,
            "GTO": 0,
            "STA": 0,
            "POS": 0,
            "PRE": 0,
            "SPE": 255,
            "FOR": 100,
            "OBJ": 3,
            "FLT": 0,
        }
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accept_thread = threading.Thread(target=self._accept, name="sim-gripper", daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.append(conn)
            t = threading.Thread(
                target=self._serve, args=(conn,), name="sim-gripper-conn", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while not self._stop.is_set():
                try:
                    line = f.readline()
                except OSError:
                    return
                if not line:
                    return
                reply = self.handle(line.decode("ascii", "replace").strip())
                try:
                    conn.sendall(reply.encode("ascii") + b"\n")
                except OSError:
                    return

    def handle(self, line: str) -> str:
        """One request line -> its reply (without the newline)."""
        parts = line.split()
        with self._lock:
            if len(parts) == 2 and parts[0] == "GET" and parts[1] in self.regs:
                return f"{parts[1]} {self.regs[parts[1]]}"
            if len(parts) >= 3 and parts[0] == "SET" and len(parts) % 2 == 1:
                try:
                    values = {k: int(v) for k, v in zip(parts[1::2], parts[2::2], strict=True)}
                except ValueError:
                    return "?"
                if not set(values) <= set(self.regs):
                    return "?"
                requested = values.pop("POS", None)
                self.regs.update(values)
                self._actuate(requested)
                return "ack"
        return "?"

    def _actuate(self, requested: int | None) -> None:
        """Apply the registers: activation, then a motion to the requested position."""
        if self.regs["ACT"] == 1:
            self.regs["STA"] = 3
        if requested is not None:
            self.regs["PRE"] = max(0, min(255, requested))
        if self.regs["STA"] != 3 or self.regs["GTO"] != 1 or requested is None:
            return
        target = self.regs["PRE"]
        if target >= 128:  # closing: stop on a cube if one is between the fingers
            if self.scene.close_fingers():
                self.regs["POS"], self.regs["OBJ"] = _CUBE_POSITION, 2
            else:
                self.regs["POS"], self.regs["OBJ"] = target, 3
        else:
            self.scene.open_fingers()
            self.regs["POS"], self.regs["OBJ"] = target, 3

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self._listener.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._accept_thread.join(timeout=1.0)
        for t in self._threads:
            t.join(timeout=1.0)
