"""robots/camera.py with a fake cv2.VideoCapture (the hardware boundary)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robots.camera import Camera, CameraError


class FakeCapture:
    """Frames 480x640 BGR whose blue channel counts up; or frozen, or none at all."""

    def __init__(self, mode: str = "live", opened: bool = True) -> None:
        self.mode, self.opened, self.count, self.released = mode, opened, 0, False

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened

    def read(self):
        time.sleep(0.002)  # a camera delivers frames at a rate, not in a busy loop
        if self.mode == "none":
            return False, None
        if self.mode == "live":
            self.count += 1
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[..., 0] = self.count % 256  # blue in OpenCV's BGR order
        frame[:10, :10, 2] = 200  # a red corner
        return True, frame

    def release(self) -> None:
        self.released = True


def camera(capture: FakeCapture, **kwargs) -> Camera:
    kwargs.setdefault("timeout", 0.3)
    kwargs.setdefault("freeze_timeout", 0.2)
    return Camera(index=2, capture_factory=lambda index: capture, **kwargs)


def test_frames_are_rgb_cropped_and_resized():
    cap = FakeCapture()
    cam = camera(cap, size=(64, 48), crop=(0, 0, 20, 40))
    cam.start()
    try:
        image = cam.read()
        assert image.shape == (64, 48, 3) and image.dtype == np.uint8
        assert image[0, 0, 0] == 200  # red corner, now in RGB order
        assert image[-1, -1, 0] == 0  # outside the red corner
    finally:
        cam.close()
    assert cap.released


def test_the_newest_frame_wins():
    cap = FakeCapture()
    cam = camera(cap)
    cam.start()
    try:
        cam.read()
        time.sleep(0.05)
        image = cam.read()
        assert image[-1, -1, 2] >= (cap.count - 2) % 256  # blue of a frame at most 2 old
    finally:
        cam.close()


def test_a_camera_that_cannot_be_opened_names_its_index_and_the_setting():
    with pytest.raises(CameraError, match=r"camera 2 cannot be opened.*--set ur5.camera.index=3"):
        camera(FakeCapture(opened=False)).start()


def test_a_camera_without_frames_is_an_error_not_a_black_image():
    cam = camera(FakeCapture("none"))
    cam.start()
    try:
        t = time.monotonic()
        with pytest.raises(CameraError, match=r"camera 2 returned no frame for 0\.\d s.*--set"):
            cam.read()
        assert time.monotonic() - t < 1.0
    finally:
        cam.close()


def test_a_frozen_camera_is_an_error():
    cam = camera(FakeCapture("frozen"))
    cam.start()
    try:
        cam.read()  # the first picture is fine
        time.sleep(0.3)
        with pytest.raises(CameraError, match="camera 2 delivered the same picture"):
            cam.read()
    finally:
        cam.close()
