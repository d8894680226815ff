"""The actor: a robot acting with the newest policy it has, streaming experience to the learner.

    control thread (never waits on the network)          network thread
    ───────────────────────────────────────────          ──────────────────────────────────
    policies.current()  ◀── swap (a reference) ─────────  policies.stage(weights): load into
    agent.policy(obs) -> SafetySupervisor.step            the spare copy, mark it ready
    ChunkBuilder ──chunk──▶ queue (bounded) ────────────▶ Outbox (resend until acked, spill to
    episode returns ──────▶ report list ────────────────▶ disk) ──▶ TransportClient ──▶ gateway
                                                          heartbeats: returns, policy version

Every tick: swap in weights if new ones are staged (a reference assignment), compute the
action (random until the first weights arrive), send it through the SafetySupervisor
(stop, override, limits, watchdog), record ``{**obs_t, action: executed_t, intervention}``
and sleep out the tick. Weights are received, decoded and loaded into a second copy of
the policy by the network thread, so the control loop only ever swaps two references.
When the learner is away the actor keeps acting with the weights it has; its chunks
wait in the outbox (spilling to disk) and are resent when the gateway is back.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import warnings
import zlib
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

import robots
from daydream.agent import Agent, PolicyWeights
from daydream.chunks import ChunkBuilder
from daydream.outbox import Outbox
from daydream.safety import SafetyStopped, SafetySupervisor
from daydream.transport import TransportClient

log = logging.getLogger("daydream.actor")

#: the latched safety stop of an actor, in its directory; only a person's reset removes it
LATCH_FILENAME = "SAFETY_STOP"
#: `daydream actor` exits with this status while a safety stop is latched (service managers
#: must not restart it: deploy/systemd/daydream-actor.service uses RestartPreventExitStatus=3)
EXIT_SAFETY_STOP = 3

# Decoded weights are read-only views of the received message; torch copies them anyway.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def actor_directory(config, actor_id: str) -> Path:
    """<logdir>/<actor.directory>/<actor id> (or <actor.directory>/<id> when absolute)."""
    base = Path(str(config.actor.directory))
    if not base.is_absolute():
        base = Path(str(config.logdir)) / base
    return base / actor_id


class PolicySlots:
    """Owns two copies of the policy: the one acting and a spare that new weights load into.

    ``stage`` (network thread) loads weights into the spare and marks it ready;
    ``current`` (control thread, between ticks) swaps a ready copy in by reference. The
    copy being acted with is never written to.
    """

    def __init__(self, make_agent) -> None:
        self._lock = threading.Lock()
        self._active: Agent | None = None
        self._ready: Agent | None = None
        self._spare: list[Agent] = [make_agent(), make_agent()]
        self.version = -1  # version of the weights acting now (-1: random policy)
        self._ready_version = -1
        self.swaps = 0
        self.staged_at: dict[int, float] = {}  # version -> time.monotonic() when ready
        self.swapped_at: dict[int, float] = {}  # version -> time.monotonic() when acting

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

    def current(self) -> tuple[Agent | None, bool]:
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


class Link:
    """Owns the network thread: the TransportClient, the Outbox, heartbeats and weights.

    The control loop talks to it only through ``send_chunk`` and ``report_episode``, which
    never block; everything else happens in the thread.
    """

    def __init__(
        self, config, address: str, actor_id: str, directory: Path, slots: PolicySlots
    ) -> None:
        self.config, self.address, self.actor_id = config, address, actor_id
        self.acfg, self.tcfg = config.actor, config.transport
        self.slots = slots
        self.outbox = Outbox(
            directory / str(self.tcfg.outbox_dir),
            max_memory=int(self.tcfg.outbox_chunks),
            max_disk_bytes=int(self.tcfg.outbox_disk_mb) << 20,
            resend_after=float(self.tcfg.resend_after_s),
        )
        self.client = TransportClient.from_config(
            config, address, actor_id, logdir=str(config.logdir)
        )
        self._chunks: queue.Queue = queue.Queue(maxsize=int(self.acfg.queue_chunks))
        self._episodes: deque = deque(maxlen=1000)
        self._stop = threading.Event()
        self._deadline = 0.0
        self.dropped = 0
        self.weights_received = 0
        self.weights_errors = 0
        self.gateway_version = -1
        self.connected_at: float | None = None
        self._requested: tuple[int, float] = (-2, 0.0)
        # Decoding is cheap (arrays are views of the received frame), but loading weights into
        # the spare policy copy runs Python for a few ms: when the loop is paced, it waits for
        # a tick to end and loads in the idle time before the next one.
        self._idle = threading.Event()
        self.gate_timeout = 0.0  # seconds to wait for a tick's end; 0: do not wait
        self._thread = threading.Thread(target=self._run, name="daydream-link", daemon=True)

    def tick_done(self) -> None:
        """The control loop finished a tick's work: decoding may run in its idle time now."""
        self._idle.set()

    def start(self) -> Link:
        self._thread.start()
        return self

    # ------------------------------------------------------------ control-thread side
    def send_chunk(self, chunk: dict[str, np.ndarray]) -> None:
        """Hand a chunk to the network thread; never blocks (drops the oldest if it is stuck)."""
        while True:
            try:
                self._chunks.put_nowait(chunk)
                return
            except queue.Full:
                try:
                    self._chunks.get_nowait()
                    self.dropped += 1
                    log.warning("actor: network thread is behind; dropped a queued chunk")
                except queue.Empty:
                    pass

    def report_episode(self, episode_return: float, length: int) -> None:
        self._episodes.append([float(episode_return), int(length)])

    # ------------------------------------------------------------ network thread
    def _run(self) -> None:
        poll_ms = int(self.acfg.net_poll_ms)
        last_heartbeat = -1e9
        self.client.hello()
        try:
            while True:
                if self._stop.is_set() and (
                    (len(self.outbox) == 0 and self._chunks.empty())
                    or time.monotonic() > self._deadline
                ):
                    break
                self._take_chunks()
                self.outbox.pump(self.client.send)
                now = time.monotonic()
                if now - last_heartbeat >= float(self.acfg.heartbeat_every):
                    last_heartbeat = now
                    self._heartbeat()
                for msg in self._poll(poll_ms):
                    self._handle(msg)
        except Exception:  # noqa: BLE001 - the control loop must go on; say why the link died
            log.exception("actor: the network thread failed; experience is no longer sent")
        finally:
            self.client.close()

    def _poll(self, poll_ms: int) -> list[dict]:
        # no gating here: decoding even a weights message only parses its small header
        return self.client.poll(timeout_ms=poll_ms)

    def _take_chunks(self) -> None:
        while True:
            try:
                chunk = self._chunks.get_nowait()
            except queue.Empty:
                return
            seq = self.outbox.allocate_seq()
            self.outbox.put(seq, self.client.encode_chunk(seq, chunk))

    def _heartbeat(self) -> None:
        episodes = []
        while self._episodes and len(episodes) < 64:
            episodes.append(self._episodes.popleft())
        msg = {
            "type": "heartbeat",
            "actor": self.actor_id,
            "episodes": episodes,
            "policy_version": int(self.slots.version),
        }
        if not self.client.send(msg):
            self._episodes.extendleft(reversed(episodes))  # not sent: report them next time

    def _handle(self, msg: dict) -> None:
        if self.outbox.handle(msg):
            if self.connected_at is None:
                self.connected_at = time.monotonic()
            return
        kind = msg.get("type")
        if kind == "weights_info":
            if self.connected_at is None:
                self.connected_at = time.monotonic()
            self.gateway_version = int(msg["version"])
            self._maybe_request()
        elif kind == "weights":
            self._load(msg)
        elif kind == "error":
            log.warning("actor: the gateway rejected a message (%s)", msg.get("reason"))

    def _have(self) -> int:
        return max(self.slots.version, self.slots._ready_version)

    def _maybe_request(self) -> None:
        have = self._have()
        if self.gateway_version <= have:
            return
        version, at = self._requested
        # one request per announced version, again after a while if the answer was lost
        if version == self.gateway_version and time.monotonic() - at < 5.0:
            return
        if self.client.request_weights(have):
            self._requested = (self.gateway_version, time.monotonic())

    def _load(self, msg: dict) -> None:
        version = int(msg["version"])
        if version <= self._have():
            return
        if self.gate_timeout > 0 and not self._stop.is_set():
            self._idle.clear()
            self._idle.wait(self.gate_timeout)  # load in the idle time after the next tick
        try:
            self.slots.stage(PolicyWeights(version, msg["params"]))
            self.weights_received += 1
        except ValueError as e:
            self.weights_errors += 1
            log.error(
                "actor: weights version %d do not fit this robot's policy (%s); keeping the "
                "current ones. Start the actor with the learner's config.", version, e
            )  # fmt: skip

    def close(self, grace: float) -> dict:
        """Send what is queued, wait up to ``grace`` seconds for acks, stop the thread."""
        self._deadline = time.monotonic() + grace
        self._stop.set()
        self._thread.join(timeout=grace + 5.0)
        return self.outbox.stats()


class Actor:
    """Owns one robot's acting loop: robot, SafetySupervisor, policy copies, chunks and link."""

    def __init__(
        self,
        config,
        address: str,
        actor_id: str = "actor-0",
        robot_name: str | None = None,
        max_steps: int = 0,
    ) -> None:
        torch.set_num_threads(1)
        self.config, self.acfg = config, config.actor
        self.actor_id = actor_id
        self.max_steps = int(max_steps)
        self.directory = actor_directory(config, actor_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.robot = robots.make(robot_name or str(config.robot.name), config)
        self.rng = np.random.default_rng(int(config.seed) + zlib.crc32(actor_id.encode()))
        torch.manual_seed(int(config.seed) + zlib.crc32(actor_id.encode()))
        obs_space, act_space = self.robot.obs_space, self.robot.act_space
        self.act_space = act_space["action"]
        self.slots = PolicySlots(lambda: Agent(obs_space, act_space, config, device="cpu"))
        self.link = Link(config, address, actor_id, self.directory, self.slots)
        self.chunks = ChunkBuilder(int(self.acfg.chunk_length))
        self.period = float(self.acfg.period) or float(self.robot.control_period or 0.0)
        self.link.gate_timeout = 2.0 * self.period
        self.mode = str(self.acfg.policy_mode)
        self._stop = threading.Event()
        self.steps = 0  # executed actions
        self.records = 0  # steps recorded into chunks (executed ones + episode ends)
        self.episodes = 0
        self.tick_starts: deque = deque(maxlen=100000)  # perf_counter() at every tick
        self.tick_times: deque = deque(maxlen=100000)  # (start, seconds of work) per acting tick
        self.swap_ticks: list[int] = []  # tick indices at which weights were swapped in
        self._episode = {"return": 0.0, "length": 0}
        self._last_status = 0.0
        self.sup: SafetySupervisor | None = None
        self.console = None

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
            outbox = self.link.close(float(self.acfg.shutdown_grace))
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
        state = None
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
                action, state = agent.policy(obs, state, mode=self.mode)
            next_obs, executed, intervention = self.sup.step(action)
            if executed is None:  # stopped: nothing was sent; next_obs is obs marked last
                self._record(next_obs, None, False)
                self._end_episode()
                return
            self._record(obs, executed["action"], intervention)
            self.steps += 1
            obs = next_obs
            self._episode["return"] += float(obs["reward"])
            self._episode["length"] += 1
            self.tick_times.append((t0, time.perf_counter() - t0))
            self.link.tick_done()
            self._maybe_status()
            self._sleep_out(t0)

    def _record(self, obs: dict, action: np.ndarray | None, intervention: bool) -> None:
        if action is None:
            action = np.zeros(self.act_space.shape, self.act_space.dtype)
        step = {
            **obs,
            "action": np.asarray(action, self.act_space.dtype),
            "intervention": np.float32(intervention),
        }
        self.records += 1
        chunk = self.chunks.add(step)
        if chunk is not None:
            self.link.send_chunk(chunk)

    def _end_episode(self) -> None:
        self.episodes += 1
        self.link.report_episode(self._episode["return"], self._episode["length"])

    def _sleep_out(self, t0: float) -> None:
        if self.period > 0:
            remaining = self.period - (time.perf_counter() - t0)
            if remaining > 0:
                time.sleep(remaining)

    # ------------------------------------------------------------------ console and status
    def _start_console(self) -> None:
        bind = str(self.config.teleop.console)
        if not bind:
            return
        from daydream.teleop.console import ConsoleServer, resolve_key_dir

        key_dir = resolve_key_dir(self.config)
        self.console = ConsoleServer(
            self.sup,
            bind,
            key_dir / f"{self.config.teleop.server_key}.key_secret",
            key_dir / str(self.config.teleop.allowed_dir),
        ).start()
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
            "gateway_version": self.link.gateway_version,
            "connected": self.link.connected_at is not None,
            "outbox": outbox if outbox is not None else self.link.outbox.stats(),
            "dropped_queue": self.link.dropped,
            "safety_stopped": bool(self.sup is not None and self.sup.stopped),
        }

    def _maybe_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < float(self.acfg.status_every):
            return
        self._last_status = now
        # outbox.stats() reads a few ints owned by the network thread: fine for a display
        self._write_status(None)

    def _write_status(self, outbox: dict | None) -> None:
        status = self.status(outbox)
        tmp = self.directory / ".status.json.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.directory / "status.json")
        print(
            f"actor {self.actor_id}: step {status['steps']} | episodes {status['episodes']} | "
            f"weights v{status['policy_version']} | {status['tick_rate']:.1f} ticks/s | "
            f"p99 tick {status['tick_p99_ms'] or 0:.2f} ms | outbox {status['outbox']['pending']}",
            flush=True,
        )
