"""Universal Robots UR5 through ur_rtde, with a Robotiq 2F gripper and a camera.

The driver owns the hardware: the connection, the workspace box every command stays
inside, the checks that the controller is alive, and the stop. What an action means (the
reward, the episode's target) is its task's (robots/tasks.py: ``reach``, ``pick_place``).
The hardware is injected as factories so that the same class runs on
``rtde_control``/``rtde_receive`` or on the simulated controller (robots/sim/sim_ur5.py):

    UR5(config.ur5, task=make_ur5_task(config.ur5), control=lambda: RTDEControlInterface(ip),
        receive=lambda: RTDEReceiveInterface(ip), gripper=lambda: RobotiqGripper(ip),
        camera=lambda: Camera(...))

Limits: ``limit_command`` asks the task for the command that keeps the TCP inside the
workspace box (a reach step is shortened at the box, expressed as the action that was
executed); ``step`` executes exactly that, and a target outside the box is a RobotFault,
never clamped. The orientation is held fixed. The controller's watchdog is armed on
connect and kicked every tick. A protective or emergency stop raises ProtectiveStop; a
lost link or state that stopped updating raises ConnectionLost (ur_rtde's getters keep
returning stale values after a disconnect, so the driver checks ``isConnected()`` and
that the controller timestamp advances). Either ends the episode; the safety
supervisor latches it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from daydream.core.spaces import Space, step_spaces
from robots.base import ConnectionLost, ProtectiveStop, Robot, RobotFault
from robots.tasks import PICK_PLACE_ACTIONS, PickPlaceTask, ReachTask, make_ur5_task

__all__ = ["UR5", "PICK_PLACE_ACTIONS", "StaleStateDetector", "make_ur5", "ur5_spaces"]
_BOX_TOLERANCE = 1e-6  # metres: rounding of a command computed at the box's face


def _plain(block: Any) -> dict:
    """An OmegaConf node or a dict -> a plain dict."""
    if isinstance(block, dict):
        return block
    from omegaconf import OmegaConf

    return OmegaConf.to_container(block, resolve=True)  # type: ignore[return-value]


class StaleStateDetector:
    """Owns the decision that the controller's streamed state is still live.

    ur_rtde's getters return the last values forever after a link dies. The state is
    live while ``isConnected()`` holds and the controller timestamp advances: when it
    has not changed since the previous check, wait up to ``timeout`` seconds for it to
    move (the controller streams at 125-500 Hz) and raise ConnectionLost otherwise.
    """

    def __init__(
        self, timeout: float, clock: Callable[[], float] = time.monotonic, poll: float = 0.001
    ) -> None:
        self.timeout = float(timeout)
        self.clock = clock
        self.poll = poll
        self._last: float | None = None

    def reset(self) -> None:
        self._last = None

    def check(self, receive: Any) -> float:
        """Return the controller timestamp; raise ConnectionLost if the state is stale."""
        deadline = self.clock() + self.timeout
        while True:
            if not receive.isConnected():
                raise ConnectionLost(
                    "the RTDE link to the UR controller is down; check the network cable and that "
                    "the controller is on, then reconnect the robot"
                )
            stamp = float(receive.getTimestamp())
            if stamp != self._last:
                self._last = stamp
                return stamp
            if self.clock() >= deadline:
                raise ConnectionLost(
                    f"the UR controller's timestamp has stayed at {stamp:.3f} s for "
                    f"{self.timeout:.3f} s: its state is stale (link stalled or controller hung); "
                    "check the network and the controller, then reconnect the robot"
                )
            time.sleep(self.poll)


def _sensor_spaces(cfg: dict) -> dict[str, Space]:
    h, w = cfg["camera"]["size"]
    image = {"image": Space((h, w, 3), np.uint8)} if cfg["camera"]["enabled"] else {}
    return {
        **image,
        "tcp_pose": Space((6,), np.float32),
        "joints": Space((6,), np.float32),
        "gripper": Space((1,), np.float32, 0.0, 1.0),
        **step_spaces(),
    }


def ur5_spaces(config: Any) -> tuple[dict[str, Space], dict[str, Space]]:
    """The observation and action spaces of the UR5 (real or simulated) from the config."""
    cfg = _plain(config.ur5)
    task = make_ur5_task(cfg)
    return {**_sensor_spaces(cfg), **task.obs_space}, dict(task.act_space)


class UR5(Robot):
    """Owns one UR5 cell's hardware: arm (via ur_rtde interfaces), gripper, camera, the
    workspace box and the health checks; runs the task it is given."""

    def __init__(
        self,
        config: Any,
        task: ReachTask | PickPlaceTask,
        control: Callable[[], Any],
        receive: Callable[[], Any],
        gripper: Callable[[], Any],
        camera: Callable[[], Any],
        reset_hook: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        pause: tuple[Callable[[], None], Callable[[], None]] | None = None,
    ) -> None:
        cfg = _plain(config)
        self.cfg = cfg
        self.task = task
        self.control_period = float(cfg["control_period_s"])
        self.episode_length = int(cfg["episode_length"])
        self.low = np.asarray(cfg["workspace"]["low"], np.float64)
        self.high = np.asarray(cfg["workspace"]["high"], np.float64)
        if not np.all(self.low < self.high):
            raise ValueError(f"ur5.workspace.low {self.low} must be below high {self.high}")
        self.rotation = np.asarray(cfg["tool_rotation"], np.float64)
        self.home = np.clip(np.asarray(cfg["home"], np.float64), self.low, self.high)

        self._factories = (control, receive, gripper, camera)
        self._reset_hook = reset_hook
        self._on_disconnect = on_disconnect
        self._pause_hooks = pause  # a simulated cell's (pause, resume)
        self._stale = StaleStateDetector(float(cfg["stale_periods"]) * self.control_period, clock)

        self.obs_space = {**_sensor_spaces(cfg), **task.obs_space}
        self.act_space = dict(task.act_space)

        self.control: Any = None
        self.receive: Any = None
        self.gripper: Any = None
        self.camera: Any = None
        self._stop_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._steps = 0
        self._episode_over = True

    # ------------------------------------------------------------ connection
    def connect(self) -> None:
        if self.control is not None:
            return
        control, receive, gripper, camera = self._factories
        try:
            self.receive = receive()
            self.control = control()
        except RuntimeError as e:
            raise ConnectionLost(
                f"cannot connect to the UR controller at {self.cfg['ip']} ({e}); check the address "
                "(--set ur5.ip=...), that the robot is powered on and in remote control mode"
            ) from e
        self.gripper = gripper()
        self.gripper.connect()
        self.gripper.activate()
        if self.cfg["camera"]["enabled"]:
            self.camera = camera()
            self.camera.start()
        self.control.setWatchdog(float(self.cfg["watchdog_min_frequency"]))
        self._stale.reset()

    def disconnect(self) -> None:
        """Stop, close camera, gripper and both RTDE links; then ``on_disconnect``. Idempotent."""
        try:
            if self.control is not None:
                self.stop()
                for part, close in (
                    (self.camera, "close"),
                    (self.gripper, "disconnect"),
                    (self.control, "disconnect"),
                    (self.receive, "disconnect"),
                ):
                    try:
                        getattr(part, close)()
                    except Exception:  # noqa: BLE001 - closing must go on through every part
                        pass
                self.control = self.receive = self.gripper = self.camera = None
                self._episode_over = True
        finally:
            if self._on_disconnect is not None:
                self._on_disconnect()

    def stop(self, hard: bool = False) -> None:
        """Decelerate and halt (``stopL``); ``hard``: trigger a protective stop.

        Takes only its own lock, so it never waits behind a move in another thread.
        A failure to send (the link is already down) is swallowed: the controller's
        watchdog halts the arm when the kicks stop.
        """
        with self._stop_lock:
            control = self.control
            if control is None:
                return
            try:
                if hard:
                    control.triggerProtectiveStop()
                else:
                    control.stopL(float(self.cfg["stop_deceleration"]))
            except (RuntimeError, OSError):
                pass
            self._episode_over = True

    # ------------------------------------------------------------ safety and state
    def check_health(self) -> None:
        """Raise the fault that keeps the arm from moving, if any."""
        if not self.control.isConnected():
            raise ConnectionLost(
                f"the RTDE control link to the UR controller at {self.cfg['ip']} is down; "
                "check the network and reconnect the robot"
            )
        self._stale.check(self.receive)
        if self.receive.isEmergencyStopped():
            raise ProtectiveStop(
                "the UR5 is in an emergency stop; release the e-stop, then reset "
                "the safety stop in daydream"
            )
        if self.receive.isProtectiveStopped():
            raise ProtectiveStop(
                "the UR5 is in a protective stop (collision or limit); unlock it on "
                "the pendant, then reset the safety stop in daydream"
            )
        if hasattr(self.control, "isProgramRunning") and not self.control.isProgramRunning():
            raise RobotFault(
                "the ur_rtde control script is not running (watchdog expired or stopped "
                "at the pendant); reconnect the robot to upload it again"
            )

    def limit_command(
        self, action: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """The task's command that keeps the TCP inside the workspace box."""
        if self.control is None:
            return action, []
        limited, notes = self.task.limit(np.asarray(action["action"], np.float32), self)
        return {"action": limited}, notes

    def move_to(self, position: np.ndarray) -> None:
        """moveL to ``position`` with the fixed tool orientation. A position outside the
        workspace box is a RobotFault (limit_command keeps commands inside; never clamped)."""
        position = np.asarray(position, np.float64)
        if np.any(position < self.low - _BOX_TOLERANCE) or np.any(
            position > self.high + _BOX_TOLERANCE
        ):
            self._episode_over = True
            raise RobotFault(
                f"refused moveL to {np.round(position, 4).tolist()}: outside the workspace box "
                f"{self.low.tolist()}..{self.high.tolist()} (commands must pass limit_command)"
            )
        position = np.clip(position, self.low, self.high)  # rounding at the box's face only
        pose = [*map(float, position), *map(float, self.rotation)]
        if not self.control.moveL(pose, float(self.cfg["speed"]), float(self.cfg["acceleration"])):
            self._episode_over = True
            self.check_health()
            raise RobotFault(
                f"the UR controller refused moveL to {np.round(pose, 4).tolist()} "
                "(unreachable pose?); check ur5.workspace and ur5.home"
            )

    def tcp_position(self) -> np.ndarray:
        return np.asarray(self.receive.getActualTCPPose()[:3], np.float64)

    def _observe(self, reward: float, first: bool) -> dict[str, np.ndarray]:
        self.check_health()
        tcp = np.asarray(self.receive.getActualTCPPose(), np.float32)
        obs = {
            **({"image": self.camera.read()} if self.camera is not None else {}),
            "tcp_pose": tcp,
            "joints": np.asarray(self.receive.getActualQ(), np.float32),
            "gripper": np.asarray([self.gripper.position()], np.float32),
            "reward": np.float32(reward),
            "is_first": np.bool_(first),
            "is_last": np.bool_(self._steps >= self.episode_length),
            "is_terminal": np.bool_(False),
            **self.task.observe(),
        }
        self._episode_over = bool(obs["is_last"])
        return obs

    # ------------------------------------------------------------ episode
    def reset(self) -> dict[str, np.ndarray]:
        if self.control is None:
            raise RuntimeError("UR5 not connected; call connect() (or use it as a context manager)")
        with self._step_lock:
            self._episode_over = True
            self.check_health()
            self.control.kickWatchdog()
            self.gripper.open()
            if self._reset_hook is not None:
                self._reset_hook()
            here = self.tcp_position()
            # Up to the travel height where the arm is, then across to home: two moves in the box.
            self.move_to(np.clip([here[0], here[1], self.home[2]], self.low, self.high))
            self.control.kickWatchdog()
            self.move_to(self.home)
            self._steps = 0
            return self._observe(self.task.begin(self), True)

    def episode_info(self) -> dict[str, float]:
        return self.task.episode_info()

    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute exactly ``action`` (already limited by ``limit_command``)."""
        with self._step_lock:
            if self.control is None or self._episode_over:
                raise RuntimeError("the episode is over (or never started); call reset() first")
            act = np.asarray(action["action"], np.float32)
            if act.shape != self.act_space["action"].shape:
                raise ValueError(
                    f"action has shape {act.shape}, expected {self.act_space['action'].shape}"
                )
            try:
                self.control.kickWatchdog()
                self.check_health()
                reward = self.task.execute(act, self)
                self._steps += 1
                return self._observe(reward, False)
            except RobotFault:
                self._episode_over = True
                raise

    def seed(self, seed: int) -> None:
        """Reseed the task's randomness (the reach target)."""
        self.task.seed(seed)

    def _pause(self) -> None:
        if self._pause_hooks is not None:
            self._pause_hooks[0]()

    def _resume(self) -> None:
        if self._pause_hooks is not None:
            self._pause_hooks[1]()


def make_ur5(config: Any) -> UR5:
    """The real UR5 from ``config.ur5``: ur_rtde (imported here), Robotiq URCap, OpenCV camera."""
    from robots.camera import Camera
    from robots.gripper import RobotiqGripper

    cfg = _plain(config.ur5)
    ip = cfg["ip"]

    def control() -> Any:
        import rtde_control

        return rtde_control.RTDEControlInterface(ip)

    def receive() -> Any:
        import rtde_receive

        return rtde_receive.RTDEReceiveInterface(ip)

    g, c = cfg["gripper"], cfg["camera"]
    return UR5(
        cfg,
        make_ur5_task(cfg, seed=int(config.seed)),
        control=control,
        receive=receive,
        gripper=lambda: RobotiqGripper(ip, g["port"], g["timeout_s"], g["speed"], g["force"]),
        camera=lambda: Camera(
            c["index"], c["size"], c["crop"], c["timeout_s"], c["freeze_timeout_s"]
        ),
    )
