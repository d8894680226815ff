"""A 12-servo quadruped on a serial servo board (the `walk` task is robots/tasks.py's).

The driver talks to the board with robots/protocol.py over pyserial, exactly the
same way for a real board on /dev/ttyUSB0 and for the virtual board on a
pseudo-terminal (robots/sim/). Every command is answered by one TELEMETRY frame
that carries the command's sequence number; the driver waits for that answer.

The walk task (robots/tasks.py ``WalkTask``, reset-free as on DayDreamer's A1) says what
an action means (joint targets around the standing pose) and gives the reward. The
driver owns the hardware limits: ``limit_command`` moves each joint target at most
``max_delta`` rad per tick from the previous one and keeps it within the joint limits,
and returns that as the action executed; ``step`` sends exactly its targets (targets
beyond the limits are a RobotFault, never clamped). ``reset()`` does not reposition
the robot; it stands it up only if it has fallen. During an episode, a robot fallen
for ``standup.fallen_steps`` ticks in a row is stood up too (0 disables that), and the
episode goes on.

Connection handling: ``connect()`` opens the port, arms the board's command timeout
(``board_timeout_s``, then ``timeout_action``) and sends the gains. A missing answer
is re-requested ``reply_retries`` times, then the driver raises ConnectionLost; a
board that timed out raises ConnectionLost; board fault bits raise RobotFault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import serial

from daydream.core.spaces import Space, step_spaces, validate
from robots import protocol as P
from robots.base import ConnectionLost, Robot, RobotFault
from robots.tasks import WalkTask

log = logging.getLogger(__name__)

N = P.N_JOINTS


class Companion(Protocol):
    """Something that must run while the driver is connected (the virtual board in sim)."""

    def start(self) -> None: ...

    def close(self) -> None: ...


def _per_joint(values: Any, what: str) -> np.ndarray:
    """12 values from 1 (all joints), 3 (per leg, repeated for 4 legs) or 12 values."""
    arr = np.atleast_1d(np.asarray(list(values) if not np.isscalar(values) else [values],
                                   np.float32))
    if arr.size == 1:
        return np.full(N, arr[0], np.float32)
    if arr.size == 3:
        return np.tile(arr, 4).astype(np.float32)
    if arr.size == N:
        return arr
    raise ValueError(f"quadruped.{what} needs 1, 3 (per leg) or 12 values, got {arr.size}")


_LIMIT_TOLERANCE = 1e-4  # rad: float rounding of a target computed at a limit


def _sensor_spaces(cfg: Any) -> dict[str, Space]:
    spaces = {
        "joint_pos": Space((N,), np.float32),
        "joint_vel": Space((N,), np.float32),
        "imu": Space((5,), np.float32),  # roll, pitch, roll rate, pitch rate, yaw rate
        **step_spaces(),
    }
    if cfg.image.enabled:
        h, w = (int(s) for s in cfg.image.size)
        spaces["image"] = Space((h, w, 3), np.uint8, 0, 255)
    return spaces


def quadruped_spaces(config: Any) -> tuple[dict[str, Space], dict[str, Space]]:
    """The observation and action spaces of the quadruped (real or simulated) from the config."""
    return _sensor_spaces(config.quadruped), {"action": Space((N,), np.float32, -1.0, 1.0)}


def make_walk_task(cfg: Any, stand_pose: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """The walk task from the ``quadruped`` block and the robot's joint geometry."""
    return WalkTask(
        stand_pose, lower, upper, cfg.action_fraction, cfg.reward.upright, cfg.reward.forward,
        cfg.reward.target_speed, cfg.episode_length, cfg.standup.upright_threshold,
    )  # fmt: skip


class Quadruped(Robot):
    """The quadruped driver: owns the serial port, the board's state, the joint limits and the
    stand-up routine; runs the walk task.

    ``cfg`` is the ``quadruped`` config block. ``camera``, if given, returns an
    (H, W, 3) uint8 frame for the ``image`` key; ``companion`` is started on connect
    and closed on disconnect.
    """

    def __init__(
        self,
        cfg: Any,
        camera: Callable[[], np.ndarray] | None = None,
        companion: Companion | None = None,
    ) -> None:
        self.port = str(cfg.port)
        self.baudrate = int(cfg.baudrate)
        self.read_timeout = float(cfg.read_timeout_s)
        self.reply_timeout = float(cfg.reply_timeout_s)
        self.reply_retries = int(cfg.reply_retries)
        self.board_timeout = float(cfg.board_timeout_s)
        action = str(cfg.timeout_action).lower()
        if action not in ("relax", "hold"):
            raise ValueError(
                f"quadruped.timeout_action is '{cfg.timeout_action}'; use relax or hold"
            )
        self.timeout_action = P.TimeoutAction.HOLD if action == "hold" else P.TimeoutAction.RELAX
        if 0 < self.board_timeout <= self.reply_timeout:
            raise ValueError(
                f"quadruped.reply_timeout_s ({self.reply_timeout} s) must be shorter than "
                f"quadruped.board_timeout_s ({self.board_timeout} s): the driver re-asks a lost "
                "answer after reply_timeout, and the board must not time out meanwhile"
            )
        self.control_period = float(cfg.control_period_s)
        self.pace = bool(cfg.pace)
        self.lower = _per_joint(cfg.joint_lower, "joint_lower")
        self.upper = _per_joint(cfg.joint_upper, "joint_upper")
        self.stand_pose = np.clip(_per_joint(cfg.stand_pose, "stand_pose"), self.lower, self.upper)
        if np.any(self.lower >= self.upper):
            raise ValueError("quadruped.joint_lower must be below quadruped.joint_upper")
        self.max_delta = float(cfg.max_delta)
        self.kp = _per_joint(cfg.kp, "kp")
        self.kd = _per_joint(cfg.kd, "kd")
        self.task = make_walk_task(cfg, self.stand_pose, self.lower, self.upper)
        self.fallen_steps = int(cfg.standup.fallen_steps)
        self.standup_timeout = float(cfg.standup.timeout_s)

        self.image_enabled = bool(cfg.image.enabled)
        if self.image_enabled and camera is None:
            raise ValueError(
                "quadruped.image.enabled is true but no camera was given to the driver "
                "(the real quadruped has no camera wiring yet; set quadruped.image.enabled=false)"
            )
        self.camera = camera if self.image_enabled else None
        self.companion = companion

        self.obs_space = _sensor_spaces(cfg)
        self.act_space = dict(self.task.act_space)

        self._serial: serial.Serial | None = None
        self._decoder = P.FrameDecoder()
        self._io_lock = threading.Lock()  # one command/answer transaction at a time
        self._write_lock = threading.Lock()  # one frame on the wire at a time
        self._seq = 0
        self._stopped = True
        self._targets = self.stand_pose.copy()
        self._step = 0
        self._fallen_for = 0
        self._last_tick = 0.0
        self.telemetry: P.Telemetry | None = None  # the newest answer from the board
        self.stand_ups = 0

    # ------------------------------------------------------------ connection
    def connect(self) -> None:
        if self._serial is not None:
            return
        if self.companion is not None:
            self.companion.start()
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=self.read_timeout)
        except (serial.SerialException, OSError) as e:
            raise ConnectionLost(
                f"serial port {self.port} cannot be opened: {e} (is the board plugged in and "
                f"powered? is your user in group dialout? try --set quadruped.port=/dev/ttyACM0)"
            ) from e
        if self.camera is not None:
            self.camera()  # first frame now: opening a camera is slow, the board timeout is not
        self._serial.reset_input_buffer()
        self._decoder.reset()
        self._transact(P.SetTimeout(self.board_timeout, self.timeout_action))
        self._check(self._transact(P.Gains(self.kp, self.kd)), during="connect")
        log.info("quadruped board on %s: timeout %.2fs -> %s", self.port, self.board_timeout,
                 self.timeout_action.name.lower())

    def disconnect(self) -> None:
        """Hold the servos (the robot keeps standing where it stands), then close the port."""
        if self._serial is not None:
            self.stop(hard=False)
            with self._io_lock, self._write_lock:
                try:
                    self._serial.close()
                except (serial.SerialException, OSError):
                    pass
                self._serial = None
        if self.companion is not None:
            self.companion.close()

    def stop(self, hard: bool = False) -> None:
        """HOLD (hard=False) or RELAX (hard=True) the servos. Idempotent, any thread.

        Sends the frame without waiting for the answer, so it never waits on a
        transaction in progress in another thread. Afterwards step() refuses to run
        until reset().
        """
        self._stopped = True
        if self._serial is None:
            return
        try:
            self._send(P.Relax() if hard else P.Hold())
        except ConnectionLost as e:
            log.warning("quadruped stop(%s) could not be sent: %s (the board's own "
                        "timeout still stops it)", "hard" if hard else "soft", e)

    def _pause(self) -> None:
        if hasattr(self.companion, "pause"):
            self.companion.pause()

    def _resume(self) -> None:
        if hasattr(self.companion, "resume"):
            self.companion.resume()

    def clear_faults(self) -> None:
        """Clear the board's latched faults (after a person fixed their cause)."""
        self._transact(P.ClearFaults())

    # ------------------------------------------------------------ episode
    def reset(self) -> dict[str, np.ndarray]:
        self._require_connected()
        # a board that timed out is what reset() recovers from: ENABLE clears it
        tel = self._check(self._transact(P.GetState()), during="reset", timed_out_ok=True)
        if self._fallen(tel):
            tel = self._stand_up()
        tel = self._check(self._transact(P.Enable()), during="reset")
        self._targets = np.clip(tel.positions, self.lower, self.upper)
        self.task.begin()  # the episode's figures (episode_info) count from here
        self._step = 0
        self._fallen_for = 0
        self._stopped = False
        self._last_tick = time.monotonic()
        return self._observation(tel, reward=0.0, first=True, last=False)

    def limit_command(
        self, action: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Each joint target moves at most ``max_delta`` from the previous one and stays within
        the joint limits; returned as the action whose targets those are."""
        a = np.clip(np.asarray(action["action"], np.float32), -1.0, 1.0)
        wanted = self.task.targets_for(a)
        step = np.clip(wanted - self._targets, -self.max_delta, self.max_delta)
        limited = np.clip(self._targets + step, self.lower, self.upper)
        if np.allclose(limited, wanted, rtol=0, atol=1e-6):
            return {"action": a}, []
        notes = []
        if not np.array_equal(step, wanted - self._targets):
            notes.append(f"joint targets moved at most max_delta {self.max_delta} rad")
        if not np.array_equal(limited, self._targets + step):
            notes.append("joint targets kept within the joint limits")
        return {"action": self.task.action_for(limited)}, notes

    def episode_info(self) -> dict[str, float]:
        return self.task.episode_info()

    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send exactly the targets of ``action`` (already limited by ``limit_command``)."""
        self._require_connected()
        if self._stopped:
            raise RobotFault("quadruped is stopped (stop() was called); call reset() to go on")
        validate(action, self.act_space, "action")
        self._targets = self._checked_targets(self.task.targets_for(action["action"]))
        if self.pace:
            delay = self._last_tick + self.control_period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last_tick = max(self._last_tick + self.control_period, time.monotonic() - 0.5)
        tel = self._check(self._transact(P.Targets(self._targets)), during="step")
        if not tel.status & P.Status.ACTIVE:
            raise RobotFault(
                f"quadruped board is not following targets (status {tel.status!r}); "
                "something else stopped it; call reset() to re-enable"
            )
        self._step += 1
        reward = self.task.reward(tel.imu, tel.forward_velocity)
        if self._fallen(tel):
            self._fallen_for += 1
            if self.fallen_steps and self._fallen_for >= self.fallen_steps:
                tel = self._stand_up()
                tel = self._check(self._transact(P.Enable()), during="step")
                self._targets = np.clip(tel.positions, self.lower, self.upper)
                self._fallen_for = 0
        else:
            self._fallen_for = 0
        last = self._step >= self.task.episode_length
        return self._observation(tel, reward=reward, first=False, last=last)

    # ------------------------------------------------------------ limits
    def _checked_targets(self, targets: np.ndarray) -> np.ndarray:
        """``targets`` if within max_delta of the previous ones and the joint limits (up to
        float rounding); a RobotFault otherwise: a command that skipped limit_command."""
        tol = _LIMIT_TOLERANCE
        if (
            np.any(np.abs(targets - self._targets) > self.max_delta + tol)
            or np.any(targets < self.lower - tol)
            or np.any(targets > self.upper + tol)
        ):
            raise RobotFault(
                f"refused joint targets {np.round(targets, 3).tolist()}: beyond max_delta or the "
                "joint limits (commands must pass limit_command)"
            )
        return np.clip(targets, self.lower, self.upper).astype(np.float32)

    def _fallen(self, tel: P.Telemetry) -> bool:
        return self.task.fallen(tel.imu)

    def _stand_up(self) -> P.Telemetry:
        """Ask the board to stand up; poll until it has finished and stands upright."""
        log.info("quadruped has fallen: running the board's stand-up routine")
        tel = self._check(self._transact(P.StandUp()), during="stand-up", timed_out_ok=True)
        deadline = time.monotonic() + self.standup_timeout
        while tel.status & P.Status.STANDING_UP:
            if time.monotonic() > deadline:
                break
            time.sleep(min(0.05, max(self.control_period, 0.005)))
            tel = self._check(self._transact(P.GetState()), during="stand-up")
        if tel.status & P.Status.STANDING_UP or self._fallen(tel):
            raise RobotFault(
                f"quadruped did not stand up within {self.standup_timeout:.1f} s (roll "
                f"{np.degrees(tel.imu[0]):.0f} deg, pitch {np.degrees(tel.imu[1]):.0f} deg); "
                "help it onto its feet, then reset the safety stop"
            )
        self.stand_ups += 1
        return tel

    def _observation(self, tel: P.Telemetry, reward: float, first: bool, last: bool) -> dict:
        obs = {
            "joint_pos": np.clip(tel.positions, self.lower, self.upper).astype(np.float32),
            "joint_vel": tel.velocities.astype(np.float32),
            "imu": tel.imu.astype(np.float32),
            "reward": np.float32(reward),
            "is_first": np.bool_(first),
            "is_last": np.bool_(last),
            "is_terminal": np.bool_(False),
        }
        if self.camera is not None:
            obs["image"] = self.camera()
        return obs

    # ------------------------------------------------------------ wire
    def _require_connected(self) -> None:
        if self._serial is None:
            raise ConnectionLost(f"quadruped on {self.port} is not connected; call connect()")

    def _send(self, msg: P.Message) -> int:
        with self._write_lock:
            if self._serial is None:
                raise ConnectionLost(f"quadruped on {self.port} is not connected")
            self._seq = (self._seq + 1) & 0xFFFF
            seq = self._seq
            try:
                self._serial.write(P.encode(msg, seq))
            except (serial.SerialException, OSError) as e:
                raise ConnectionLost(
                    f"writing to the quadruped board on {self.port} failed: {e} "
                    "(cable unplugged? board powered off?)"
                ) from e
        return seq

    def _transact(self, msg: P.Message) -> P.Telemetry:
        """Send ``msg`` and return the board's answer; re-ask with GET_STATE if it is lost."""
        with self._io_lock:
            seq = self._send(msg)
            for attempt in range(self.reply_retries + 1):
                tel = self._await(seq)
                if tel is not None:
                    self.telemetry = tel
                    return tel
                if attempt < self.reply_retries:
                    seq = self._send(P.GetState())
        waited = (self.reply_retries + 1) * self.reply_timeout
        raise ConnectionLost(
            f"no answer from the quadruped board on {self.port} for {waited:.2f} s "
            f"({self._decoder.stats.rejected} corrupted frames so far; is the cable in, "
            "the board powered, the baudrate right? try --set quadruped.baudrate=...)"
        )

    def _await(self, seq: int) -> P.Telemetry | None:
        """The TELEMETRY answering ``seq``, or None after reply_timeout. Drops stale answers."""
        ser = self._serial
        assert ser is not None
        deadline = time.monotonic() + self.reply_timeout
        while time.monotonic() < deadline:
            try:
                data = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError) as e:
                raise ConnectionLost(
                    f"reading from the quadruped board on {self.port} failed: {e} "
                    "(cable unplugged? board powered off?)"
                ) from e
            if not data:
                continue
            for got, msg in self._decoder.feed(data):
                if got == seq and isinstance(msg, P.Telemetry):
                    return msg
        return None

    def _check(self, tel: P.Telemetry, during: str, timed_out_ok: bool = False) -> P.Telemetry:
        """Raise on board faults or a board that timed out; return ``tel`` otherwise."""
        if tel.faults:
            names = ", ".join(f.name for f in P.Fault if f & tel.faults)
            raise RobotFault(
                f"quadruped board reports faults during {during}: {names}; the servos are "
                "relaxed. Fix the cause, then call clear_faults() (or power-cycle the board)"
            )
        if tel.status & P.Status.TIMED_OUT and not timed_out_ok:
            raise ConnectionLost(
                f"quadruped board timed out during {during}: no command for more than "
                f"{self.board_timeout:.2f} s, so it "
                f"{'held' if self.timeout_action == P.TimeoutAction.HOLD else 'relaxed'} the "
                "servos (policy stall? raise quadruped.board_timeout_s); call reset() to go on"
            )
        return tel

    @property
    def decoder_stats(self) -> P.DecoderStats:
        """Counts of corrupted / dropped frames received from the board."""
        return self._decoder.stats


def make_quadruped(config: Any, **_: Any) -> Quadruped:
    """The quadruped on a real servo board, from ``config.quadruped``."""
    return Quadruped(config.quadruped)
