"""The simulated quadruped: MuJoCo physics behind the virtual servo board.

The robot is dm_control's suite quadruped (``quadruped.xml``, shipped in the
dm-control wheel), simulated with the plain ``mujoco`` bindings for speed. Its 12
actuators are the 12 "servos" of the board, in the model's order::

    channel  0-2  front left   yaw, lift, extend
    channel  3-5  front right  yaw, lift, extend
    channel  6-8  back right   yaw, lift, extend
    channel  9-11 back left    yaw, lift, extend

A servo's "joint angle" is its actuator length (the yaw hinge angle; for lift and
extend, the length of the model's fixed tendon over the pitch, knee and ankle
hinges), its limits are the actuators' ctrlrange, and 0 everywhere is a standing
pose. The servos are PD controllers on the model's position actuators:
force = kp * (target - length) - kd * velocity (after the model's 0.1 s filter).

``make_sim_quadruped(config)`` starts a :class:`VirtualBoard` with this physics on a
pseudo-terminal and returns the unchanged ``robots.quadruped.Quadruped`` driver
pointed at the pty path.
"""

from __future__ import annotations

import threading
from typing import Any

import mujoco
import numpy as np
from omegaconf import OmegaConf

from robots.sim.virtual_board import VirtualBoard


def _quadruped_xml(floor_size: float) -> tuple[bytes, dict]:
    from dm_control.suite import common, quadruped

    return quadruped.make_model(floor_size=floor_size), common.ASSETS


class SimQuadruped:
    """Owns the MuJoCo model and data of the quadruped and every access to them.

    All methods are thread-safe (one lock): the board thread steps the physics while
    the driver's thread may render camera images.
    """

    def __init__(
        self,
        floor_size: float = 100.0,
        camera: str = "egocentric",
        image_size: tuple[int, int] = (64, 64),
        settle_time: float = 0.5,
    ) -> None:
        xml, assets = _quadruped_xml(floor_size)
        self.model = mujoco.MjModel.from_xml_string(xml, assets)
        self.data = mujoco.MjData(self.model)
        self.lock = threading.Lock()
        self.camera = camera
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.settle_time = float(settle_time)
        self._renderer: mujoco.Renderer | None = None
        self._renderer_thread: int | None = None
        self.joint_lower = self.model.actuator_ctrlrange[:, 0].astype(np.float32)
        self.joint_upper = self.model.actuator_ctrlrange[:, 1].astype(np.float32)
        self.stand_pose = np.zeros(self.model.nu, np.float32)
        self._gyro = self.model.sensor("imu_gyro").adr[0]
        self._velocimeter = self.model.sensor("velocimeter").adr[0]
        self.stand_ups = 0
        # start standing and settled, with the model's own servo gains
        self.stand_up(self.stand_pose, self.model.actuator_gainprm[:, 0].copy(),
                      -self.model.actuator_biasprm[:, 2].copy())
        self.stand_ups = 0

    # ------------------------------------------------------------ board interface
    @property
    def time(self) -> float:
        return float(self.data.time)

    def set_servos(self, targets: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """PD servos toward ``targets``; kp = kd = 0 is a relaxed servo."""
        with self.lock:
            m = self.model
            m.actuator_gainprm[:, 0] = kp
            m.actuator_biasprm[:, 1] = -np.asarray(kp)
            m.actuator_biasprm[:, 2] = -np.asarray(kd)
            self.data.ctrl[:] = targets

    def advance(self, seconds: float) -> None:
        """Step the physics by ``seconds`` (rounded to whole physics steps)."""
        n = max(1, int(round(seconds / self.model.opt.timestep)))
        with self.lock:
            for _ in range(n):
                mujoco.mj_step(self.model, self.data)

    def measure(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Servo angles and velocities, IMU (roll, pitch, rates) and forward velocity."""
        with self.lock:
            d = self.data
            positions = d.actuator_length.astype(np.float32)
            velocities = d.actuator_velocity.astype(np.float32)
            w, x, y, z = d.qpos[3:7]
            gyro = d.sensordata[self._gyro:self._gyro + 3]
            vx = float(d.sensordata[self._velocimeter])
        roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
        pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
        imu = np.array([roll, pitch, gyro[0], gyro[1], gyro[2]], np.float32)
        return positions, velocities, imu, vx

    def stand_up(self, stand_pose: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """Put the robot back on its feet where it lies, facing where it faced.

        A real board runs a roll-over and stand-up motion in its firmware; the
        simulation places the body upright above the ground with the legs in the
        standing pose and lets it settle for ``settle_time`` with the servos on.
        """
        with self.lock:
            m, d = self.model, self.data
            w, x, y, z = d.qpos[3:7]
            yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
            d.qpos[2] = 0.6  # above the standing height (0.45 m): no contact
            d.qpos[3:7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
            d.qpos[7:] = 0.0
            d.qvel[:] = 0.0
            d.act[:] = stand_pose
            d.ctrl[:] = stand_pose
            m.actuator_gainprm[:, 0] = kp
            m.actuator_biasprm[:, 1] = -np.asarray(kp)
            m.actuator_biasprm[:, 2] = -np.asarray(kd)
            mujoco.mj_forward(m, d)
            for _ in range(max(1, int(round(self.settle_time / m.opt.timestep)))):
                mujoco.mj_step(m, d)
            self.stand_ups += 1

    # ------------------------------------------------------------ for tests and the camera
    def knock_over(self, roll: float = np.pi) -> None:
        """Tip the body over by ``roll`` radians about its forward axis (a fall)."""
        with self.lock:
            d = self.data
            d.qpos[2] = 0.6
            d.qpos[3:7] = [np.cos(roll / 2), np.sin(roll / 2), 0.0, 0.0]
            d.qvel[:] = 0.0
            mujoco.mj_forward(self.model, d)
            for _ in range(200):
                mujoco.mj_step(self.model, d)

    def body_height(self) -> float:
        with self.lock:
            return float(self.data.qpos[2])

    def render(self) -> np.ndarray:
        """An (H, W, 3) uint8 image from the configured camera.

        The renderer (an OpenGL context) is created on first use in the calling thread
        and must stay in that thread.
        """
        me = threading.get_ident()
        if self._renderer is None:
            h, w = self.image_size
            self._renderer = mujoco.Renderer(self.model, height=h, width=w)
            self._renderer_thread = me
        elif self._renderer_thread != me:
            raise RuntimeError(
                "SimQuadruped.render() was first called from another thread; the OpenGL "
                "context belongs to that thread (render from the thread that steps the robot)"
            )
        with self.lock:
            self._renderer.update_scene(self.data, camera=self.camera)
        # shadows, reflections and the skybox cost ~9x the render time with a software
        # OpenGL (llvmpipe) and add nothing a 64x64 policy needs
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_sim_quadruped(config: Any) -> Any:
    """The ``quadruped`` driver on a virtual board with MuJoCo physics behind a pty.

    Reads ``config.sim_quadruped``; takes the driver's settings from ``config.quadruped``
    except what the simulated robot dictates (port, joint limits, standing pose, gains,
    reply and board timeouts, and no pacing: the board runs lock-step with the commands).
    """
    from robots.quadruped import Quadruped

    sim = config.sim_quadruped
    driver = config.quadruped
    physics = SimQuadruped(
        floor_size=float(sim.floor_size),
        camera=str(sim.camera),
        image_size=tuple(driver.image.size),
        settle_time=float(sim.settle_time_s),
    )
    n = len(physics.joint_lower)
    kp = np.full(n, float(sim.kp), np.float32)
    kd = np.full(n, float(sim.kd), np.float32)
    board = VirtualBoard(
        physics,
        control_period=float(driver.control_period_s),
        joint_lower=physics.joint_lower,
        joint_upper=physics.joint_upper,
        stand_pose=physics.stand_pose,
        kp=kp,
        kd=kd,
    )
    block = OmegaConf.merge(
        OmegaConf.to_container(driver, resolve=True),
        {
            "port": board.port,
            "joint_lower": physics.joint_lower.tolist(),
            "joint_upper": physics.joint_upper.tolist(),
            "stand_pose": physics.stand_pose.tolist(),
            "kp": [float(sim.kp)],
            "kd": [float(sim.kd)],
            "reply_timeout_s": float(sim.reply_timeout_s),
            "board_timeout_s": float(sim.board_timeout_s),
            "pace": False,
        },
    )
    camera = physics.render if driver.image.enabled else None
    robot = Quadruped(block, camera=camera, companion=_BoardAndPhysics(board, physics))
    robot.simulated = True
    robot.control_period = float(sim.control_period_s)  # the tick rate; the physics is lock-step
    return robot


class _BoardAndPhysics:
    """Starts the virtual board when the driver connects and closes both afterwards."""

    def __init__(self, board: VirtualBoard, physics: SimQuadruped) -> None:
        self.board = board
        self.physics = physics

    def start(self) -> None:
        self.board.start()

    def pause(self) -> None:
        self.board.pause()

    def resume(self) -> None:
        self.board.resume()

    def close(self) -> None:
        self.board.close()
        self.physics.close()
