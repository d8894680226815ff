"""A simulated UR5 controller behind the ur_rtde method subset the ``ur5`` driver uses.

What it owns:
- the arm's joint angles, moved by linear moves through the real UR5 kinematics
  (Denavit-Hartenberg parameters from Universal Robots; inverse kinematics by damped
  Newton steps from the current joint angles, so the arm never flips configuration);
- the controller's clock, safety mode (normal / protective stop / emergency stop),
  its watchdog and its connection, with faults injectable by tests;
- a log of every command it received (``commands``), so tests can check what the
  driver sent.

``SimRTDEControl`` and ``SimRTDEReceive`` are thin facades with the method names of
``rtde_control.RTDEControlInterface`` and ``rtde_receive.RTDEReceiveInterface``;
:func:`make_sim_ur5` builds the unchanged ``UR5`` driver on them, on a simulated
Robotiq server on loopback (a real socket) and on the scene's rendered camera.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robots.sim.scene import Scene

# UR5 (CB3) Denavit-Hartenberg parameters, metres and radians (Universal Robots).
UR5_D = (0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823)
UR5_A = (0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)
UR5_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
# A joint configuration near the cell (elbow up, tool down) to start from.
UR5_READY_Q = (2.902, -1.62, 1.934, -1.885, -1.5708, -1.81)

# ur_rtde safety modes (getSafetyMode) and robot modes (getRobotMode) the sim reports.
SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP, SAFETY_ROBOT_EMERGENCY_STOP = 1, 3, 7
ROBOT_MODE_RUNNING = 7


# ---------------------------------------------------------------- kinematics
def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector (axis * angle) -> 3x3 rotation matrix."""
    rv = np.asarray(rv, np.float64)
    angle = float(np.linalg.norm(rv))
    if angle < 1e-12:
        return np.eye(3)
    kx, ky, kz = rv / angle
    k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> rotation vector, stable near 180 degrees (via a quaternion)."""
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > max(r[0, 0], r[1, 1], r[2, 2]):
        w = math.sqrt(1.0 + tr) / 2
        x, y, z = (
            (r[2, 1] - r[1, 2]) / (4 * w),
            (r[0, 2] - r[2, 0]) / (4 * w),
            (r[1, 0] - r[0, 1]) / (4 * w),
        )
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        w, x = (r[2, 1] - r[1, 2]) / s, s / 4
        y, z = (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] >= r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        w, y = (r[0, 2] - r[2, 0]) / s, s / 4
        x, z = (r[0, 1] + r[1, 0]) / s, (r[1, 2] + r[2, 1]) / s
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        w, z = (r[1, 0] - r[0, 1]) / s, s / 4
        x, y = (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    n = math.sqrt(x * x + y * y + z * z)
    if n < 1e-12:
        return np.zeros(3)
    angle = 2.0 * math.atan2(n, w)
    return np.array([x, y, z]) / n * angle


def _joint_frames(q: np.ndarray, tcp_offset: float) -> list[np.ndarray]:
    """Base-to-frame transforms T_0..T_6 (T_6 includes the TCP offset along tool z)."""
    frames = [np.eye(4)]
    t = np.eye(4)
    for i in range(6):
        ct, st = math.cos(q[i]), math.sin(q[i])
        ca, sa = math.cos(UR5_ALPHA[i]), math.sin(UR5_ALPHA[i])
        a = np.array(
            [
                [ct, -st * ca, st * sa, UR5_A[i] * ct],
                [st, ct * ca, -ct * sa, UR5_A[i] * st],
                [0.0, sa, ca, UR5_D[i]],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        t = t @ a
        frames.append(t)
    if tcp_offset:
        tool = np.eye(4)
        tool[2, 3] = tcp_offset
        frames[-1] = frames[-1] @ tool
    return frames


def forward_kinematics(q: np.ndarray, tcp_offset: float = 0.0) -> np.ndarray:
    """Joint angles (6,) -> TCP pose [x, y, z, rx, ry, rz] in the base frame (UR convention)."""
    t = _joint_frames(np.asarray(q, np.float64), tcp_offset)[-1]
    return np.concatenate([t[:3, 3], matrix_to_rotvec(t[:3, :3])])


class IKError(ValueError):
    """No joint solution reaches the pose from the current configuration."""


def inverse_kinematics(
    pose: np.ndarray,
    q_seed: np.ndarray,
    tcp_offset: float = 0.0,
    iters: int = 100,
    tol: float = 1e-14,
) -> np.ndarray:
    """TCP pose -> joint angles nearest ``q_seed`` (damped Newton on the geometric Jacobian)."""
    pose = np.asarray(pose, np.float64)
    p_goal, r_goal = pose[:3], rotvec_to_matrix(pose[3:])
    q = np.asarray(q_seed, np.float64).copy()
    damping = 1e-6
    for _ in range(iters):
        frames = _joint_frames(q, tcp_offset)
        t = frames[-1]
        err = np.concatenate(
            [p_goal - t[:3, 3], t[:3, :3] @ matrix_to_rotvec(t[:3, :3].T @ r_goal)]
        )
        if float(err @ err) < tol:
            return q
        p_end = t[:3, 3]
        jac = np.empty((6, 6))
        for i in range(6):
            z, o = frames[i][:3, 2], frames[i][:3, 3]
            jac[:3, i] = np.cross(z, p_end - o)
            jac[3:, i] = z
        jt = jac.T
        step = jt @ np.linalg.solve(jac @ jt + damping * np.eye(6), err)
        norm = float(np.linalg.norm(step))
        if norm > 0.5:  # keep Newton steps small far from the solution
            step *= 0.5 / norm
        q += step
    raise IKError(f"no UR5 joint solution for pose {np.round(pose, 4).tolist()}")


# ---------------------------------------------------------------- controller
class SimUR5Controller:
    """Owns the simulated arm: joints, clock, safety mode, watchdog, connection, command log.

    Moves complete at once (the sim does not model the motion in between); the
    controller clock is the wall clock since construction, frozen while disconnected,
    as a real controller's state stops updating for a client that lost its link.
    """

    def __init__(
        self,
        scene: Scene,
        tcp_offset: float = 0.16,
        q: tuple[float, ...] = UR5_READY_Q,
        enforce_watchdog: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scene = scene
        self.tcp_offset = float(tcp_offset)
        self.q = np.asarray(q, np.float64).copy()
        self.tcp_pose = forward_kinematics(self.q, self.tcp_offset)
        self.enforce_watchdog = enforce_watchdog
        self._paused = False  # pause(): the watchdog is suspended
        self.clock = clock
        self._t0 = clock()
        self._frozen_time: float | None = None
        self.connected = True
        self.safety_mode = SAFETY_NORMAL
        self.program_running = True
        self.watchdog_period: float | None = None
        self._last_kick = clock()
        self.commands: list[tuple[str, tuple[float, ...]]] = []
        self.lock = threading.RLock()
        scene.move_tcp(self.tcp_pose)

    # state --------------------------------------------------------------
    def timestamp(self) -> float:
        if self._frozen_time is not None:
            return self._frozen_time
        return self.clock() - self._t0

    def state(self) -> dict[str, Any]:
        """The values an RTDE client can ask for, by RTDE output name."""
        with self.lock:
            return {
                "timestamp": self.timestamp(),
                "actual_q": self.q.tolist(),
                "target_q": self.q.tolist(),
                "actual_TCP_pose": self.tcp_pose.tolist(),
                "target_TCP_pose": self.tcp_pose.tolist(),
                "robot_mode": ROBOT_MODE_RUNNING,
                "safety_mode": self.safety_mode,
                "runtime_state": 2 if self.program_running else 1,
            }

    # faults (tests inject these) ----------------------------------------
    def inject_protective_stop(self) -> None:
        with self.lock:
            self.safety_mode = SAFETY_PROTECTIVE_STOP

    def inject_emergency_stop(self) -> None:
        with self.lock:
            self.safety_mode = SAFETY_ROBOT_EMERGENCY_STOP

    def inject_disconnect(self) -> None:
        """The link drops: getters keep returning the last values, the clock freezes."""
        with self.lock:
            self._frozen_time = self.timestamp()
            self.connected = False

    def clear_faults(self) -> None:
        """What a person does at the pendant: unlock the stop, restart the control script."""
        with self.lock:
            self.safety_mode = SAFETY_NORMAL
            self.program_running = True
            self._last_kick = self.clock()

    # commands -----------------------------------------------------------
    def pause(self) -> None:
        """Suspend the watchdog: the simulation's time stands still for the driver."""
        with self.lock:
            self._paused = True

    def resume(self) -> None:
        with self.lock:
            self._paused = False
            self._last_kick = self.clock()

    def _can_move(self) -> bool:
        if self.enforce_watchdog and self.watchdog_period is not None and not self._paused:
            if self.clock() - self._last_kick > self.watchdog_period:
                self.program_running = False  # rtde_control's script stops on a missed kick
        return self.connected and self.program_running and self.safety_mode == SAFETY_NORMAL

    def move_linear(self, pose: np.ndarray) -> bool:
        pose = np.asarray(pose, np.float64)
        with self.lock:
            self.commands.append(("moveL", tuple(float(v) for v in pose)))
            if not self._can_move():
                return False
            try:
                self.q = inverse_kinematics(pose, self.q, self.tcp_offset)
            except IKError:
                return False
            self.tcp_pose = forward_kinematics(self.q, self.tcp_offset)
            self.scene.move_tcp(self.tcp_pose)
            return True

    def move_joints(self, q: np.ndarray) -> bool:
        with self.lock:
            self.commands.append(("moveJ", tuple(float(v) for v in q)))
            if not self._can_move():
                return False
            self.q = np.asarray(q, np.float64).copy()
            self.tcp_pose = forward_kinematics(self.q, self.tcp_offset)
            self.scene.move_tcp(self.tcp_pose)
            return True

    def record(self, name: str) -> None:
        with self.lock:
            self.commands.append((name, ()))

    def kick(self) -> None:
        with self.lock:
            if self.connected:
                self._last_kick = self.clock()


class SimRTDEControl:
    """``rtde_control.RTDEControlInterface`` as far as the ur5 driver uses it, on the sim."""

    def __init__(self, sim: SimUR5Controller) -> None:
        self.sim = sim

    def isConnected(self) -> bool:  # noqa: N802 (ur_rtde's names)
        return self.sim.connected

    def isProgramRunning(self) -> bool:  # noqa: N802
        return self.sim.program_running

    def moveL(
        self,
        pose: list[float],
        speed: float = 0.25,
        acceleration: float = 1.2,  # noqa: N802
        asynchronous: bool = False,
    ) -> bool:
        return self.sim.move_linear(np.asarray(pose))

    def moveJ(
        self,
        q: list[float],
        speed: float = 1.05,
        acceleration: float = 1.4,  # noqa: N802
        asynchronous: bool = False,
    ) -> bool:
        return self.sim.move_joints(np.asarray(q))

    def stopL(self, a: float = 10.0, asynchronous: bool = False) -> None:  # noqa: N802
        self.sim.record("stopL")

    def servoStop(self, a: float = 10.0) -> None:  # noqa: N802
        self.sim.record("servoStop")

    def speedStop(self, a: float = 10.0) -> None:  # noqa: N802
        self.sim.record("speedStop")

    def triggerProtectiveStop(self) -> bool:  # noqa: N802
        self.sim.record("triggerProtectiveStop")
        self.sim.inject_protective_stop()
        return True

    def setWatchdog(self, min_frequency: float = 10.0) -> bool:  # noqa: N802
        with self.sim.lock:
            self.sim.commands.append(("setWatchdog", (float(min_frequency),)))
            self.sim.watchdog_period = 1.0 / float(min_frequency)
            self.sim._last_kick = self.sim.clock()
        return True

    def kickWatchdog(self) -> bool:  # noqa: N802
        self.sim.kick()
        return True

    def disconnect(self) -> None:
        self.sim.record("disconnect")


class SimRTDEReceive:
    """``rtde_receive.RTDEReceiveInterface`` as far as the ur5 driver uses it, on the sim."""

    def __init__(self, sim: SimUR5Controller) -> None:
        self.sim = sim

    def isConnected(self) -> bool:  # noqa: N802
        return self.sim.connected

    def getTimestamp(self) -> float:  # noqa: N802
        return self.sim.timestamp()

    def getActualQ(self) -> list[float]:  # noqa: N802
        return self.sim.q.tolist()

    def getActualTCPPose(self) -> list[float]:  # noqa: N802
        return self.sim.tcp_pose.tolist()

    def getSafetyMode(self) -> int:  # noqa: N802
        return self.sim.safety_mode

    def getRobotMode(self) -> int:  # noqa: N802
        return ROBOT_MODE_RUNNING

    def isProtectiveStopped(self) -> bool:  # noqa: N802
        return self.sim.safety_mode == SAFETY_PROTECTIVE_STOP

    def isEmergencyStopped(self) -> bool:  # noqa: N802
        return self.sim.safety_mode == SAFETY_ROBOT_EMERGENCY_STOP

    def disconnect(self) -> None:
        pass


class SimCamera:
    """The camera of the simulated cell: renders the scene on every read (same API as Camera)."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def start(self) -> None:
        pass

    def read(self) -> np.ndarray:
        return self.scene.render()

    def close(self) -> None:
        pass


class SimUR5Cell:
    """Owns the parts of one simulated cell so they can be closed together."""

    def __init__(self, scene: Scene, controller: SimUR5Controller, gripper_server: Any) -> None:
        self.scene, self.controller, self.gripper_server = scene, controller, gripper_server

    def close(self) -> None:
        self.gripper_server.close()


def make_sim_ur5(config: Any) -> Any:
    """The unchanged UR5 driver on a simulated cell from ``config.ur5`` and ``config.sim_ur5``.

    The returned robot has a ``cell`` attribute (scene, controller, gripper server) for
    tests and benchmarks; its disconnect() also shuts the simulated gripper server down.
    The reach task's target is drawn in the camera image (the scene asks the task where it
    is at every frame), so reaching can be learnt from pixels. Everything random in the cell
    (the cubes, the reach targets) follows ``config.seed``.
    """
    from robots.gripper import RobotiqGripper
    from robots.sim.gripper_server import SimGripperServer
    from robots.tasks import ReachTask, make_ur5_task
    from robots.ur5 import UR5, _plain

    cfg, sim = _plain(config.ur5), _plain(config.sim_ur5)
    seed = int(config.seed)
    task = make_ur5_task(cfg, seed)
    scene = Scene(
        bins=cfg["bins"],
        table_low=cfg["workspace"]["low"][:2],
        table_high=cfg["workspace"]["high"][:2],
        objects=sim["objects"],
        object_size=sim["object_size"],
        grasp_radius=sim["grasp_radius"],
        grasp_height=sim["grasp_height"],
        image_size=tuple(cfg["camera"]["size"]),
        seed=seed,
        target=(lambda: task.target) if isinstance(task, ReachTask) else None,
    )
    controller = SimUR5Controller(
        scene, sim["tcp_offset"], enforce_watchdog=sim["enforce_watchdog"]
    )
    server = SimGripperServer(scene, "127.0.0.1", int(sim["gripper_port"]))
    cell = SimUR5Cell(scene, controller, server)
    g = cfg["gripper"]

    robot = UR5(
        cfg,
        task,
        control=lambda: SimRTDEControl(controller),
        receive=lambda: SimRTDEReceive(controller),
        gripper=lambda: RobotiqGripper(
            server.host, server.port, g["timeout_s"], g["speed"], g["force"]
        ),
        camera=lambda: SimCamera(scene),
        reset_hook=scene.tidy if sim["tidy_on_reset"] else None,
        on_disconnect=cell.close,
        pause=(controller.pause, controller.resume),
    )
    robot.simulated = True
    robot.control_period = float(sim["control_period_s"])  # the tick rate; moves are instant
    robot.cell = cell  # type: ignore[attr-defined]
    return robot
