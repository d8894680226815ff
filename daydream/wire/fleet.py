"""The fleet registry: what the gateway knows of every robot that reported, for the fleet console.

Robots add a few fields to their heartbeats (``daydream/runtime/fleet_report.py`` builds them)::

    heartbeat {actor, episodes, policy_version,                       (what the learner logs)
               status: {stopped, stop_source, reason, stopped_since, overridden, steps,
                        episodes, tick_rate, tick_p99_ms, outbox, last_fault, simulated},
               console: {endpoint: "tcp://HOST:PORT", key: Z85 public key},   (optional)
               thumb: uint8 array, a JPEG or PNG of the camera}                 (optional)

``FleetRegistry.note`` keeps the newest of each, per robot id, with the wall-clock time it
arrived; the web console (``daydream/runtime/console_web.py``) reads ``robots()`` and
``thumbnail(id)``. Everything is checked as it arrives, like any value from the network:

- robot ids must match ``ROBOT_ID`` (letters, digits, ``. _ : @ -``, at most 64): reports
  from other ids are counted in ``refused_ids`` and kept nowhere, so no id the console
  shows or acts on can hold markup or a path;
- status fields keep only the names and kinds of ``STATUS_FIELDS`` (text cut to
  ``MAX_TEXT`` characters); a thumbnail must start with a JPEG or PNG signature and be at
  most ``MAX_THUMB_BYTES``;
- a console endpoint must be ``tcp://HOST:PORT`` with a host to reach (not a wildcard), and
  its key must be the CURVE key the robot connected to the gateway with: the console
  connects to a robot's stop button only with that robot's own key, so a robot cannot
  pass another robot's console off as its own (without CURVE the reported key is used).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque

import numpy as np

ROBOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
ENDPOINT = re.compile(r"tcp://(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):"
                      r"(?P<port>[0-9]{1,5})")  # fmt: skip
WILDCARD_HOSTS = {"*", "0.0.0.0", "[::]", "[::0]"}
Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
MAX_ROBOTS = 256  # robots kept; reports from further ids are refused (counted)
MAX_TEXT = 300  # characters kept of any text a robot reports
MAX_THUMB_BYTES = 48 * 1024
RETURNS_KEPT = 10  # last episode returns kept per robot
THUMB_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}

# status field -> its kind ("bool", "int", "float", "float?" (may be None), "text")
STATUS_FIELDS = {
    "stopped": "bool", "stop_source": "text", "reason": "text", "stopped_since": "float",
    "overridden": "bool", "steps": "int", "episodes": "int", "tick_rate": "float",
    "tick_p99_ms": "float?", "outbox": "int", "last_fault": "text", "simulated": "bool",
}  # fmt: skip


def valid_robot_id(value: object) -> bool:
    """Whether ``value`` is a robot id the console shows and acts on."""
    return isinstance(value, str) and ROBOT_ID.fullmatch(value) is not None


def _field(kind: str, value: object) -> tuple[bool, object]:
    """(ok, the value as kept) for one status field of ``kind``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0, value
    if kind == "float?" and value is None:
        return True, None
    if kind in ("float", "float?"):
        return number and math.isfinite(value), float(value) if number else None
    if kind == "text":
        return isinstance(value, str), value[:MAX_TEXT] if isinstance(value, str) else None
    return False, None


def read_status(status: object) -> dict:
    """The known, well-typed fields of a reported status; anything else is left out."""
    if not isinstance(status, dict):
        return {}
    out = {}
    for name, kind in STATUS_FIELDS.items():
        if name in status:
            ok, value = _field(kind, status[name])
            if ok:
                out[name] = value
    return out


def read_console(console: object, key: str | None) -> dict:
    """``{endpoint, key, problem}`` of a reported console; problem '' when it can be used."""
    if not isinstance(console, dict):
        return {}
    endpoint, reported = console.get("endpoint"), console.get("key")
    if not isinstance(endpoint, str) or not (match := ENDPOINT.fullmatch(endpoint)):
        return {"endpoint": "", "key": "", "problem": "the robot reported no usable console "
                "endpoint (tcp://HOST:PORT)"}  # fmt: skip
    if match["host"] in WILDCARD_HOSTS or not 0 < int(match["port"]) < 65536:
        return {"endpoint": "", "key": "", "problem": f"console endpoint {endpoint} names no "
                "host to reach; set console.advertise_host on the robot"}  # fmt: skip
    if not isinstance(reported, str) or not Z85_KEY.fullmatch(reported):
        return {"endpoint": endpoint, "key": "", "problem": "the robot reported no console key"}
    if key is not None and reported != key:
        return {"endpoint": endpoint, "key": "", "problem": "the robot's console key is not the "
                "key it connected with; give its console the robot's own key pair "
                "(teleop.server_key = transport.client_key)"}  # fmt: skip
    return {"endpoint": endpoint, "key": reported, "problem": ""}


def read_thumbnail(thumb: object) -> tuple[bytes, str] | None:
    """(bytes, MIME type) of a reported thumbnail, or None if it is not a small JPEG/PNG."""
    if not isinstance(thumb, np.ndarray) or thumb.dtype != np.uint8 or thumb.ndim != 1:
        return None
    if not 0 < thumb.size <= MAX_THUMB_BYTES:
        return None
    data = thumb.tobytes()
    for magic, mime in THUMB_TYPES.items():
        if data.startswith(magic):
            return data, mime
    return None


class FleetRegistry:
    """Owns the newest report of every robot the gateway heard from (status, console endpoint
    and key, thumbnail, last returns, policy version), keyed by its validated id.

    Written by the gateway's thread (``note``), read by the web console's (``robots``,
    ``thumbnail``, ``console``): one lock around both.
    """

    def __init__(self, max_robots: int = MAX_ROBOTS) -> None:
        self.max_robots = int(max_robots)
        self._lock = threading.Lock()
        self._robots: dict[str, dict] = {}
        self._thumbs: dict[str, tuple[bytes, str]] = {}
        self.refused_ids = 0
        self.refused_thumbs = 0

    def note(self, msg: dict, key: str | None, returns: list[float] = (),
             now: float | None = None) -> bool:  # fmt: skip
        """Keep what one hello/heartbeat says (``returns``: its episodes' returns, as the
        gateway read them). False when the robot's id is refused."""
        robot_id = msg.get("actor")
        now = time.time() if now is None else float(now)
        with self._lock:
            if not valid_robot_id(robot_id) or (
                robot_id not in self._robots and len(self._robots) >= self.max_robots
            ):
                self.refused_ids += 1
                return False
            entry = self._robots.setdefault(robot_id, {
                "id": robot_id, "first_seen": now, "status": {}, "status_at": 0.0,
                "console": {}, "returns": deque(maxlen=RETURNS_KEPT), "policy_version": None,
                "thumb_at": 0.0, "thumb_type": "",
            })  # fmt: skip
            entry["last_seen"] = now
            entry["key"] = key
            version = msg.get("policy_version")
            if isinstance(version, int) and not isinstance(version, bool):
                entry["policy_version"] = version
            entry["returns"].extend(float(r) for r in returns if math.isfinite(r))
            if "status" in msg:
                entry["status"], entry["status_at"] = read_status(msg["status"]), now
            if "console" in msg:
                entry["console"] = read_console(msg["console"], key)
            if "thumb" in msg:
                thumb = read_thumbnail(msg["thumb"])
                if thumb is None:
                    self.refused_thumbs += 1
                else:
                    self._thumbs[robot_id] = thumb
                    entry["thumb_at"], entry["thumb_type"] = now, thumb[1]
        return True

    def robots(self) -> list[dict]:
        """Every robot's newest report, sorted by id (plain data, safe to hand to another
        thread or process; no thumbnail bytes: ``thumbnail(id)`` has those)."""
        with self._lock:
            out = []
            for robot_id in sorted(self._robots):
                entry = dict(self._robots[robot_id])
                entry["returns"] = list(entry["returns"])
                entry["status"] = dict(entry["status"])
                entry["console"] = dict(entry["console"])
                out.append(entry)
            return out

    def thumbnail(self, robot_id: str) -> tuple[bytes, str] | None:
        """(bytes, MIME type) of the robot's newest thumbnail, or None."""
        with self._lock:
            return self._thumbs.get(robot_id)

    def console(self, robot_id: str) -> dict | None:
        """The robot's console ``{endpoint, key, problem}`` ({} if it reported none), or None
        for a robot this registry does not hold."""
        with self._lock:
            entry = self._robots.get(robot_id)
            return None if entry is None else dict(entry["console"])

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"robots": len(self._robots), "refused_ids": self.refused_ids,
                    "refused_thumbs": self.refused_thumbs}  # fmt: skip
