"""What a robot tells the fleet console in its heartbeats: its state, its console, a thumbnail.

The robot actor's network thread adds ``heartbeat_fields(actor)`` to every heartbeat (once a
second, ``actor.heartbeat_every_s``); the gateway keeps the newest per robot
(``daydream/wire/fleet.py``, which lists the fields) and the learner's web page shows them.

The camera thumbnail never slows the control loop: the control thread only offers each
observation to a :class:`ThumbnailTap` (a clock read; once every ``console.thumbnail_every_s``
a copy of the image, a few kilobytes), and the network thread encodes the newest copy with
OpenCV when the heartbeat goes. The encoded bytes travel as a uint8 array, a raw section
after the heartbeat's header (codec.py), so the header stays within its budget.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import cv2
import numpy as np

from daydream.wire.curve import load_keypair
from daydream.wire.fleet import MAX_TEXT, MAX_THUMB_BYTES, WILDCARD_HOSTS

log = logging.getLogger("daydream.actor")

THUMB_FORMATS = {"jpeg": ".jpg", "png": ".png"}
P99_TICKS = 1000  # the tick p99 a heartbeat reports is over this many recent ticks


def image_key(obs_space: dict) -> str | None:
    """The first camera image among the observations (uint8, H x W x 1 or 3), or None."""
    for key, space in obs_space.items():
        shape = tuple(space.shape)
        if np.dtype(space.dtype) == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3):
            return key
    return None


class ThumbnailTap:
    """Owns the camera thumbnail a robot sends about once every ``every_s`` seconds: the control
    thread offers observations (cheap), the network thread encodes the newest copy."""

    def __init__(self, key: str | None, every_s: float, size: int, fmt: str, quality: int):
        if fmt not in THUMB_FORMATS:
            raise ValueError(f"console.thumbnail_format must be one of {sorted(THUMB_FORMATS)}, "
                             f"got {fmt!r}")  # fmt: skip
        self.key = key if every_s > 0 else None
        self.every_s, self.size, self.fmt, self.quality = float(every_s), int(size), fmt, quality
        self._last = -float("inf")
        self._frame: np.ndarray | None = None
        self.oversized = 0

    @classmethod
    def for_robot(cls, obs_space: dict, block) -> ThumbnailTap:
        """The tap for a robot's observation space and the ``console`` config block."""
        return cls(image_key(obs_space), block.thumbnail_every_s, block.thumbnail_size,
                   block.thumbnail_format, block.thumbnail_quality)  # fmt: skip

    def offer(self, obs: dict) -> None:
        """Control thread: keep a copy of the camera image once every ``every_s``."""
        if self.key is None:
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._frame = np.array(obs[self.key], copy=True)

    def take(self) -> np.ndarray | None:
        """Network thread: the newest offered image, encoded (uint8 bytes), once; else None."""
        frame, self._frame = self._frame, None
        if frame is None:
            return None
        h, w = frame.shape[:2]
        scale = self.size / max(h, w)
        if scale < 1.0:
            frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)  # fmt: skip
        if frame.ndim == 3 and frame.shape[-1] == 3:
            frame = frame[..., ::-1]  # observations are RGB, OpenCV writes BGR
        params = [cv2.IMWRITE_JPEG_QUALITY, int(self.quality)] if self.fmt == "jpeg" else []
        ok, data = cv2.imencode(THUMB_FORMATS[self.fmt], np.ascontiguousarray(frame), params)
        if not ok or data.size > MAX_THUMB_BYTES:
            self.oversized += 1
            if self.oversized == 1:
                log.warning("camera thumbnail not sent (encoding failed or over %d bytes); "
                            "lower console.thumbnail_size", MAX_THUMB_BYTES)  # fmt: skip
            return None
        return data.reshape(-1)


def console_info(endpoint: str, server_secret_file: str | Path, advertise_host: str) -> dict:
    """The robot's console as the fleet console reaches it: ``{endpoint, key}``, a wildcard
    host (``tcp://*:PORT`` binds as 0.0.0.0) replaced by ``advertise_host`` or this computer's
    name."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if host in WILDCARD_HOSTS:
        host = advertise_host or socket.getfqdn()
    public, _ = load_keypair(server_secret_file)
    return {"endpoint": f"{scheme}://{host}:{port}", "key": public.decode("ascii")}


def recent_p99_ms(tick_times) -> float | None:
    """p99 of the last ``P99_TICKS`` ticks' work, in ms (``RobotActor.tick_times``)."""
    ticks = list(tick_times)[-P99_TICKS:]  # one C-level copy: safe beside the control thread
    if not ticks:
        return None
    return float(np.percentile([d for _, d in ticks], 99) * 1e3)


def heartbeat_fields(actor) -> dict:
    """The fleet console's fields of one heartbeat of ``actor`` (a RobotActor), built on its
    network thread: ``status``, ``console`` (when it runs one) and ``thumb`` (when due)."""
    safety = actor.sup.status if actor.sup is not None else {}
    status = {
        "stopped": bool(safety.get("stopped", False)),
        "stop_source": str(safety.get("stop_source", ""))[:MAX_TEXT],
        "reason": str(safety.get("reason", ""))[:MAX_TEXT],
        "stopped_since": float(safety.get("stopped_since", 0.0)),
        "overridden": bool(safety.get("overridden", False)),
        "steps": int(actor.steps), "episodes": int(actor.episodes),
        "tick_rate": float(actor.tick_rate()), "tick_p99_ms": recent_p99_ms(actor.tick_times),
        "outbox": int(actor.link.status()["outbox"].get("pending", 0)),
        "last_fault": str(safety.get("last_fault", ""))[:MAX_TEXT],
        "simulated": bool(actor.robot.simulated),
    }  # fmt: skip
    fields: dict = {"status": status}
    if actor.console_info:
        fields["console"] = actor.console_info
    thumb = actor.thumbnails.take()
    if thumb is not None:
        fields["thumb"] = thumb
    return fields
