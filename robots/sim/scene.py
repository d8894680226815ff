"""The simulated pick-and-place cell of sim_ur5: a table, two bins, cubes, a gripper.

Pure state and geometry, no sockets and no timing: the simulated controller
(``sim_ur5.py``) moves the tool centre point (TCP), the simulated Robotiq server
(``gripper_server.py``) opens and closes the fingers, and :meth:`Scene.render`
draws a top-down camera image with OpenCV for the driver's ``image`` key.

Frame: the robot base frame, metres, z up, the table top at z = 0.
The camera looks straight down: higher things look bigger (the gripper ring, the cubes).
The reach task's target, when the scene is given one, is a filled orange disc centred on
the target, of twice the radius the gripper ring has at the target's height, so the TCP is
on the target when the ring (2 px wide) sits in the middle of the disc at half its radius.
A cube is grasped when the gripper closes with its TCP within ``grasp_radius``
of the cube's centre horizontally and within ``grasp_height`` vertically; a
released cube falls straight down and rests on whatever is below it (a bin
floor or the table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# RGB colours of the drawing (the driver's images are RGB, as the real camera's after conversion).
_TABLE = (150, 120, 90)
_BIN_FLOOR = (70, 90, 140)
_BIN_WALL = (30, 40, 70)
_OBJECT_COLOURS = ((230, 40, 40), (40, 200, 60), (240, 220, 40), (200, 60, 220), (40, 220, 230))
_GRIPPER_OPEN = (250, 250, 250)
_GRIPPER_CLOSED = (20, 20, 20)
_TARGET = (255, 140, 0)
_SUBPIXEL_BITS = 4  # cv2 drawing: coordinates in 1/16 px
_GRIPPER_WIDTH = 2  # px, the gripper ring's line


@dataclass
class Bin:
    """An open box on the table, as an axis-aligned rectangle (x_min, y_min, x_max, y_max)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def contains(self, x: float, y: float) -> bool:
        return self.x_min <= x <= self.x_max and self.y_min <= y <= self.y_max


class Scene:
    """Owns the cell's physical state: cube positions, which cube is held, the TCP, the fingers.

    Thread-safety: the controller and the gripper server touch it from different threads,
    one small method at a time; each method leaves the scene consistent.
    """

    def __init__(
        self,
        bins: list[list[float]],
        table_low: tuple[float, float],
        table_high: tuple[float, float],
        objects: int = 3,
        object_size: float = 0.04,
        grasp_radius: float = 0.03,
        grasp_height: float = 0.03,
        image_size: tuple[int, int] = (64, 64),
        seed: int = 0,
        target: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.bins = [Bin(*map(float, b)) for b in bins]
        self.table_low = np.asarray(table_low, np.float64)
        self.table_high = np.asarray(table_high, np.float64)
        self.object_size = float(object_size)
        self.grasp_radius = float(grasp_radius)
        self.grasp_height = float(grasp_height)
        self.rng = np.random.default_rng(seed)
        self.tcp = np.array([0.46, 0.0, 0.3])
        self.closed = False
        self.held: int | None = None
        self.target = target  # reach task: where the target is, asked at every render
        self.objects = np.zeros((objects, 3))
        for i in range(objects):
            self.objects[i] = self._random_spot(self.bins[0])
        self._size = (int(image_size[0]), int(image_size[1]))  # (H, W)
        self._background = self._draw_background()

    # ------------------------------------------------------------ physics
    def _random_spot(self, b: Bin) -> np.ndarray:
        margin = self.object_size
        x = self.rng.uniform(b.x_min + margin, b.x_max - margin)
        y = self.rng.uniform(b.y_min + margin, b.y_max - margin)
        return np.array([x, y, self.object_size / 2])

    def move_tcp(self, position: np.ndarray) -> None:
        """The arm moved: a held cube moves with the fingers."""
        self.tcp = np.asarray(position[:3], np.float64).copy()
        if self.held is not None:
            self.objects[self.held] = self.tcp

    def close_fingers(self) -> bool:
        """Close the gripper; return True when a cube is now between the fingers."""
        if not self.closed and self.held is None:
            dxy = np.linalg.norm(self.objects[:, :2] - self.tcp[:2], axis=1)
            dz = np.abs(self.objects[:, 2] - self.tcp[2])
            candidates = np.flatnonzero((dxy <= self.grasp_radius) & (dz <= self.grasp_height))
            if candidates.size:
                self.held = int(candidates[np.argmin(dxy[candidates])])
                self.objects[self.held] = self.tcp
        self.closed = True
        return self.held is not None

    def open_fingers(self) -> None:
        """Open the gripper; a held cube falls and rests below the TCP."""
        if self.held is not None:
            self.objects[self.held] = [self.tcp[0], self.tcp[1], self.object_size / 2]
            self.held = None
        self.closed = False

    def bin_of(self, x: float, y: float) -> int | None:
        for i, b in enumerate(self.bins):
            if b.contains(x, y):
                return i
        return None

    def tidy(self) -> None:
        """A person puts every cube lying outside the bins back into a random bin."""
        for i in range(len(self.objects)):
            if i != self.held and self.bin_of(*self.objects[i, :2]) is None:
                self.objects[i] = self._random_spot(self.bins[self.rng.integers(len(self.bins))])

    # ------------------------------------------------------------ camera
    def _image_point(self, x: float, y: float) -> tuple[float, float]:
        """Top-down camera: image rows follow -x (far side at the top), columns follow y;
        (column, row) in pixels, not rounded."""
        h, w = self._size
        u = (y - self.table_low[1]) / (self.table_high[1] - self.table_low[1]) * (w - 1)
        v = (self.table_high[0] - x) / (self.table_high[0] - self.table_low[0]) * (h - 1)
        return float(u), float(v)

    def _pixel(self, x: float, y: float) -> tuple[int, int]:
        u, v = self._image_point(x, y)
        return int(round(u)), int(round(v))

    def _metres_to_pixels(self, d: float) -> float:
        return d / (self.table_high[1] - self.table_low[1]) * (self._size[1] - 1)

    def _half_cube(self) -> float:
        """Half a cube's edge in pixels, at least 1.5 so that a cube is 3 px at 64x64."""
        return max(1.5, self._metres_to_pixels(self.object_size) / 2)

    def _ring_radius(self, z: float) -> float:
        """Pixels: the gripper ring's radius with the TCP at height ``z`` (bigger higher up)."""
        return self._half_cube() * (1.2 + z * 4.0)

    def _draw_background(self) -> np.ndarray:
        h, w = self._size
        img = np.empty((h, w, 3), np.uint8)
        img[:] = _TABLE
        for b in self.bins:
            p0 = self._pixel(b.x_max, b.y_min)
            p1 = self._pixel(b.x_min, b.y_max)
            cv2.rectangle(img, p0, p1, _BIN_FLOOR, -1)
            cv2.rectangle(img, p0, p1, _BIN_WALL, 1)
        return img

    def render(self) -> np.ndarray:
        """An (H, W, 3) uint8 RGB top-down image: bins, cubes (>= 3 px), the reach target
        (when given), the gripper."""
        img = self._background.copy()
        half = self._half_cube()
        for i, obj in enumerate(self.objects):
            u, v = self._pixel(obj[0], obj[1])
            # Higher things look bigger, as seen by a camera above the table.
            s = half * (1.0 + obj[2] * 2.0)
            colour = _OBJECT_COLOURS[i % len(_OBJECT_COLOURS)]
            cv2.rectangle(img, (int(u - s), int(v - s)), (int(u + s), int(v + s)), colour, -1)
        if self.target is not None:
            self._draw_target(img, np.asarray(self.target(), np.float64))
        self._draw_gripper(img)
        return img

    def _draw_gripper(self, img: np.ndarray) -> None:
        """An anti-aliased ring 2 px wide at sub-pixel precision, as the target: a step of the
        TCP moves it by its fraction of a pixel (a 1 px ring snapped to whole pixels was the
        largest part of a trained model's image error, never reconstructed)."""
        radius = max(2.0, self._ring_radius(self.tcp[2]))
        colour = _GRIPPER_CLOSED if self.closed else _GRIPPER_OPEN
        _smooth_circle(img, self._image_point(self.tcp[0], self.tcp[1]), radius, colour,
                       _GRIPPER_WIDTH)  # fmt: skip

    def _draw_target(self, img: np.ndarray, target: np.ndarray) -> None:
        """A filled, anti-aliased disc at sub-pixel precision (1/16 px): its size tells the
        target's height, its edge shading the fraction of a pixel. Twice the ring's radius
        (6-11 px at 64x64): of a disc of the ring's own radius a trained model's state kept
        too little to reach it, of this one it keeps the place to 2-4 cm (bench/probe.py)."""
        radius = 2.0 * max(1.5, self._ring_radius(target[2]))
        _smooth_circle(img, self._image_point(target[0], target[1]), radius, _TARGET, -1)


def _smooth_circle(
    img: np.ndarray, centre: tuple[float, float], radius: float, colour, thickness: int
) -> None:
    """An anti-aliased circle at sub-pixel precision (1/16 px): centre (column, row) and radius
    in pixels, not rounded; thickness -1 fills it."""
    scale = 1 << _SUBPIXEL_BITS
    at = (int(round(centre[0] * scale)), int(round(centre[1] * scale)))
    cv2.circle(img, at, int(round(radius * scale)), colour, thickness, cv2.LINE_AA,
               _SUBPIXEL_BITS)  # fmt: skip
