"""The robot actor: one robot acting with the newest policy it has, its experience streamed out.

    control thread (never waits on the learner)            the link (runtime/links.py)
    ───────────────────────────────────────────            ───────────────────────────────
    policies.current()  ◀── swap (a reference) ──────────  stages new weights into the spare
    agent.policy(obs) -> SafetySupervisor.step               policy copy
    ChunkBuilder ──chunk──▶ link.send_chunk ──────────────▶  to the replay (network: outbox,
    episode returns ──────▶ link.report_episode ──────────▶  ZeroMQ, gateway; one process: the
                                                             in-process replay)

Every tick: swap in weights if new ones are staged (a reference assignment), compute the
action (random until the first weights arrive), send it through the SafetySupervisor
(stop, override, limits, watchdog), record ``{**o_t, action: executed a_t, intervention}``
(``daydream.core.spaces.make_record``) and sleep out the tick. The same class runs a real
robot under ``daydream actor`` and a simulated one inside ``daydream train``: only the
link differs. ``after_tick`` (single-process training) runs between two ticks with the
robot paused, which only a simulated robot allows.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import robots
from daydream.core.chunks import ChunkBuilder
from daydream.core.clocks import Every
from daydream.core.files import write_text
from daydream.core.spaces import Space, make_record
from daydream.core.weights import PolicyWeights
from daydream.runtime.fleet_report import ThumbnailTap, console_info, heartbeat_fields
from daydream.safety.supervisor import SafetyStopped, SafetySupervisor

log = logging.getLogger("daydream.actor")

#: the latched safety stop of an actor, in its directory; only a person's reset removes it
LATCH_FILENAME = "SAFETY_STOP"
#: `daydream actor` exits with this status while a safety stop is latched (service managers
#: must not restart it: deploy/systemd/daydream-actor.service uses RestartPreventExitStatus=3)
EXIT_SAFETY_STOP = 3
HOLD_POLL_S = 0.005  # a simulated robot waiting for the learner looks this often

# Decoded weights are read-only views of the received message; torch copies them anyway.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def actor_directory(config, actor_id: str) -> Path:
    """<logdir>/<actor.directory>/<actor id> (or <actor.directory>/<id> when absolute)."""
    base = Path(config.actor.directory)
    if not base.is_absolute():
        base = Path(config.logdir) / base
    return base / actor_id


class Link(Protocol):
    """How a robot actor's experience leaves it and new weights reach it (runtime/links.py)."""

    def start(self) -> Link: ...

    def send_chunk(self, chunk: dict[str, np.ndarray]) -> None: ...

    def report_episode(
        self, episode_return: float, length: int, info: dict[str, float] | None = None
    ) -> None: ...

    def tick_done(self) -> None: ...

    def behind(self) -> int: ...

    def close(self, grace: float) -> dict: ...

    def status(self) -> dict: ...


class Policy(Protocol):
    """What acts: the torch ``Agent`` or ``runtime.onnx_policy.OnnxPolicy`` (``actor.backend``)."""

    def policy(self, obs: dict, state=None, mode: str = "explore") -> tuple[dict, Any]: ...

    def executed(self, state, action: np.ndarray) -> Any: ...

    def load_policy_weights(self, weights: PolicyWeights) -> None: ...


def policy_backend(
    config, obs_space: dict[str, Space], act_space: dict[str, Space], seed: int
) -> Callable[[], Policy]:
    """Makes the policy copies of ``actor.backend``: torch (the Agent, on the CPU) or onnx (ONNX
    Runtime and numpy; torch is never imported, so a robot computer need not have it)."""
    backend = config.actor.backend
    if backend == "onnx":
        from daydream.runtime.onnx_policy import OnnxPolicy

        rng = np.random.default_rng([seed, 1])  # both copies draw from it (the control thread)
        return lambda: OnnxPolicy(
            obs_space, act_space, config.behavior.expl_noise, rng, config.behavior.actor.dist
        )
    if backend == "torch":
        import torch

        from daydream.agent.agent import Agent

        torch.manual_seed(seed)
        return lambda: Agent(obs_space, act_space, config, device="cpu")
    raise ValueError(f"actor.backend must be torch or onnx, got {backend!r}")


class PolicySlots:
    """Owns two copies of the policy: the one acting and a spare that new weights load into.

    ``stage`` (the link's thread) loads weights into the spare and marks it ready;
    ``current`` (control thread, between ticks) swaps a ready copy in by reference. The
    copy being acted with is never written to.
    """

    def __init__(self, make_agent: Callable[[], Policy]) -> None:
        self._lock = threading.Lock()
        self._active: Policy | None = None
        self._ready: Policy | None = None
        self._spare: list[Policy] = [make_agent(), make_agent()]
        self.version = -1  # version of the weights acting now (-1: random policy)
        self._ready_version = -1
        self.swaps = 0
        self.staged_at: dict[int, float] = {}  # version -> time.monotonic() when ready
        self.swapped_at: dict[int, float] = {}  # version -> time.monotonic() when acting

    @property
    def newest(self) -> int:
        """The newest version held (acting or staged)."""
        return max(self.version, self._ready_version)

    def stage(self, weights: PolicyWeights) -> None:
        """Load ``weights`` into a copy that is not acting; it acts from the next tick on."""
        with self._lock:
            target = self._ready or self._spare.pop()
            self._ready = None
        try:
            target.load_policy_weights(weights)
        except BaseException:
            with self._lock:
                self._spare.append(target)
            raise
        with self._lock:
            self._ready, self._ready_version = target, int(weights.version)
            self.staged_at[int(weights.version)] = time.monotonic()

    def current(self) -> tuple[Policy | None, bool]:
        """The copy to act with now, and whether it was just swapped in (reset its state?)."""
        if self._ready is None:  # fast path: a plain attribute read, no lock
            return self._active, False
        with self._lock:
            if self._active is not None:
                self._spare.append(self._active)
            self._active, self._ready = self._ready, None
            self.version = self._ready_version
            self.swaps += 1
            self.swapped_at[self.version] = time.monotonic()
            return self._active, True


def with_seed(config, seed: int):
    """``config`` with ``seed`` in place of ``config.seed`` (a copy; the original is kept)."""
    copy = config.copy()
    copy.seed = int(seed)
    return copy


class RobotActor:
    """Owns one robot's acting loop: robot, SafetySupervisor, policy copies, chunks, episode
    bookkeeping and status; its experience leaves through a link."""

    def __init__(
        self,
        config,
        make_link: Callable[[PolicySlots, Path, float], Link],
        actor_id: str = "actor-0",
        robot_name: str | None = None,
        max_steps: int = 0,
        after_tick: Callable[[], None] | None = None,
    ) -> None:
        self.config, self.acfg = config, config.actor
        self.actor_id = actor_id
        self.max_steps = int(max_steps)
        self.after_tick = after_tick
        self.directory = actor_directory(config, actor_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        # every robot its own seed (config.seed and its id): N simulated robots draw different
        # reach targets, cubes and noise, not the same ones in the same order
        seed = (config.seed + zlib.crc32(actor_id.encode())) % 2**31
        self.robot = robots.make(robot_name or config.robot.name, with_seed(config, seed))
        self.rng = np.random.default_rng(seed)
        obs_space, act_space = self.robot.obs_space, self.robot.act_space
        self.act_space = act_space["action"]
        self.slots = PolicySlots(policy_backend(config, obs_space, act_space, seed))
        self.period = self.acfg.period_s or float(self.robot.control_period or 0.0)
        self.link = make_link(self.slots, self.directory, self.period)
        self.chunks = ChunkBuilder(self.acfg.chunk_length)
        self.mode = self.acfg.policy_mode
        # only a simulation may wait for the learner; a real robot keeps its rate whatever it does
        self.max_lag = self.acfg.sim_max_lag_steps if self.robot.simulated else 0
        self.held_s = 0.0  # seconds spent waiting for the learner
        self._stop = threading.Event()
        self.steps = 0  # executed actions
        self.records = 0  # steps recorded into chunks (executed ones + episode ends)
        self.episodes = 0
        self.tick_starts: deque = deque(maxlen=100000)  # perf_counter() at every tick
        self.tick_times: deque = deque(maxlen=100000)  # (start, seconds of work) per acting tick
        self.swap_ticks: list[int] = []  # tick indices at which weights were swapped in
        self._episode = {"return": 0.0, "length": 0}
        self._should_report = Every(self.acfg.status_every_s, first=False)
        self.sup: SafetySupervisor | None = None
        self.console = None
        self.console_info: dict | None = None  # {endpoint, key} the fleet console reaches it at
        self.thumbnails = ThumbnailTap.for_robot(self.robot.obs_space, config.console)
        self.state = None

    @classmethod
    def networked(
        cls, config, address: str, actor_id: str, robot_name: str | None = None,
        max_steps: int = 0,
    ) -> RobotActor:
        """The robot actor of ``daydream actor``: streaming to the gateway at ``address``."""
        from daydream.runtime.links import NetworkLink

        def link(slots: PolicySlots, directory: Path, period: float) -> NetworkLink:
            return NetworkLink(config, address, actor_id, directory, slots, period)

        actor = cls(config, link, actor_id, robot_name, max_steps)
        actor.link.heartbeat_fields = lambda: heartbeat_fields(actor)  # the fleet console's
        return actor

    def stop(self) -> None:
        """Ask ``run`` to return after the current tick (thread-safe; signal handlers call it)."""
        self._stop.set()

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Act until ``max_steps`` executed steps (0: forever) or ``stop()``."""
        self.robot.connect()
        # A stop latched by a person, the watchdog or a fault is persisted here and survives a
        # restart of this process; only a person's reset (keyboard, `daydream teleop`) clears it.
        self.sup = SafetySupervisor(
            self.robot, self.config.safety, latch_file=self.directory / LATCH_FILENAME
        ).start()
        try:
            self._start_console()
            self.link.start()
            while not self._done():
                if self.sup.stopped:
                    self.sup.wait_released(timeout=max(self.period, 0.05))
                    continue
                try:
                    obs = self.sup.reset()
                except SafetyStopped:
                    continue
                self._episode_loop(obs)
        finally:
            # A normal exit halts the robot without latching a stop (a restart may go on acting);
            # a stop latched before the exit stays latched in its file.
            self.sup.close()
            self._halt_robot()
            tail = self.chunks.flush()
            if tail is not None:
                self.link.send_chunk(tail)
            outbox = self.link.close(self.acfg.shutdown_grace_s)
            if self.console is not None:
                self.console.close()
            self.robot.disconnect()
            self._write_status(outbox)
        return self.status(outbox)

    def _halt_robot(self) -> None:
        try:
            self.robot.stop()
        except Exception as e:  # noqa: BLE001 - disconnect still runs; the fault is reported
            log.error("robot.stop() failed on exit: %s", e)

    def _done(self) -> bool:
        return self._stop.is_set() or bool(self.max_steps and self.steps >= self.max_steps)

    def _episode_loop(self, obs: dict) -> None:
        self.state = None  # the policy's recurrent state: (latent, previous action)
        self._episode = {"return": 0.0, "length": 0}
        while True:
            t0 = time.perf_counter()
            self.tick_starts.append(t0)
            if obs["is_last"]:
                self._record(obs, None, False)
                self._end_episode()
                return
            if self._done():  # stopping mid-episode: close the episode in the data
                self._record({**obs, "is_last": np.bool_(True)}, None, False)
                return
            agent, swapped = self.slots.current()
            if swapped:
                self.swap_ticks.append(len(self.tick_starts) - 1)
                log.info("actor %s: acting with weights version %d", self.actor_id,
                         self.slots.version)  # fmt: skip
            if agent is None:
                action = {"action": self.act_space.sample(self.rng)}
            else:
                action, self.state = agent.policy(obs, self.state, mode=self.mode)
            next_obs, executed, intervention = self.sup.step(action)
            if executed is None:  # stopped: nothing was sent; next_obs is obs marked last
                self._record(next_obs, None, False)
                self._end_episode()
                return
            self._record(obs, executed["action"], intervention)
            if self.state is not None:  # the model consumes what the robot did, not the proposal
                self.state = agent.executed(self.state, executed["action"])
            self.steps += 1
            obs = next_obs
            self.thumbnails.offer(obs)  # a clock read; a copy of the image once a second
            self._episode["return"] += float(obs["reward"])
            self._episode["length"] += 1
            self.tick_times.append((t0, time.perf_counter() - t0))
            self.link.tick_done()
            if self._should_report():
                self._write_status(None)
            if self.after_tick is not None:
                with self.sup.paused():
                    self.after_tick()
            else:
                self._sleep_out(t0)
                self._hold_for_learner()

    def _hold_for_learner(self) -> None:
        """A simulated robot waits while the learner is more than ``actor.sim_max_lag_steps``
        behind its training ratio, so that it learns per step as in one process (the robot
        is paused meanwhile: no watchdog, no board timeout)."""
        if not self.max_lag or self.link.behind() <= self.max_lag:
            return
        t0 = time.monotonic()
        with self.sup.paused():
            while self.link.behind() > self.max_lag and not self._stop.is_set():
                self._stop.wait(HOLD_POLL_S)
        self.held_s += time.monotonic() - t0

    def _record(self, obs: dict, action: np.ndarray | None, intervention: bool) -> None:
        self.records += 1
        chunk = self.chunks.add(make_record(obs, action, self.act_space, intervention))
        if chunk is not None:
            self.link.send_chunk(chunk)

    def _end_episode(self) -> None:
        self.episodes += 1
        self.link.report_episode(
            self._episode["return"], self._episode["length"], self.robot.episode_info()
        )

    def _sleep_out(self, t0: float) -> None:
        if self.period > 0:
            remaining = self.period - (time.perf_counter() - t0)
            if remaining > 0:
                time.sleep(remaining)

    # ------------------------------------------------------------------ console and status
    def _start_console(self) -> None:
        bind = self.config.teleop.console
        if not bind:
            return
        from daydream.safety.console import ConsoleServer
        from daydream.wire.curve import key_directory

        key_dir = key_directory(self.config.transport.key_dir, self.config.logdir)
        secret = key_dir / f"{self.config.teleop.server_key}.key_secret"
        allowed = key_dir / self.config.teleop.allowed_dir
        self.console = ConsoleServer(self.sup, bind, secret, allowed).start()
        self.console_info = console_info(  # told to the fleet console in heartbeats
            self.console.endpoint, secret, self.config.console.advertise_host
        )
        print(f"actor {self.actor_id}: safety console on {self.console.endpoint}", flush=True)

    def tick_rate(self, window: float = 5.0) -> float:
        """Ticks per second over the last ``window`` seconds."""
        starts = list(self.tick_starts)
        if len(starts) < 2:
            return 0.0
        recent = [t for t in starts if t >= starts[-1] - window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def status(self, outbox: dict | None = None) -> dict[str, Any]:
        ticks = np.asarray([d for _, d in list(self.tick_times)[-10000:]], np.float64)
        link = self.link.status()
        return {
            "actor": self.actor_id,
            "time": time.time(),
            "steps": self.steps,
            "records": self.records,
            "episodes": self.episodes,
            "policy_version": self.slots.version,
            "swaps": self.slots.swaps,
            "tick_rate": self.tick_rate(),
            "tick_p50_ms": float(np.percentile(ticks, 50) * 1e3) if ticks.size else None,
            "tick_p99_ms": float(np.percentile(ticks, 99) * 1e3) if ticks.size else None,
            "held_for_learner_s": self.held_s,
            **link,
            "outbox": outbox if outbox is not None else link.get("outbox", {}),
            "safety_stopped": bool(self.sup is not None and self.sup.stopped),
        }

    def _write_status(self, outbox: dict | None) -> None:
        status = self.status(outbox)
        write_text(self.directory / "status.json", json.dumps(status))
        if self.after_tick is not None:
            return  # one process: the learner's progress line says it all
        print(
            f"actor {self.actor_id}: step {status['steps']} | episodes {status['episodes']} | "
            f"weights v{status['policy_version']} | {status['tick_rate']:.1f} ticks/s | "
            f"p99 tick {status['tick_p99_ms'] or 0:.2f} ms | "
            f"outbox {status['outbox'].get('pending', 0)}"
            + self._silence_note(status),
            flush=True,
        )

    def _silence_note(self, status: dict) -> str:
        silent = status.get("learner_silent_s")
        if silent is None or silent <= self.acfg.learner_silence_warn_s:
            return ""
        return f" | NO ANSWER FROM THE LEARNER for {silent:.0f} s"
