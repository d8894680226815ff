"""Universal Robots UR5 through ur_rtde, with a Robotiq 2F gripper and a camera.

The driver owns the task (what an action means, the reward, the episode), the
safety limits it applies before anything reaches the controller, and the checks
that the controller is alive. The hardware is injected as factories so that the
same class runs on ``rtde_control``/``rtde_receive`` or on the simulated controller
(robots/sim/sim_ur5.py):

    UR5(config.ur5, control=lambda: RTDEControlInterface(ip),
        receive=lambda: RTDEReceiveInterface(ip), gripper=lambda: RobotiqGripper(ip),
        camera=lambda: Camera(...))

Tasks (``ur5.task``):
- ``pick_place`` (DayDreamer): one-hot actions over PICK_PLACE_ACTIONS on a grid of
  ``grid`` metres at fixed Z levels; reward +1 for a grasp, -1 for a release over the
  bin the cube came from, +10 for a release over the other bin.
- ``reach``: actions in [-1, 1]^3 scaled by ``max_step`` metres; reward is minus the
  distance from the TCP to a random target, which is part of the observation.

Safety, in the driver: every commanded TCP position is clipped to the workspace box
and to the per-step motion limit before it is sent; the orientation is held fixed.
The controller's watchdog is armed on connect and kicked every tick. A protective or
emergency stop raises ProtectiveStop; a lost link or state that stopped updating
raises ConnectionLost (ur_rtde's getters keep returning stale values after a
disconnect, so the driver checks ``isConnected()`` and that the controller timestamp
advances). Either ends the episode; the safety supervisor latches it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robots.base import ConnectionLost, ProtectiveStop, Robot, RobotFault, Space, step_spaces

PICK_PLACE_ACTIONS = ("+x", "-x", "+y", "-y", "lower", "raise", "toggle_gripper")
_MOVES = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1)}  # action -> (dx, dy) in grid cells
_GRASPED = 2  # Robotiq OBJ status: stopped on an object while closing


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


class UR5(Robot):
    """Owns one UR5 cell: arm (via ur_rtde interfaces), gripper, camera, task and its limits."""

    def __init__(
        self,
        config: Any,
        control: Callable[[], Any],
        receive: Callable[[], Any],
        gripper: Callable[[], Any],
        camera: Callable[[], Any],
        reset_hook: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cfg = _plain(config)
        self.cfg = cfg
        self.task = cfg["task"]
        if self.task not in ("pick_place", "reach"):
            raise ValueError(f"unknown ur5 task '{self.task}'; use pick_place or reach (ur5.task)")
        self.control_period = float(cfg["control_period"])
        self.episode_length = int(cfg["episode_length"])
        self.low = np.asarray(cfg["workspace"]["low"], np.float64)
        self.high = np.asarray(cfg["workspace"]["high"], np.float64)
        if not np.all(self.low < self.high):
            raise ValueError(f"ur5.workspace.low {self.low} must be below high {self.high}")
        self.rotation = np.asarray(cfg["tool_rotation"], np.float64)
        self.home = np.clip(np.asarray(cfg["home"], np.float64), self.low, self.high)
        self.bins = [tuple(map(float, b)) for b in cfg["bins"]]
        pp, reach = cfg["pick_place"], cfg["reach"]
        self.grid = float(pp["grid"])
        self.z_levels = sorted(float(z) for z in pp["z_levels"])
        self.rewards = {k: float(v) for k, v in pp["rewards"].items()}
        self.max_step = float(reach["max_step"])
        # Largest per-axis distance one step may move the TCP.
        self.step_limit = self.grid if self.task == "pick_place" else self.max_step
        h, w = cfg["camera"]["size"]

        self._factories = (control, receive, gripper, camera)
        self._reset_hook = reset_hook
        self._on_disconnect = on_disconnect
        self._rng = np.random.default_rng(seed)
        self._stale = StaleStateDetector(float(cfg["stale_periods"]) * self.control_period, clock)

        self.obs_space = {
            "image": Space((h, w, 3), np.uint8),
            "tcp_pose": Space((6,), np.float32),
            "joints": Space((6,), np.float32),
            "gripper": Space((1,), np.float32, 0.0, 1.0),
            **step_spaces(),
        }
        if self.task == "pick_place":
            self.act_space = {"action": Space((len(PICK_PLACE_ACTIONS),), discrete=True)}
        else:
            self.obs_space["target"] = Space((3,), np.float32)
            self.act_space = {"action": Space((3,), np.float32, -1.0, 1.0)}

        self.control: Any = None
        self.receive: Any = None
        self.gripper: Any = None
        self.camera: Any = None
        self._stop_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._steps = 0
        self._episode_over = True
        self._closed = False
        self._holding = False
        self._grasp_bin: int | None = None
        self.target = self.home.copy()

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

    def clamp(self, position: np.ndarray, current: np.ndarray) -> np.ndarray:
        """The position to command: within one step of ``current`` and inside the workspace."""
        position = np.clip(position, current - self.step_limit, current + self.step_limit)
        return np.clip(position, self.low, self.high)

    def _move(self, position: np.ndarray) -> None:
        position = np.clip(position, self.low, self.high)  # never command outside the box
        pose = [*map(float, position), *map(float, self.rotation)]
        if not self.control.moveL(pose, float(self.cfg["speed"]), float(self.cfg["acceleration"])):
            self._episode_over = True
            self.check_health()
            raise RobotFault(
                f"the UR controller refused moveL to {np.round(pose, 4).tolist()} "
                "(unreachable pose?); check ur5.workspace and ur5.home"
            )

    def _bin_of(self, position: np.ndarray) -> int | None:
        for i, (x0, y0, x1, y1) in enumerate(self.bins):
            if x0 <= position[0] <= x1 and y0 <= position[1] <= y1:
                return i
        return None

    def _observe(self, reward: float, first: bool) -> dict[str, np.ndarray]:
        self.check_health()
        tcp = np.asarray(self.receive.getActualTCPPose(), np.float32)
        obs = {
            "image": self.camera.read(),
            "tcp_pose": tcp,
            "joints": np.asarray(self.receive.getActualQ(), np.float32),
            "gripper": np.asarray([self.gripper.position()], np.float32),
            "reward": np.float32(reward),
            "is_first": np.bool_(first),
            "is_last": np.bool_(self._steps >= self.episode_length),
            "is_terminal": np.bool_(False),
        }
        if self.task == "reach":
            obs["target"] = self.target.astype(np.float32)
        self._episode_over = bool(obs["is_last"])
        return obs

    def _tcp_position(self) -> np.ndarray:
        return np.asarray(self.receive.getActualTCPPose()[:3], np.float64)

    # ------------------------------------------------------------ episode
    def reset(self) -> dict[str, np.ndarray]:
        if self.control is None:
            raise RuntimeError("UR5 not connected; call connect() (or use it as a context manager)")
        with self._step_lock:
            self._episode_over = True
            self.check_health()
            self.control.kickWatchdog()
            self.gripper.open()
            self._closed = self._holding = False
            self._grasp_bin = None
            if self._reset_hook is not None:
                self._reset_hook()
            here = self._tcp_position()
            # Up to the travel height where the arm is, then across to home: two moves in the box.
            self._move(np.array([here[0], here[1], self.home[2]]))
            self.control.kickWatchdog()
            self._move(self.home)
            if self.task == "reach":
                self.target = self._rng.uniform(self.low, self.high)
            self._steps = 0
            return self._observe(self._reward_reach() if self.task == "reach" else 0.0, True)

    def step(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
                if self.task == "pick_place":
                    reward = self._step_pick_place(int(np.argmax(act)))
                else:
                    reward = self._step_reach(act)
                self._steps += 1
                return self._observe(reward, False)
            except RobotFault:
                self._episode_over = True
                raise

    def _step_pick_place(self, index: int) -> float:
        here = self._tcp_position()
        if index == len(PICK_PLACE_ACTIONS) - 1:
            return self._toggle_gripper(here)
        goal = here.copy()
        if index in _MOVES:
            goal[:2] += np.asarray(_MOVES[index]) * self.grid
        else:  # lower / raise to the next fixed Z level
            levels = np.asarray(self.z_levels)
            if index == 4:
                below = levels[levels < here[2] - 1e-3]
                goal[2] = below[-1] if below.size else levels[0]
            else:
                above = levels[levels > here[2] + 1e-3]
                goal[2] = above[0] if above.size else levels[-1]
        self._move(self.clamp_pick_place(goal, here))
        return 0.0

    def clamp_pick_place(self, goal: np.ndarray, here: np.ndarray) -> np.ndarray:
        """Grid moves change x/y by at most one grid cell; Z moves go between the fixed levels."""
        out = goal.copy()
        out[:2] = np.clip(goal[:2], here[:2] - self.grid, here[:2] + self.grid)
        return np.clip(out, self.low, self.high)

    def _toggle_gripper(self, here: np.ndarray) -> float:
        if not self._closed:
            status = self.gripper.close()
            self._closed = True
            if status == _GRASPED:
                self._holding, self._grasp_bin = True, self._bin_of(here)
                return self.rewards["grasp"]
            return 0.0
        self.gripper.open()
        self._closed = False
        if not self._holding:
            return 0.0
        self._holding = False
        where = self._bin_of(here)
        if where is None:
            return 0.0
        return self.rewards["same_bin"] if where == self._grasp_bin else self.rewards["other_bin"]

    def _step_reach(self, act: np.ndarray) -> float:
        here = self._tcp_position()
        delta = np.clip(np.nan_to_num(act.astype(np.float64)), -1.0, 1.0) * self.max_step
        self._move(self.clamp(here + delta, here))
        return self._reward_reach()

    def _reward_reach(self) -> float:
        return -float(np.linalg.norm(self._tcp_position() - self.target))


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
        control=control,
        receive=receive,
        gripper=lambda: RobotiqGripper(ip, g["port"], g["timeout"], g["speed"], g["force"]),
        camera=lambda: Camera(c["index"], c["size"], c["crop"], c["timeout"], c["freeze_timeout"]),
        seed=int(config.seed),
    )
