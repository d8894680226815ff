"""A virtual 12-servo board on a pseudo-terminal, speaking robots/protocol.py.

The board owns the board-side half of the protocol: it parses commands from the
pty master, answers every valid command with one TELEMETRY frame, runs the servo
mode machine (relaxed / active / holding), enforces the command timeout that the
host arms, and lets tests inject faults. The physics behind it is any object with
the :class:`BoardPhysics` methods (robots/sim/sim_quadruped.py provides MuJoCo).

Clock (lock-step while active, real time otherwise):
- While ACTIVE (following targets) each TARGETS frame advances the physics by one
  control period before the board answers. Training is then deterministic and runs
  as fast as the host sends commands.
- In every other mode (holding, relaxed, timed out) nothing commands the servos and
  the board thread advances the physics in real time, one control period per period
  of wall time, so a relaxed robot visibly sags.
- The command timeout is always measured in wall time: if no valid frame arrives for
  longer than the armed timeout while ACTIVE, the board relaxes or holds by itself
  and sets TIMED_OUT until the host sends ENABLE or STAND_UP.
- While paused (``pause()``, the simulated robot's ``Robot.paused``) no wall time counts:
  neither the command timeout nor the free-running physics. A host that connects and
  resets under a pause gets the same physics every time (a seeded gymnasium reset).
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from typing import Protocol

import numpy as np

from robots import protocol as P


class BoardPhysics(Protocol):
    """What the virtual board needs from the simulated robot behind it (thread-safe)."""

    def set_servos(self, targets: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None: ...

    def advance(self, seconds: float) -> None: ...

    def measure(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(positions (12,), velocities (12,), imu (5,), forward velocity)."""
        ...

    def stand_up(self, stand_pose: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None: ...

    @property
    def time(self) -> float: ...


class VirtualBoard:
    """A servo board on a pty: protocol, servo modes, command timeout, fault injection.

    ``port`` is the pty slave path to open with pyserial. ``start()`` runs the board in
    a daemon thread; ``close()`` stops it (within ~50 ms) and closes the pty.
    """

    POLL = 0.02  # s, longest the board thread sleeps between checks (bounds close())

    def __init__(
        self,
        physics: BoardPhysics,
        control_period: float,
        joint_lower: np.ndarray,
        joint_upper: np.ndarray,
        stand_pose: np.ndarray,
        kp: np.ndarray,
        kd: np.ndarray,
        supply_voltage: float = 24.0,
    ) -> None:
        self.physics = physics
        self.control_period = float(control_period)
        self.joint_lower = np.asarray(joint_lower, np.float32)
        self.joint_upper = np.asarray(joint_upper, np.float32)
        self.stand_pose = np.asarray(stand_pose, np.float32)
        self.kp = np.asarray(kp, np.float32)
        self.kd = np.asarray(kd, np.float32)
        self.supply_voltage = float(supply_voltage)

        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)

        self._decoder = P.FrameDecoder()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        # servo state
        self.mode = P.Status.RELAXED  # one of RELAXED, ACTIVE, HOLDING
        self.timed_out = False
        self.faults = P.Fault(0)
        self.timeout = 0.0
        self.timeout_action = P.TimeoutAction.RELAX
        self.targets = self.stand_pose.copy()
        self._last_command = time.monotonic()
        self._next_free_step = time.monotonic()
        self._paused = False  # pause(): the command timeout is suspended

        # counters (read by tests)
        self.commands: dict[P.MsgType, int] = {t: 0 for t in P.MsgType}
        self.replies_dropped = 0

        # fault injection
        self._silent = False
        self._corrupt_replies = 0

        self._apply_servos()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the board in a background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._last_command = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="virtual-board", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Suspend the command timeout and the free-running physics: the simulation's time
        stands still for the driver (commands are still answered, TARGETS still step)."""
        with self._state_lock:
            self._paused = True

    def resume(self) -> None:
        """The command timeout counts again, from now."""
        with self._state_lock:
            self._paused = False
            self._last_command = time.monotonic()
            self._next_free_step = self._last_command + self.control_period

    def close(self) -> None:
        """Stop the board thread and close the pty (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def rx_errors(self) -> int:
        """Command frames the board rejected (CRC, length, type)."""
        return self._decoder.stats.rejected

    # ------------------------------------------------------------ fault injection (tests)
    def inject_fault(self, faults: P.Fault) -> None:
        """Latch fault bits as a real board would on overcurrent etc.: servos relax."""
        with self._state_lock:
            self.faults |= faults
            self.mode = P.Status.RELAXED
            self._apply_servos()

    def set_silent(self, silent: bool) -> None:
        """Cable cut: incoming bytes are discarded and nothing is answered."""
        self._silent = silent

    def corrupt_replies(self, n: int) -> None:
        """Flip one payload byte in each of the next ``n`` replies (their CRC then fails)."""
        self._corrupt_replies = n

    def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes to the host (line noise)."""
        os.write(self._master, data)

    def status(self) -> P.Status:
        """The status bits the board would report now."""
        status = self.mode
        if self.mode != P.Status.RELAXED:
            status |= P.Status.SERVOS_ON
        if self.timed_out:
            status |= P.Status.TIMED_OUT
        if self.timeout > 0:
            status |= P.Status.TIMEOUT_ARMED
        return status

    # ------------------------------------------------------------ board thread
    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            wait = self.POLL
            with self._state_lock:
                if self._paused:
                    pass  # neither the timeout nor the free physics counts: check every POLL
                elif self.mode == P.Status.ACTIVE and self.timeout > 0:
                    wait = min(wait, max(0.0, self._last_command + self.timeout - now))
                elif self.mode != P.Status.ACTIVE:
                    wait = min(wait, max(0.0, self._next_free_step - now))
            try:
                ready, _, _ = select.select([self._master], [], [], wait)
            except (OSError, ValueError):
                return  # pty closed under us
            if ready:
                try:
                    data = os.read(self._master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError:
                    return
                if data and not self._silent:
                    for seq, msg in self._decoder.feed(data):
                        self._handle(seq, msg)
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        """Wall-clock duties: the command timeout and free-running physics."""
        with self._state_lock:
            if (
                self.mode == P.Status.ACTIVE
                and self.timeout > 0
                and not self._paused
                and now - self._last_command > self.timeout
            ):
                self.timed_out = True
                self._enter(
                    P.Status.HOLDING
                    if self.timeout_action == P.TimeoutAction.HOLD
                    else P.Status.RELAXED
                )
            if self.mode != P.Status.ACTIVE and not self._paused and now >= self._next_free_step:
                self.physics.advance(self.control_period)
                self._next_free_step += self.control_period
                if self._next_free_step < now:  # fell behind: do not catch up in a burst
                    self._next_free_step = now + self.control_period

    def _enter(self, mode: P.Status) -> None:
        """Switch servo mode (state lock held)."""
        if mode != P.Status.RELAXED and self.mode == P.Status.RELAXED:
            # servos come on where the joints are; otherwise they keep their targets
            # (re-targeting to the measured angles would drop the load-bearing error)
            positions, *_ = self.physics.measure()
            self.targets = np.clip(positions, self.joint_lower, self.joint_upper)
        if mode != P.Status.ACTIVE and self.mode == P.Status.ACTIVE:
            self._next_free_step = time.monotonic() + self.control_period
        self.mode = mode
        self._apply_servos()

    def _apply_servos(self) -> None:
        if self.mode == P.Status.RELAXED:
            zeros = np.zeros_like(self.kp)
            self.physics.set_servos(self.targets, zeros, zeros)
        else:
            self.physics.set_servos(self.targets, self.kp, self.kd)

    def _handle(self, seq: int, msg: P.Message) -> None:
        msg_type, _ = P.encode_payload(msg)
        with self._state_lock:
            self.commands[msg_type] += 1
            self._last_command = time.monotonic()
            if isinstance(msg, P.Targets):
                if self.mode == P.Status.ACTIVE:
                    self.targets = np.clip(msg.positions, self.joint_lower, self.joint_upper)
                    self._apply_servos()
                    self.physics.advance(self.control_period)
            elif isinstance(msg, P.Gains):
                self.kp = np.maximum(msg.kp, 0).astype(np.float32)
                self.kd = np.maximum(msg.kd, 0).astype(np.float32)
                self._apply_servos()
            elif isinstance(msg, P.Relax):
                self._enter(P.Status.RELAXED)
            elif isinstance(msg, P.Hold):
                if not self.faults:
                    self._enter(P.Status.HOLDING)
            elif isinstance(msg, P.Enable):
                if not self.faults:
                    self.timed_out = False
                    self._enter(P.Status.ACTIVE)
            elif isinstance(msg, P.StandUp):
                if not self.faults:
                    self.timed_out = False
                    # a real board runs this asynchronously with STANDING_UP set and the
                    # host polls; the simulation completes it before answering
                    self.physics.stand_up(self.stand_pose, self.kp, self.kd)
                    self.targets = self.stand_pose.copy()
                    self.mode = P.Status.HOLDING
                    self._apply_servos()
                    self._next_free_step = time.monotonic() + self.control_period
            elif isinstance(msg, P.SetTimeout):
                self.timeout = max(float(msg.seconds), 0.0)
                self.timeout_action = msg.action
            elif isinstance(msg, P.ClearFaults):
                self.faults = P.Fault(0)
            elif not isinstance(msg, P.GetState):
                return  # TELEMETRY from the host: not a command, no answer
            self._reply(seq)

    def _reply(self, seq: int) -> None:
        positions, velocities, imu, vx = self.physics.measure()
        frame = P.encode(
            P.Telemetry(
                time_ms=int(self.physics.time * 1000),
                status=self.status(),
                faults=self.faults,
                rx_errors=self.rx_errors,
                supply_voltage=self.supply_voltage,
                positions=positions,
                velocities=velocities,
                imu=imu,
                forward_velocity=vx,
            ),
            seq,
        )
        if self._corrupt_replies > 0:
            self._corrupt_replies -= 1
            frame = bytearray(frame)
            frame[P.HEADER.size + 3] ^= 0xFF
            frame = bytes(frame)
        try:
            os.write(self._master, frame)
        except (BlockingIOError, OSError):
            self.replies_dropped += 1  # nobody reads the port: drop, never block the board
