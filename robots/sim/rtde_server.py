"""An RTDE (Real-Time Data Exchange, protocol version 2) server on loopback.

It streams a simulated controller's state so that the real
``rtde_receive.RTDEReceiveInterface("127.0.0.1")`` connects to it exactly as it would
to a UR controller (which listens on port 30004; ur_rtde's Python constructor has no
port argument, so the server binds 127.0.0.1:30004 by default).

Wire format (Universal Robots' RTDE guide): every packet is a header
``>HB`` (total size including the header, packet type) followed by a payload.
    'V' 86  request protocol version   payload >H version      reply >B accepted
    'v' 118 get URControl version      payload -               reply >IIII major minor bugfix build
    'O' 79  setup outputs              payload >d freq + names reply >B recipe id + types joined
                                       by ',' (NOT_FOUND for an unknown name, and recipe id 0)
    'I' 73  setup inputs               payload names           reply >B recipe id + NOT_FOUNDs
    'S' 83  start                      payload -               reply >B accepted
    'P' 80  pause                      payload -               reply >B accepted
    'U' 85  data package (server->client, at the requested frequency): >B recipe id + values
Values are big-endian, by type: DOUBLE >d, VECTOR3D >3d, VECTOR6D >6d, INT32 >i, UINT32 >I,
UINT64 >Q, VECTOR6INT32 >6i, VECTOR6UINT32 >6I, BOOL >?, UINT8 >B.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

RTDE_PORT = 30004
_HEADER = struct.Struct(">HB")
V, v, O, I, S, P, U, M = (ord(c) for c in "VvOISPUM")  # noqa: E741 (the protocol's letters)

_FORMATS = {
    "DOUBLE": ">d", "VECTOR3D": ">3d", "VECTOR6D": ">6d", "INT32": ">i", "UINT32": ">I",
    "UINT64": ">Q", "VECTOR6INT32": ">6i", "VECTOR6UINT32": ">6I", "BOOL": ">?", "UINT8": ">B",
}  # fmt: skip

_DOUBLE = (
    "timestamp actual_execution_time speed_scaling target_speed_fraction actual_momentum "
    "actual_main_voltage actual_robot_voltage actual_robot_current standard_analog_input0 "
    "standard_analog_input1 standard_analog_output0 standard_analog_output1 payload"
).split()
_VECTOR6D = (
    "target_q target_qd target_qdd target_current target_moment actual_q actual_qd actual_qdd "
    "actual_current actual_current_as_torque joint_control_output actual_TCP_pose "
    "actual_TCP_speed actual_TCP_force target_TCP_pose target_TCP_speed joint_temperatures "
    "actual_joint_voltage ft_raw_wrench payload_inertia"
).split()
_VECTOR3D = "actual_tool_accelerometer payload_cog elbow_position elbow_velocity".split()
_UINT32 = (
    "robot_status_bits safety_status_bits runtime_state output_bit_registers0_to_31 "
    "output_bit_registers32_to_63"
).split()

#: RTDE output variable -> type, for the outputs this server can stream.
OUTPUT_TYPES: dict[str, str] = {
    **{n: "DOUBLE" for n in _DOUBLE},
    **{n: "VECTOR6D" for n in _VECTOR6D},
    **{n: "VECTOR3D" for n in _VECTOR3D},
    **{n: "UINT32" for n in _UINT32},
    "actual_digital_input_bits": "UINT64",
    "actual_digital_output_bits": "UINT64",
    "robot_mode": "INT32",
    "safety_mode": "INT32",
    "joint_mode": "VECTOR6INT32",
    **{f"output_int_register_{i}": "INT32" for i in range(48)},
    **{f"output_double_register_{i}": "DOUBLE" for i in range(48)},
}

_ZERO = {
    "DOUBLE": 0.0, "VECTOR3D": [0.0] * 3, "VECTOR6D": [0.0] * 6, "INT32": 0, "UINT32": 0,
    "UINT64": 0, "VECTOR6INT32": [0] * 6, "VECTOR6UINT32": [0] * 6, "BOOL": False, "UINT8": 0,
}  # fmt: skip


def pack(kind: int, payload: bytes = b"") -> bytes:
    """One RTDE packet: header (size, type) + payload."""
    return _HEADER.pack(_HEADER.size + len(payload), kind) + payload


class _Client:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        self.names: list[str] = []
        self.types: list[str] = []
        self.period = 1.0 / 125
        self.started = False
        self.next_send = 0.0


class RTDEServer:
    """Owns the RTDE listening socket, its clients and the thread that serves them.

    ``source()`` returns the controller state by RTDE output name (see
    ``SimUR5Controller.state``); names it lacks are streamed as zeros.
    ``stall()`` stops streaming while keeping the links open (a hung controller);
    ``close()`` closes everything (a controller that died or a cable pulled).
    """

    def __init__(
        self,
        source: Callable[[], dict[str, Any]],
        host: str = "127.0.0.1",
        port: int = RTDE_PORT,
        version: tuple[int, int, int, int] = (3, 15, 7, 0),  # a CB3 controller, like a UR5's
    ) -> None:
        self.source = source
        self.version = version
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError:
            self._listener.close()
            raise
        self._listener.listen(4)
        self.host, self.port = self._listener.getsockname()[:2]
        self._clients: list[_Client] = []
        self._stalled = threading.Event()
        self._stop = threading.Event()
        self.packets_sent = 0
        self._thread = threading.Thread(target=self._run, name="sim-rtde", daemon=True)
        self._thread.start()

    # control ------------------------------------------------------------
    def stall(self) -> None:
        """Stop sending data packages; sockets stay open."""
        self._stalled.set()

    def close(self) -> None:
        """Close the listener and every client (clients see the connection end)."""
        self._stop.set()
        self._thread.join(timeout=2.0)

    # serving ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                waits = [c.next_send - now for c in self._clients if c.started]
                timeout = max(0.0, min([0.05, *waits]))
                readable, _, _ = select.select(
                    [self._listener] + [c.conn for c in self._clients], [], [], timeout
                )
                for sock in readable:
                    if sock is self._listener:
                        conn, _ = self._listener.accept()
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        self._clients.append(_Client(conn))
                    else:
                        self._receive(next(c for c in self._clients if c.conn is sock))
                if not self._stalled.is_set():
                    self._stream(time.monotonic())
        finally:
            for c in self._clients:
                self._drop(c, quiet=True)
            self._listener.close()

    def _drop(self, client: _Client, quiet: bool = False) -> None:
        try:
            client.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.conn.close()
        if not quiet and client in self._clients:
            self._clients.remove(client)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.buffer += data
        while len(client.buffer) >= _HEADER.size:
            size, kind = _HEADER.unpack_from(client.buffer)
            if size < _HEADER.size:  # corrupt stream: a real controller drops the client too
                self._drop(client)
                return
            if len(client.buffer) < size:
                return
            payload = client.buffer[_HEADER.size : size]
            client.buffer = client.buffer[size:]
            reply = self._handle(client, kind, payload)
            if reply is not None:
                client.conn.sendall(reply)

    def _handle(self, client: _Client, kind: int, payload: bytes) -> bytes | None:
        if kind == V:
            (version,) = struct.unpack(">H", payload[:2])
            return pack(V, struct.pack(">B", version == 2))
        if kind == v:
            return pack(v, struct.pack(">IIII", *self.version))
        if kind == O:
            (frequency,) = struct.unpack(">d", payload[:8])
            names = [n for n in payload[8:].decode("ascii").split(",") if n]
            types = [OUTPUT_TYPES.get(n, "NOT_FOUND") for n in names]
            ok = "NOT_FOUND" not in types and names
            if ok:
                client.names, client.types = names, types
                client.period = 1.0 / max(1.0, min(500.0, frequency))
            return pack(O, struct.pack(">B", 1 if ok else 0) + ",".join(types).encode("ascii"))
        if kind == I:
            names = [n for n in payload.decode("ascii").split(",") if n]
            return pack(I, struct.pack(">B", 0) + ",".join("NOT_FOUND" for _ in names).encode())
        if kind == S:
            client.started = bool(client.names)
            client.next_send = time.monotonic()
            return pack(S, struct.pack(">B", client.started))
        if kind == P:
            client.started = False
            return pack(P, struct.pack(">B", 1))
        return None  # data packages from clients (inputs) are not supported: ignored

    def _stream(self, now: float) -> None:
        due = [c for c in self._clients if c.started and now >= c.next_send]
        if not due:
            return
        state = self.source()
        for c in due:
            body = bytearray(b"\x01")
            for name, kind in zip(c.names, c.types, strict=True):
                value = state.get(name, _ZERO[kind])
                fmt = _FORMATS[kind]
                body += (
                    struct.pack(fmt, *value)
                    if isinstance(value, list | tuple)
                    else struct.pack(fmt, value)
                )
            try:
                c.conn.sendall(pack(U, bytes(body)))
            except OSError:
                self._drop(c)
                continue
            self.packets_sent += 1
            c.next_send = max(c.next_send + c.period, now - c.period)


# ---------------------------------------------------------------- in a process of its own
def _sim_ur5_source() -> Callable[[], dict[str, Any]]:
    """The state of a default simulated UR5 cell (robots/sim/sim_ur5.py)."""
    from robots.sim.scene import Scene
    from robots.sim.sim_ur5 import SimUR5Controller

    scene = Scene(bins=[[0.34, -0.26, 0.58, -0.04], [0.34, 0.04, 0.58, 0.26]],
                  table_low=(0.30, -0.28), table_high=(0.62, 0.28))  # fmt: skip
    return SimUR5Controller(scene).state


def _serve(pipe: Any, host: str, port: int) -> None:
    try:
        server = RTDEServer(_sim_ur5_source(), host, port)
    except OSError as e:
        pipe.send(("error", f"cannot bind {host}:{port}: {e}"))
        return
    pipe.send(("ready", server.port))
    while True:
        command = pipe.recv() if pipe.poll(1.0) else None
        if command == "stall":
            server.stall()
            pipe.send(("stalled", server.packets_sent))
        elif command == "close":
            server.close()
            pipe.send(("closed", server.packets_sent))
            return


class RTDEServerProcess:
    """Owns a child process running an RTDEServer on a simulated UR5's state.

    ur_rtde's ``RTDEReceiveInterface`` constructor holds Python's GIL while it
    handshakes, so a server in a thread of the same process could never answer it:
    the server runs in its own process, steered through a pipe.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = RTDE_PORT, timeout: float = 10.0
    ) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, host, port), daemon=True)
        self.process.start()
        self.timeout = timeout
        status, detail = self._reply()
        if status != "ready":
            self.process.join(timeout)
            raise OSError(detail)
        self.host, self.port = host, int(detail)

    def _reply(self) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout
        while not self._pipe.poll(0.05):
            if not self.process.is_alive():
                raise OSError(f"RTDE server process ended (exit code {self.process.exitcode})")
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"RTDE server process did not answer within {self.timeout} s")
        return self._pipe.recv()

    def stall(self) -> int:
        """Stop streaming (links stay open); return the number of data packages sent."""
        self._pipe.send("stall")
        return self._reply()[1]

    def close(self) -> None:
        """Close every link and end the process."""
        if self.process.is_alive():
            try:
                self._pipe.send("close")
                self._reply()
            except (OSError, EOFError, TimeoutError):
                pass
        self.process.join(self.timeout)
        if self.process.is_alive():
            self.process.kill()
