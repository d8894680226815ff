"""The safety supervisor: the one path every command takes to a robot (DESIGN.md section 3).

Every tick, in this order::

    policy action ─▶ 1 latched stop ─▶ 2 teleop override ─▶ 3 limits ─────────▶ robot.step
                     (nothing sent)     (person's action)    (clamp, or refuse
                                                              and hold)
    4 watchdog thread: no command reached the robot within safety.watchdog_deadline_s
      while an episode runs  ─▶  robot.stop(), stop latched

1. Latched stop. ``request_stop`` (keyboard, remote console, watchdog, a robot fault)
   calls ``robot.stop()`` at once, from the caller's thread, and latches. While latched
   nothing is sent to the robot. Only ``reset_stop(person)`` releases it, never the
   policy or a timer, and after a release the next episode must begin with ``reset()``.
2. Override. While a person holds the override, their action (``set_teleop_action``;
   the rest action until they give one) replaces the policy's, and ``step`` reports
   ``intervention=True`` so the actor stores ``intervention: 1`` and the executed action.
3. Limits, in action units (the robot's ``act_space["action"]``), config ``safety``:
   non-finite values or a wrong shape are refused; continuous actions are clamped to
   the bounds and to ``max_abs``, a change from the previous executed command beyond
   ``refuse_change`` is refused and one beyond ``max_change`` is clamped; discrete
   actions must be a valid one-hot. Then ``robot.limit_command`` applies the robot's
   own limits (workspace box, joint limits) and has the last word; raising
   ``robots.base.LimitViolation`` refuses. A refused command is not executed: it is
   logged and counted, and the previous executed command is held instead (at the
   start of an episode: the rest action, zeros or one-hot ``rest_index``).
4. Watchdog. Armed from the end of ``reset()`` until the episode ends or stops.
   The hardware's own watchdog (ur_rtde's, the board's serial timeout) is the
   driver's job and catches a crash of this whole process.

A ``robots.base.RobotFault`` from the robot (protective stop, lost connection, stale
state, serial timeout, and a ``SensorFault``: an observation holding NaN or infinity, which
the policy and the replay never see) latches the stop; any other exception from the robot latches
it too and is re-raised (it is a bug to fix, but the robot must not keep moving).

How the actor uses it::

    sup = SafetySupervisor(robot, config.safety)      # robot already connected
    sup.start()                                      # watchdog thread
    while running:
        if sup.stopped:                              # latched: command nothing, keep ticking
            sup.wait_released(timeout=robot.control_period or 0.1)
            continue
        try:
            obs = sup.reset()
        except SafetyStopped:
            continue
        while not obs["is_last"]:
            action, state = agent.policy(obs, state)
            obs, executed, intervention = sup.step(action)
            if executed is None:                     # stopped: nothing was sent, obs is the
                break                                # previous one marked is_last
            store(obs, executed, intervention)
    sup.close()

``sup.status`` is a plain dict (msgpack-able) for displays and the remote console.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from daydream.core.files import write_text
from daydream.core.spaces import nonfinite_keys
from robots.base import LimitViolation, Robot, RobotFault, SensorFault

log = logging.getLogger("daydream.safety.supervisor")

CONFIG_KEYS = (
    "watchdog_deadline_s",
    "watchdog_poll_s",
    "hard_stop_on_fault",
    "max_abs",
    "max_change",
    "refuse_change",
    "rest_index",
    "stop_after_refusals",
    "faults_kept",
)
_BOUND_TOLERANCE = 1e-5  # float32 rounding when checking what limit_command returned


def checked(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``obs`` unchanged; a NaN or infinity from any sensor is a :class:`SensorFault`, so the
    stop latches and the value reaches neither the policy nor the replay."""
    bad = nonfinite_keys(obs)
    if bad:
        raise SensorFault(
            f"non-finite sensor values in {', '.join(repr(k) for k in bad)} (a sensor or its "
            "driver is failing: check it before resetting the stop)"
        )
    return obs


class SafetyStopped(RuntimeError):
    """The safety stop is latched; a person must reset it (stop key's partner, or the console)."""


class SafetySupervisor:
    """Owns the safety state of one robot: the latched stop, the override, limits, watchdog.

    Wraps any ``robots.base.Robot``; the actor never calls the robot's ``reset``/``step``
    itself. Thread-safe: ``request_stop``, ``reset_stop``, ``set_override`` and
    ``set_teleop_action`` may be called from any thread (keyboard, console, watchdog);
    ``reset`` and ``step`` from the one control thread.
    """

    def __init__(
        self, robot: Robot, config: Mapping[str, Any], latch_file: str | Path | None = None
    ) -> None:
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise KeyError(
                f"safety config lacks {missing}; pass config.safety from configs/defaults.yaml"
            )
        self.robot = robot
        self.cfg = {k: config[k] for k in CONFIG_KEYS}
        if float(self.cfg["watchdog_deadline_s"]) <= 0:
            raise ValueError(
                "safety.watchdog_deadline_s must be > 0 seconds (it cannot be disabled)"
            )
        self.space = robot.act_space["action"]
        self.discrete = bool(self.space.discrete)
        self._rest = self._make_rest()

        self._lock = threading.RLock()
        self._released = threading.Event()  # set while no stop is latched
        self._released.set()
        self._closing = threading.Event()
        self._watchdog: threading.Thread | None = None

        self._stopped = False
        self._stop_source = ""
        self._stop_reason = ""
        self._stop_since = 0.0
        self._hard = False
        self._needs_reset = True  # no episode yet: step() needs reset() first
        self._in_flight = False
        self._armed = False
        self._last_command = time.monotonic()

        self._override = False
        self._teleop_action: np.ndarray | None = None

        self._prev: np.ndarray | None = None  # last executed command of this episode
        self._last_obs: dict[str, np.ndarray] | None = None
        self._episode = 0
        self._return = 0.0
        self._steps = 0
        self._refused = 0
        self._refused_in_row = 0
        self._faults: collections.deque[str] = collections.deque(
            maxlen=int(self.cfg["faults_kept"])
        )
        self.last_notes: list[str] = []

        # A latched stop outlives the process: it is written to ``latch_file`` and a supervisor
        # that finds the file starts latched, so a restart (crash, service manager) never
        # releases it. Only reset_stop() by a person removes the file.
        self.latch_file = Path(latch_file) if latch_file is not None else None
        if self.latch_file is not None and self.latch_file.exists():
            try:
                saved = json.loads(self.latch_file.read_text())
            except (OSError, ValueError):
                saved = {}
            self._stopped = True
            self._stop_source = str(saved.get("source", "persisted"))
            self._stop_reason = (
                f"{saved.get('reason', 'a safety stop')} (latched before this process started; "
                f"{self.latch_file})"
            )
            self._stop_since = float(saved.get("since", time.time()))
            self._released.clear()
            log.warning("safety stop still latched from an earlier run: %s", self._stop_reason)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SafetySupervisor:
        """Start the watchdog thread. Returns self."""
        if self._watchdog is None:
            self._closing.clear()
            self._watchdog = threading.Thread(
                target=self._watch, name="daydream-safety-watchdog", daemon=True
            )
            self._watchdog.start()
        return self

    def close(self) -> None:
        """Stop the watchdog thread. Does not stop or disconnect the robot (its owner does)."""
        self._closing.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=2.0)
            self._watchdog = None
        with self._lock:
            self._armed = False

    def __enter__(self) -> SafetySupervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """A simulated robot waits between two ticks (single-process training, a simulated
        robot holding the training ratio): the watchdog and the robot's own timeouts are
        suspended inside. A real robot refuses (``Robot.paused``): it never waits."""
        with self.robot.paused():
            with self._lock:
                armed, self._armed = self._armed, False
            try:
                yield
            finally:
                with self._lock:
                    self._last_command = time.monotonic()
                    self._armed = armed and not self._stopped and not self._needs_reset

    # ------------------------------------------------------------------ 1. the latched stop
    @property
    def stopped(self) -> bool:
        return self._stopped

    def request_stop(self, source: str, hard: bool = False, reason: str = "") -> None:
        """Latch the stop and call ``robot.stop(hard)`` now, from this thread.

        Safe to call repeatedly (each call stops the robot again; ``hard`` escalates).
        """
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._stop_source = source
                self._stop_reason = reason or f"stop requested by {source}"
                self._stop_since = time.time()
                self._armed = False
                self._released.clear()
                log.warning("safety stop latched: %s", self._stop_reason)
                self._persist_latch()
            self._hard = self._hard or hard
        self._call_robot_stop(hard)

    def reset_stop(self, person: str) -> bool:
        """Release a latched stop on a person's explicit request. Returns whether one was latched.

        The next episode must start with ``reset()``; ``step`` sends nothing until then.
        """
        if not person:
            raise ValueError("reset_stop needs the name of who releases it (person, key, console)")
        with self._lock:
            if not self._stopped:
                return False
            log.warning("safety stop (%s) released by %s", self._stop_reason, person)
            self._stopped = False
            self._hard = False
            self._needs_reset = True
            if self.latch_file is not None:
                self.latch_file.unlink(missing_ok=True)
            self._refused_in_row = 0
            self._released.set()
            return True

    def _persist_latch(self) -> None:
        """Write the latched stop to ``latch_file`` (atomically and durably)."""
        if self.latch_file is None:
            return
        record = {"source": self._stop_source, "reason": self._stop_reason,
                  "since": self._stop_since}
        try:
            write_text(self.latch_file, json.dumps(record))
        except OSError as e:  # the stop itself is latched in memory regardless
            log.error("could not persist the safety stop to %s: %s", self.latch_file, e)

    def wait_released(self, timeout: float | None = None) -> bool:
        """Block until no stop is latched (or ``timeout``); True when released."""
        return self._released.wait(timeout)

    def _call_robot_stop(self, hard: bool) -> None:
        try:
            self.robot.stop(hard=hard)
        except Exception as e:  # noqa: BLE001 - a failed stop must be seen, not crash the caller
            msg = f"robot.stop(hard={hard}) failed: {type(e).__name__}: {e}"
            log.error("%s (use the hardware emergency stop)", msg)
            self._record_fault(msg)

    def _record_fault(self, msg: str) -> None:
        with self._lock:
            self._faults.append(f"{time.strftime('%H:%M:%S')} {msg}")

    def _on_robot_error(self, where: str, e: BaseException) -> None:
        msg = f"{where}: {type(e).__name__}: {e}"
        self._record_fault(msg)
        self.request_stop("fault", hard=bool(self.cfg["hard_stop_on_fault"]), reason=msg)

    # ------------------------------------------------------------------ 2. override
    @property
    def overridden(self) -> bool:
        return self._override

    def set_override(self, active: bool, action: Any = None) -> None:
        """Take over from the policy (``active=True``) or give control back.

        ``action`` (optional) is the person's action from the next tick on; without one
        the rest action is executed until ``set_teleop_action`` gives one.
        """
        with self._lock:
            if active != self._override:
                log.info("teleop override %s", "on" if active else "off")
            self._override = bool(active)
            if action is not None:
                self._teleop_action = self._as_array(action)
            elif not active:
                self._teleop_action = None

    def set_teleop_action(self, action: Any) -> None:
        """The person's current action (used while the override is held; None: rest)."""
        with self._lock:
            self._teleop_action = None if action is None else self._as_array(action)

    # ------------------------------------------------------------------ episodes and steps
    def reset(self) -> dict[str, np.ndarray]:
        """Start an episode (``robot.reset()``) and arm the watchdog.

        Raises SafetyStopped while a stop is latched, or when the robot faults during it.
        """
        with self._lock:
            if self._stopped:
                raise SafetyStopped(self._stopped_message())
            self._armed = False
            self._in_flight = True
        try:
            obs = checked(self.robot.reset())
        except RobotFault as e:
            self._on_robot_error("robot.reset()", e)
            raise SafetyStopped(self._stopped_message()) from e
        except BaseException as e:
            self._on_robot_error("robot.reset() raised", e)
            raise
        finally:
            with self._lock:
                self._in_flight = False
        with self._lock:
            if self._stopped:  # a stop arrived while the robot was resetting: stop again
                self._call_robot_stop(self._hard)
                raise SafetyStopped(self._stopped_message())
            self._episode += 1
            self._return = 0.0
            self._steps = 0
            self._prev = self._rest.copy()
            self._refused_in_row = 0
            self._needs_reset = False
            self._last_obs = obs
            self._last_command = time.monotonic()
            self._armed = not bool(obs.get("is_last", False))
        return obs

    def step(
        self, action: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, bool]:
        """One tick: returns ``(obs, executed, intervention)``.

        ``executed`` is the action the robot actually got (the person's while overridden,
        clamped, or the held command after a refusal). While a stop is latched, or after
        a release until the next ``reset()``, nothing is sent: ``executed`` is None and
        ``obs`` is the previous observation with ``is_last=True`` (its reward and is_first
        kept).
        """
        with self._lock:
            if self._stopped or self._needs_reset:
                if self._last_obs is None:
                    raise RuntimeError("call SafetySupervisor.reset() before step()")
                return self._stopped_obs(), None, False
            intervention = self._override
            if intervention:
                requested = self._teleop_action if self._teleop_action is not None else self._rest
            else:
                requested = self._as_array(action)
        command, notes = self._limit(requested)
        with self._lock:
            if command is None or self._stopped:  # refusals latched a stop, or one arrived
                return self._stopped_obs(), None, False
            self._in_flight = True
            self._last_command = time.monotonic()
        executed = {"action": command}
        try:
            obs = checked(self.robot.step(executed))
        except RobotFault as e:
            self._on_robot_error("robot.step()", e)
            return self._stopped_obs(), None, False
        except BaseException as e:
            self._on_robot_error("robot.step() raised", e)
            raise
        finally:
            with self._lock:
                self._in_flight = False
        with self._lock:
            self._prev = command
            self._last_obs = obs
            self._steps += 1
            self._return += float(obs.get("reward", 0.0))
            self.last_notes = notes
            if obs.get("is_last", False):
                self._armed = False
                self._needs_reset = True
            stopped_meanwhile = self._stopped
        if stopped_meanwhile:
            # A stop arrived while the command was in flight: it may have reached the robot
            # after the first robot.stop(), so stop again.
            self._call_robot_stop(self._hard)
        return obs, executed, intervention

    # ------------------------------------------------------------------ 3. limits
    def _limit(self, requested: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
        """Limit one command. Returns (command to send, notes); None: stop latched instead."""
        notes: list[str] = []
        command, why = self._check(requested, notes)
        if command is not None:
            try:
                command = self._robot_limit(command, notes)
                self._refused_in_row = 0
                return command, notes
            except LimitViolation as e:
                why = f"robot refused: {e}"
            except RobotFault as e:
                self._on_robot_error("robot.limit_command()", e)
                return None, notes
        # Refused: hold the previous executed command (the rest action at an episode start).
        with self._lock:
            self._refused += 1
            self._refused_in_row += 1
            in_row = self._refused_in_row
            prev = self._prev if self._prev is not None else self._rest
        msg = f"refused command ({why}); holding the previous one"
        (log.warning if in_row == 1 else log.debug)(msg)
        self._record_fault(msg)
        notes.append(msg)
        limit = int(self.cfg["stop_after_refusals"])
        if limit and in_row >= limit:
            self.request_stop("limits", reason=f"{in_row} commands refused in a row; last: {why}")
            return None, notes
        for fallback in (prev, self._rest):
            try:
                return self._robot_limit(fallback.copy(), notes), notes
            except LimitViolation as e:
                notes.append(f"robot refused the held command too: {e}")
            except RobotFault as e:
                self._on_robot_error("robot.limit_command()", e)
                return None, notes
        self.request_stop("limits", reason="robot refuses even its rest action: " + notes[-1])
        return None, notes

    def _check(self, a: np.ndarray, notes: list[str]) -> tuple[np.ndarray | None, str]:
        """The supervisor's own limits. Returns (clamped action, '') or (None, why refused)."""
        space = self.space
        if a.shape != space.shape:
            return None, f"shape {a.shape}, expected {space.shape}"
        if not np.all(np.isfinite(a)):
            return None, "non-finite values"
        if self.discrete:
            ones = np.count_nonzero(a == 1)
            if ones != 1 or np.count_nonzero(a) != 1:
                return None, f"not a one-hot vector over {space.shape[0]} actions: {a.tolist()}"
            return a.astype(space.dtype), ""
        out = a.astype(np.float64)
        low, high = self._bounds()
        clipped = np.clip(out, low, high)
        if not np.array_equal(clipped, out):
            notes.append("clamped to the action bounds")
        out = clipped
        max_abs = float(self.cfg["max_abs"])
        if max_abs > 0:
            clipped = np.clip(out, -max_abs, max_abs)
            if not np.array_equal(clipped, out):
                notes.append(f"clamped to max_abs {max_abs}")
            out = clipped
        prev = self._prev if self._prev is not None else self._rest
        delta = out - prev
        refuse = float(self.cfg["refuse_change"])
        if refuse > 0 and np.any(np.abs(delta) > refuse):
            return None, f"change {np.abs(delta).max():.3g} beyond refuse_change {refuse}"
        max_change = float(self.cfg["max_change"])
        if max_change > 0 and np.any(np.abs(delta) > max_change):
            out = prev + np.clip(delta, -max_change, max_change)
            notes.append(f"change clamped to max_change {max_change}")
        return out.astype(space.dtype), ""

    def _robot_limit(self, command: np.ndarray, notes: list[str]) -> np.ndarray:
        """Apply ``robot.limit_command`` and check its result still satisfies the bounds."""
        limited, robot_notes = self.robot.limit_command({"action": command})
        notes.extend(robot_notes)
        out = np.asarray(limited["action"], dtype=self.space.dtype)
        if out.shape != self.space.shape or not np.all(np.isfinite(out)):
            raise LimitViolation(f"limit_command returned an invalid action {out.tolist()}")
        if self.discrete:
            if np.count_nonzero(out == 1) != 1 or np.count_nonzero(out) != 1:
                raise LimitViolation(f"limit_command returned a non-one-hot action {out.tolist()}")
        else:
            low, high = self._bounds()
            if np.any(out < low - _BOUND_TOLERANCE) or np.any(out > high + _BOUND_TOLERANCE):
                raise LimitViolation(f"limit_command returned out-of-bounds {out.tolist()}")
        return out

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = -np.inf if self.space.low is None else self.space.low
        high = np.inf if self.space.high is None else self.space.high
        return (
            np.broadcast_to(np.asarray(low, np.float64), self.space.shape),
            np.broadcast_to(np.asarray(high, np.float64), self.space.shape),
        )

    def _make_rest(self) -> np.ndarray:
        if self.discrete:
            rest = np.zeros(self.space.shape, self.space.dtype)
            index = int(self.cfg["rest_index"])
            if not 0 <= index < self.space.shape[0]:
                raise ValueError(
                    f"safety.rest_index {index} is outside the robot's "
                    f"{self.space.shape[0]} actions"
                )
            rest[index] = 1
            return rest
        low, high = self._bounds()
        return np.clip(np.zeros(self.space.shape), low, high).astype(self.space.dtype)

    def rest_action(self) -> dict[str, np.ndarray]:
        """The action that holds still: zeros (clipped to the bounds) or one-hot rest_index."""
        return {"action": self._rest.copy()}

    # ------------------------------------------------------------------ 4. watchdog
    def _watch(self) -> None:
        deadline = float(self.cfg["watchdog_deadline_s"])
        poll = float(self.cfg["watchdog_poll_s"])
        while not self._closing.wait(poll):
            with self._lock:
                idle = time.monotonic() - self._last_command
                fire = self._armed and not self._stopped and idle > deadline
            if fire:
                self.request_stop(
                    "watchdog",
                    reason=f"watchdog: no command reached the robot for {idle:.2f} s "
                    f"(deadline {deadline} s): the policy stalled or crashed",
                )

    # ------------------------------------------------------------------ status
    @property
    def status(self) -> dict[str, Any]:
        """A plain, msgpack-able snapshot for displays and the remote console."""
        with self._lock:
            return {
                "stopped": self._stopped,
                "stop_source": self._stop_source if self._stopped else "",
                "reason": self._stop_reason if self._stopped else "",
                "stopped_since": self._stop_since if self._stopped else 0.0,
                "needs_reset": self._needs_reset,
                "overridden": self._override,
                "episode": self._episode,
                "step": self._steps,
                "return": self._return,
                "refused_count": self._refused,
                "faults": list(self._faults),
                "last_fault": self._faults[-1] if self._faults else "",
                "watchdog_armed": self._armed,
            }

    def _stopped_message(self) -> str:
        return (
            f"safety stop latched ({self._stop_reason}); a person must reset it "
            "(keyboard reset key, or `daydream teleop` → reset) before the next episode"
        )

    def _stopped_obs(self) -> dict[str, np.ndarray]:
        """The observation the policy last acted on, closing the episode: its own reward and
        is_first are kept (they are real), only ``is_last`` is set."""
        obs = dict(self._last_obs or {})
        obs["is_last"] = np.bool_(True)
        return obs

    def _as_array(self, action: Any) -> np.ndarray:
        if isinstance(action, Mapping):
            if "action" not in action:
                return np.full(self.space.shape, np.nan)  # refused by _check
            action = action["action"]
        try:
            return np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            return np.full(self.space.shape, np.nan)
