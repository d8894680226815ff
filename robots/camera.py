"""A camera read with OpenCV in a background thread: the newest frame wins.

The thread grabs frames as fast as the camera delivers them and keeps only the
newest, so ``read()`` never returns an old frame queued in a driver buffer. Each
frame is converted to RGB, cropped to a box of the raw frame and resized to the
observation size. A camera that delivers no frame, or the same frame over and
over, is an error that says which camera and what to try, never a black image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np


class CameraError(RuntimeError):
    """The camera is missing, delivers no frames, or its frames stopped changing."""


class Camera:
    """Owns one OpenCV VideoCapture and the thread that reads it.

    ``capture_factory(index)`` returns an object with ``isOpened()``, ``read() -> (ok, frame)``
    and ``release()``; by default ``cv2.VideoCapture`` (tests pass a fake).
    """

    def __init__(
        self,
        index: int = 0,
        size: Sequence[int] = (64, 64),
        crop: Sequence[int] = (0, 0, 0, 0),
        timeout: float = 2.0,
        freeze_timeout: float = 1.0,
        config_key: str = "ur5.camera",
        capture_factory: Callable[[int], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = int(index)
        self.size = (int(size[0]), int(size[1]))  # (H, W)
        self.crop = tuple(int(c) for c in crop)  # x, y, width, height; width/height 0: all
        self.timeout = float(timeout)
        self.freeze_timeout = float(freeze_timeout)
        self.config_key = config_key
        self._factory = capture_factory or cv2.VideoCapture
        self._clock = clock
        self._cap: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None  # newest processed frame
        self._frame_id = 0
        self._last_change = 0.0  # clock time the picture last changed
        self._last_frame = 0.0  # clock time of the newest frame
        self._started = 0.0
        self._error: str | None = None

    def _hint(self) -> str:
        return (
            f"is it plugged in and not used by another program? "
            f"try --set {self.config_key}.index={self.index + 1}"
        )

    def start(self) -> None:
        """Open the camera and start the reading thread."""
        if self._thread is not None:
            return
        self._cap = self._factory(self.index)
        if self._cap is None or not self._cap.isOpened():
            raise CameraError(f"camera {self.index} cannot be opened ({self._hint()})")
        self._stop.clear()
        self._started = self._last_change = self._last_frame = self._clock()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.index}", daemon=True)
        self._thread.start()

    def process(self, frame: np.ndarray) -> np.ndarray:
        """A raw BGR frame -> the observation: RGB, cropped, resized to (H, W, 3) uint8."""
        x, y, w, h = self.crop
        if w > 0 and h > 0:
            frame = frame[y : y + h, x : x + w]
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        else:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        height, width = self.size
        if frame.shape[:2] != (height, width):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def _run(self) -> None:
        previous: np.ndarray | None = None
        while not self._stop.is_set():
            try:
                ok, frame = self._cap.read()
            except Exception as e:  # a driver error ends the thread; read() reports it
                with self._cond:
                    self._error = f"camera {self.index} failed: {e} ({self._hint()})"
                    self._cond.notify_all()
                return
            if not ok or frame is None:
                time.sleep(0.005)
                continue
            now = self._clock()
            image = self.process(frame)
            with self._cond:
                if previous is None or not np.array_equal(frame, previous):
                    self._last_change = now
                self._last_frame = now
                previous = frame.copy()
                self._frame = image
                self._frame_id += 1
                self._cond.notify_all()

    def read(self) -> np.ndarray:
        """The newest frame; raise CameraError when there is none or the picture froze."""
        if self._thread is None:
            raise CameraError(f"camera {self.index} not started; call start() first")
        deadline = self._clock() + self.timeout
        with self._cond:
            while self._frame is None and self._error is None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    waited = self._clock() - self._started
                    raise CameraError(
                        f"camera {self.index} returned no frame for {waited:.1f} s ({self._hint()})"
                    )
                self._cond.wait(min(remaining, 0.05))
            if self._error is not None:
                raise CameraError(self._error)
            silent = self._clock() - self._last_frame
            if silent > self.timeout:
                raise CameraError(
                    f"camera {self.index} returned no frame for {silent:.1f} s ({self._hint()})"
                )
            frozen = self._clock() - self._last_change
            if frozen > self.freeze_timeout:
                raise CameraError(
                    f"camera {self.index} delivered the same picture for {frozen:.1f} s (frozen "
                    f"driver or a lens cap? {self._hint()})"
                )
            return self._frame

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
