"""The learner: trains the Agent on batches from the replay and publishes its policy.

    robots ──chunks──▶ Gateway ──add_batch──▶ replay (a Ray actor, files in LOGDIR/replay)
                          ▲                        │ sample (samples-per-insert limiter)
                          │                        ▼
                   publish_weights ◀── Learner ◀── Prefetcher (thread, queue of batches)
                                          │
                                          └──▶ LOGDIR/checkpoint.pt, metrics.jsonl, tensorboard/

One ``Learner`` per run, the same in both runtimes:

- ``daydream learner`` / ``daydream run`` (:func:`start_learner`): the replay is a Ray
  actor, the hub is the gateway (in the replay actor's process, a thread beside the learner,
  or a Ray actor: ``learner.gateway``, see ``GatewayRunner``), and ``run()`` trains
  continuously from prefetched batches;
- ``daydream train`` (runtime/local.py): the replay is in this process, the hub is the
  in-process link to the robot actor, and ``train_owed()`` runs between two ticks.

Either way the learner owns the seeding, the resume (agent, optimisers, counters from
LOGDIR/checkpoint.pt), the counters (environment steps = records the replay received,
all robots together; episodes; updates; sampled steps), the episode bookkeeping (returns
reported by the robots, written to metrics.jsonl), publication and checkpoints.
Training is paced by the replay's samples-per-insert limiter (``train.ratio``); the
first ``train.pretrain`` updates after prefill are not counted against it.

One bad value never reaches the weights (``UpdateGuard``): a batch holding NaN or infinity
is not trained on, and an update whose losses or gradient norms come out non-finite is
undone (the agent's whole state is copied before each update: ~0.1-0.3% of an update's
time on a CPU, see ``UpdateGuard``). Either is counted (``nonfinite_updates`` in
metrics.jsonl); after ``learner.max_nonfinite_updates`` in a row the learner stops with
``NonFiniteTraining`` (exit status ``EXIT_NONFINITE``) without writing a checkpoint, and
no checkpoint is ever written with non-finite tensors. A checkpoint that cannot be read
falls back to the previous one (``agent/checkpoint.py``); with neither, ``EXIT_CHECKPOINT``.
The service unit does not restart on either status: a person must look.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

import robots
from daydream.agent import checkpoint
from daydream.agent.agent import Agent
from daydream.core.clocks import Every
from daydream.core.heap import keep_freed_memory, resident_mb
from daydream.core.spaces import Space, record_spaces
from daydream.replay.remote import (
    RemoteReplay,
    ReplayGone,
    call,
    kill,
    placement,
    ray_running,
    remote_class,
)
from daydream.replay.service import replay_options
from daydream.runtime.logger import MetricsLogger
from daydream.runtime.pace import PaceThread, RatioPace

POLL_EVERY_S = 1.0  # replay statistics and robot reports
# The replay gone: how long the loop waits for a stop that the same signal brought (a process
# group's Ctrl-C or SIGTERM) before it calls the replay's death a failure.
STOP_AFTER_REPLAY_GONE_S = 2.0

# Exit statuses of `daydream learner` / `daydream run` that a service manager must not
# restart on (deploy/systemd/daydream-learner.service: RestartPreventExitStatus); 2 is a
# config or argument error (cli/common.py), 3 the actor's latched safety stop.
EXIT_NONFINITE = 4  # learner.max_nonfinite_updates updates in a row were non-finite
EXIT_CHECKPOINT = 5  # neither checkpoint.pt nor checkpoint.prev.pt can be loaded


class NonFiniteTraining(RuntimeError):
    """Too many updates in a row were non-finite; the learner stops without a checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Prefetcher:
    """Owns a background thread that keeps up to ``depth`` sampled batches ready.

    Each sample call waits at most ``timeout`` seconds for the replay's limiter (min_size,
    samples-per-insert); while throttled the queue simply stays empty and ``get`` returns
    None, so the learner goes on publishing, logging and checkpointing.
    """

    def __init__(self, replay, batch_size: int, length: int, depth: int, timeout: float):
        self.replay, self.batch_size, self.length = replay, int(batch_size), int(length)
        self.timeout = float(timeout)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self.waited = 0.0  # seconds the learner spent waiting for a batch
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daydream-prefetch", daemon=True)

    def start(self) -> Prefetcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.replay.sample(self.batch_size, self.length, timeout=self.timeout)
            except Exception as e:  # noqa: BLE001 - the replay actor died: say so, keep trying
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    print(f"learner: sampling from the replay failed ({e}); retrying", flush=True)
                self._stop.wait(1.0)
                continue
            if batch is None:
                continue
            while not self._stop.is_set():
                try:
                    self.queue.put(batch, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def get(self, timeout: float) -> dict[str, np.ndarray] | None:
        t0 = time.monotonic()
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            self.waited += time.monotonic() - t0

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 5.0)


def nonfinite_batch(batch: dict[str, np.ndarray]) -> str:
    """'' or what in a (B, T, ...) batch is NaN or infinite (float arrays only)."""
    for key, arr in batch.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return f"batch key {key!r} holds NaN or infinite values"
    return ""


def nonfinite_metrics(metrics: dict[str, float]) -> str:
    """'' or the losses and gradient norms of an update that are not finite."""
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    return f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} not finite" if bad else ""


class UpdateGuard:
    """Owns the defence of the weights against non-finite updates.

    ``Agent.train`` steps its optimisers inside, so a NaN loss would reach the weights and
    the optimiser moments before anyone could look. The guard therefore (1) does not train
    on a batch holding NaN or infinity, and (2) copies the agent's whole state (parameters,
    buffers, optimiser moments, counters: ``checkpoint.Snapshot``) before each update and
    loads it back if the update's losses or gradient norms come out non-finite: as if the
    update had not happened. (A finite gradient norm means every gradient is finite, so the
    metrics are the check; no pass over the parameters is needed.)

    Cost, measured on a shared 2-core CPU machine (one copy vs one ``agent.train``):
    pendulum (0.66 M parameters, 7 MiB of state): 14 ms per copy, 0.1% of an update;
    sim_ur5_pick (DayDreamer sizes, 27 M parameters, 296 MiB): 190 ms, 0.3% of an update;
    a restore (a load_state_dict) 50 ms. On a GPU the copy is a device-to-device copy of the
    same bytes and the copy stays in device memory (not measured here: no GPU). Reloading
    the last checkpoint instead would lose up to ``learner.checkpoint_every_s`` of training.
    """

    def __init__(self, agent, max_in_a_row: int) -> None:
        self.agent = agent
        self.max_in_a_row = int(max_in_a_row)
        self.snapshot = checkpoint.Snapshot(agent)
        self.in_a_row = 0
        self.skipped = 0

    def train(self, batch: dict[str, np.ndarray]) -> dict[str, float] | None:
        """The update's metrics, or None when it was skipped or undone (counted)."""
        problem = nonfinite_batch(batch)
        if not problem:
            self.snapshot.take()
            metrics = self.agent.train(batch)
            problem = nonfinite_metrics(metrics)
            if not problem:
                self.in_a_row = 0
                return metrics
            self.snapshot.restore()
        self.skipped += 1
        self.in_a_row += 1
        if self.skipped == 1 or self.skipped % 100 == 0 or self.in_a_row == self.max_in_a_row // 2:
            print(
                f"learner: skipped a non-finite update ({problem}); {self.in_a_row} in a row, "
                f"{self.skipped} in all; the weights are as before it",
                flush=True,
            )
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise NonFiniteTraining(
                f"{self.in_a_row} updates in a row were non-finite, learner.max_nonfinite_updates "
                f"(last: {problem}); the replay may hold NaN data stored before values were "
                f"checked, or training diverged (learning rate?)"
            )
        return None


GATEWAY_MODES = ("replay", "thread", "ray")  # learner.gateway


class GatewayRunner:
    """Owns the gateway of ``daydream learner`` behind one interface (the learner's hub), where
    ``learner.gateway`` puts it:

        replay  in the replay actor's process (``RemoteReplay.host``): chunks go from the socket
                straight into the ReplayService, never through Ray's object store (the default)
        thread  a thread beside the learner; every batch travels to the replay actor through Ray
        ray     a Ray actor of its own (on ``learner.gateway_resource``); batches likewise

    With ``replay`` and ``ray`` the learner's calls are small Ray calls: its pace every 50 ms,
    reports, stats, the fleet console's robots and thumbnails, stop; the weights travel through
    Ray once per publication (``learner.publish_every_s``).
    """

    def __init__(self, mode: str, replay, bind: str, *, resource: str = "", **options: Any):
        from daydream.wire.gateway import Gateway

        self.mode, self.replay = mode, replay
        if mode == "replay":
            if not hasattr(replay, "host"):
                raise ValueError("learner.gateway: replay needs the replay as a Ray actor")
            self.endpoint = replay.host(Gateway, bind, **options)
        elif mode == "thread":
            self.gateway = Gateway(replay, bind, **options)
            self.endpoint = self.gateway.start()
        elif mode == "ray":
            actor = remote_class(Gateway, **placement(resource))
            self.gateway = actor.remote(replay, bind, **options)
            self.endpoint = call(self.gateway, "start")
        else:
            raise ValueError(
                f"learner.gateway must be one of {', '.join(GATEWAY_MODES)}, got {mode!r}"
            )

    @classmethod
    def from_config(
        cls, config, replay, bind: str | None, spaces: dict[str, Space] | None
    ) -> GatewayRunner:
        """The gateway of the ``gateway``, ``transport`` and ``learner`` blocks (``bind``
        overrides gateway.bind)."""
        from daydream.wire.curve import key_directory
        from daydream.wire.transport import TransportOptions

        return cls(
            config.learner.gateway,
            replay,
            bind or config.gateway.bind,
            resource=config.learner.gateway_resource,
            curve=config.transport.curve,
            key_dir=key_directory(config.transport.key_dir, config.logdir),
            max_batch=config.gateway.max_batch,
            poll_ms=config.gateway.poll_ms,
            options=TransportOptions.from_block(config.transport),
            spaces=spaces if config.gateway.validate else None,
        )

    def _call(self, name: str, *args):
        if self.mode == "replay":
            return self.replay.guest(name, *args)
        if self.mode == "thread":
            return getattr(self.gateway, name)(*args)
        return call(self.gateway, name, *args)

    def publish_weights(self, arrays: dict[str, np.ndarray], version: int) -> None:
        self._call("publish_weights", arrays, version)

    def pop_reports(self) -> list[dict]:
        return self._call("pop_reports")

    def stats(self) -> dict:
        return self._call("stats")

    def set_pace(self, behind: int) -> None:
        self._call("set_pace", behind)

    def robots(self) -> list[dict]:
        """Every robot the gateway heard from (wire/fleet.py), for the fleet console."""
        return self._call("robots")

    def thumbnail(self, robot_id: str) -> tuple[bytes, str] | None:
        return self._call("thumbnail", robot_id)

    def stop(self) -> None:
        """Stop serving (the last acks go out first); the replay itself stays."""
        try:
            self._call("stop")
        except ReplayGone:
            print("learner: the replay actor, and the gateway in it, was already gone at the "
                  "stop (stopped with the learner's process group?)", flush=True)  # fmt: skip
        finally:
            if self.mode == "ray":
                kill(self.gateway)


class Learner:
    """Owns the learner side of a run: the agent, its counters, resume and checkpoints, training
    from the replay, weight publication to the hub, and metrics."""

    def __init__(
        self,
        config,
        replay,
        hub,
        spaces: tuple[dict[str, Space], dict[str, Space]] | None = None,
        stream=None,
        publish_every_s: float | None = None,
    ) -> None:
        self.config = config
        seed_everything(config.seed)
        if config.train.torch_threads:
            torch.set_num_threads(config.train.torch_threads)
        if config.train.keep_freed_memory:
            keep_freed_memory()  # this whole process: the learner's, or a local run's
        self.logdir = Path(config.logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        obs_space, act_space = spaces or robots.spaces(config.robot.name, config)
        self.agent = Agent(obs_space, act_space, config)
        self._compile_pending = bool(config.train.compile)  # run() compiles while robots prefill
        if config.train.compile:
            parts = self.agent.compile_update()
            print(f"learner: train.compile: {parts} parts of the update compile once (tens of "
                  f"seconds on a CPU), mode {self.agent.compile_mode}", flush=True)  # fmt: skip
        self.counters = {
            "env_steps": 0, "episodes": 0, "sessions": 0, "updates": 0, "published": -1,
            "sampled_steps": 0, "nonfinite_updates": 0,
        }  # fmt: skip
        self.resumed = self._resume()
        self.counters["sessions"] += 1
        self.guard = UpdateGuard(self.agent, config.learner.max_nonfinite_updates)
        self.failure: BaseException | None = None  # why run() stopped, if not asked to
        self.replay, self.hub = replay, hub
        self.replay_stats: dict = replay.stats()  # a Ray replay answers once it has reloaded
        self._print_replay_warnings()
        self._count_env_steps()
        train = config.train
        self.batch = (train.batch_size, train.batch_length)
        self.pace = RatioPace(
            config.replay.samples_per_insert, config.replay.min_size, self.batch[0] * self.batch[1]
        )
        if self.resumed:
            replay.restore_sampled(self.counters["sampled_steps"])
            self.pace.start(int(replay.stats().get("sampled_steps", 0)), self.agent.updates)
        self.pace_thread: PaceThread | None = None
        self.prefetcher = Prefetcher(
            replay, *self.batch, config.learner.prefetch, config.learner.sample_timeout_s
        )
        self.logger = MetricsLogger(
            self.logdir, train.steps, self.counters["env_steps"], stream=stream
        )
        every = config.learner
        publish = every.publish_every_s if publish_every_s is None else publish_every_s
        self.should_publish = Every(publish)
        self.should_save = Every(every.checkpoint_every_s, first=False)
        self.should_log = Every(every.log_every_s, first=False)
        self.should_poll = Every(POLL_EVERY_S)
        self._begun = self.agent.updates > 0  # pretrained, ratio counting (a resumed run: yes)
        self.returns: deque = deque(maxlen=100)
        self.actor_versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._closed = False
        self._updates_at_log = (time.monotonic(), self.agent.updates)
        self._rejected_at_log: dict[str, int] = {}
        # what the fleet console shows (console_stats, read from its thread)
        self.curve: deque = deque(maxlen=config.console.curve_points)  # (env step, return)
        self._shown: dict[str, float] = {}  # figures of the last log line
        self._shown_lock = threading.Lock()

    @property
    def endpoint(self) -> str | None:
        return getattr(self.hub, "endpoint", None)

    @property
    def done(self) -> bool:
        """Trained for ``train.steps`` environment steps (0: never done)."""
        total = self.config.train.steps
        return bool(total) and self.counters["env_steps"] >= total

    # ------------------------------------------------------------------ resume / save
    def _resume(self) -> bool:
        """Load the newest good checkpoint (checkpoint.CheckpointError if none loads)."""
        found = checkpoint.load_for_resume(self.logdir, self.config)
        if found is None:
            return False
        payload, path = found
        self.agent.load_state_dict(payload["agent"])
        self.counters.update(payload.get("counters", {}))
        self.counters["updates"] = self.agent.updates
        print(
            f"resumed from {path} at step {self.counters['env_steps']}, update "
            f"{self.agent.updates}, session {self.counters['sessions'] + 1}",
            flush=True,
        )
        return True

    def save(self) -> Path | None:
        """Write agent, optimisers and counters atomically to LOGDIR/checkpoint.pt (the one it
        replaces becomes checkpoint.prev.pt). Never a non-finite one: then, as when the disk
        refuses the write, the last good checkpoint stays, it is said, and None returned."""
        self.counters["updates"] = self.agent.updates
        self.should_save.reset()
        try:
            return checkpoint.save(
                self.logdir, checkpoint.agent_payload(self.agent, counters=dict(self.counters))
            )
        except (checkpoint.NonFiniteError, OSError) as e:
            print(f"learner: {e}; the last good checkpoint stays in {self.logdir}", flush=True)
            return None

    # ------------------------------------------------------------------ weights
    def publish(self) -> int:
        """Hand the current policy weights to the robots; returns their version."""
        weights = self.agent.policy_weights()
        self.hub.publish_weights(weights.arrays, int(weights.version))
        self.counters["published"] = int(weights.version)
        return int(weights.version)

    # ------------------------------------------------------------------ training
    def _train(self, batch: dict[str, np.ndarray]) -> None:
        try:
            metrics = self.guard.train(batch)  # None: skipped or undone (non-finite)
        except NonFiniteTraining as e:
            self.failure = e  # close() keeps the last good checkpoint
            raise
        if metrics is None:
            self.counters["nonfinite_updates"] += 1
        else:
            self.logger.accumulate(metrics)
        self.counters["updates"] = self.agent.updates

    def _begin(self) -> bool:
        """Once the replay holds ``train.prefill`` steps (replay.min_size): ``train.pretrain``
        updates, not counted against the ratio (simulated robots wait meanwhile), then the
        ratio counts from here on, as it does in one process. True once begun."""
        if self._begun:
            return True
        if not self.replay.ready(self.batch[1]):
            return False
        self.pace.pretraining = True
        self._tell_pace()
        total, t0 = self.config.train.pretrain, time.monotonic()
        should_say = Every(self.config.learner.log_every_s, first=False)
        print(f"learner: prefill done; {total} updates before the training ratio counts "
              "(simulated robots wait meanwhile)", flush=True)  # fmt: skip
        for done in range(total):
            batch = self.replay.sample(*self.batch, timeout=0.0, counted=False)
            if batch is None:
                break
            self._train(batch)
            if should_say():
                elapsed = time.monotonic() - t0
                print(f"learner: pretraining {done + 1}/{total} updates, {elapsed:.0f} s "
                      f"({(done + 1) / elapsed:.2f} updates/s)", flush=True)  # fmt: skip
        self.replay.start_ratio()
        self._begun = True
        self.poll()
        self.pace.start(int(self.replay_stats.get("sampled_steps", 0)), self.agent.updates)
        self._tell_pace()
        return True

    def behind(self) -> int:
        """Environment steps stored that the learner has not yet trained on at its ratio (as of
        the last poll; the robots hear a fresher figure from the pace thread)."""
        return self.pace.behind(int(self.replay_stats.get("inserted_steps", 0)), self.agent.updates)

    def _tell_pace(self) -> None:
        if self.pace_thread is not None:
            self.pace_thread.tell_now()

    def _start_pace(self) -> None:
        """Tell the robots how far behind the learner is, every PACE_EVERY_S, from a thread
        (``run``: the networked runtime, where simulated robots may be far faster than it)."""
        self.pace_thread = PaceThread(
            self.pace,
            inserted=lambda: int(self.replay.stats().get("inserted_steps", 0)),
            updates=lambda: self.agent.updates,
            tell=self.hub.set_pace,
        ).start()

    def _count_env_steps(self) -> None:
        self.counters["env_steps"] = max(
            self.counters["env_steps"], int(self.replay_stats.get("inserted_steps", 0))
        )
        self.counters["sampled_steps"] = max(
            self.counters["sampled_steps"], int(self.replay_stats.get("sampled_steps", 0))
        )

    def train_owed(self) -> int:
        """Single process: run the updates the ratio allows for the data stored so far (between
        two ticks of the robot actor). Returns how many ran."""
        self.poll()
        before = self.agent.updates
        if self._begin():
            while (batch := self.replay.sample(*self.batch, timeout=0.0)) is not None:
                self._train(batch)
        if self.agent.updates > before:
            self.replay_stats = self.replay.stats()
            self._count_env_steps()
        self._housekeeping()
        return self.agent.updates - before

    def stop(self) -> None:
        """Ask ``run`` to return (thread-safe; signal handlers call it)."""
        self._stop.set()

    def run(self, total_steps: int | None = None, close: bool = True) -> dict:
        """Train until the replay received ``total_steps`` (default train.steps) steps or stop().

        With ``close`` (default) the learner checkpoints and shuts down on the way out;
        without, the gateway keeps serving (acks for robots that are stopping) until close().
        """
        total = self.config.train.steps if total_steps is None else int(total_steps)
        self.prefetcher.start()
        self._start_pace()
        if self.agent.updates > 0:
            self.publish()  # resumed: robots get the trained policy at once
        try:
            while not self._stop.is_set():
                if self.should_poll():
                    self.poll()
                    if total and self.counters["env_steps"] >= total:
                        break
                if not self._begin():
                    if self._compile_pending:
                        self._compile_while_prefilling()
                        continue
                    self._stop.wait(0.1)
                    self._housekeeping()
                    continue
                batch = self.prefetcher.get(timeout=0.1)
                if batch is not None:
                    self._train(batch)
                self._housekeeping()
        except ReplayGone:
            # Ctrl-C or a SIGTERM to the process group reaches the replay actor's process too:
            # the loop may find it gone a moment before this process's handler calls stop().
            if not self._stop.wait(STOP_AFTER_REPLAY_GONE_S):
                self.close()
                raise
            print("learner: stopping; the replay actor stopped first (the same signal)",
                  flush=True)  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.prefetcher.stop()
        if self.pace_thread is not None:
            self.pace_thread.stop()
        if close:
            self.close()
        return dict(self.counters)

    def _compile_while_prefilling(self) -> None:
        """``train.compile``: the update compiles on a zero batch while the robots still fill
        the replay (``Agent.warm_up``, undone), so the first real updates do not wait for it."""
        self._compile_pending = False
        print("learner: compiling the update (train.compile) while the robots fill the replay",
              flush=True)  # fmt: skip
        t0 = time.monotonic()
        self.agent.warm_up(*self.batch)
        print(f"learner: compiled in {time.monotonic() - t0:.0f} s", flush=True)

    def _housekeeping(self) -> None:
        newer = self.agent.updates > max(self.counters["published"], 0)
        if newer and self.should_publish():
            self.publish()
        if self.should_save():
            self.save()
        if self.should_log():
            self._log()

    # ------------------------------------------------------------------ reports and metrics
    def _print_replay_warnings(self) -> None:
        """What the replay found wrong with its files (its own log stays in its process)."""
        for message in self.replay.pop_warnings():
            print(f"replay: {message}", flush=True)

    def poll(self) -> None:
        try:
            self.replay_stats = self.replay.stats()
            self._count_env_steps()
            self._print_replay_warnings()
        except Exception as e:  # noqa: BLE001 - keep training on what is prefetched
            print(f"learner: the replay did not answer ({e})", flush=True)
        for report in self.hub.pop_reports():
            if report["policy_version"] is not None:
                self.actor_versions[report["actor"]] = report["policy_version"]
            for ret, length, info in report["episodes"]:
                self.counters["episodes"] += 1
                self.returns.append(ret)
                with self._shown_lock:
                    self.curve.append((self.counters["env_steps"], ret))
                self.logger.write(
                    self.counters["env_steps"],
                    {**info, "episode_return": ret, "episode_length": length,
                     "episodes": self.counters["episodes"]},
                )  # fmt: skip

    def _log(self) -> None:
        now = time.monotonic()
        t0, u0 = self._updates_at_log
        updates_per_s = (self.agent.updates - u0) / max(now - t0, 1e-9)
        self._updates_at_log = (now, self.agent.updates)
        steps = self.counters["env_steps"]
        means = self.logger.flush_means()
        with self._shown_lock:
            self._shown = {**means, "updates_per_s": updates_per_s}
        hub = self.hub.stats()
        rejected = self._rejections(hub)
        versions = list(self.actor_versions.values())
        figures = {
            **means,
            "updates": self.agent.updates,
            "updates_per_s": updates_per_s,
            "replay_steps": self.replay_stats.get("steps", 0),
            "replay_throttled": self.replay_stats.get("throttled", 0),
            "weights_version": self.counters["published"],
            "actors": len(self.actor_versions),
            "actor_min_version": min(versions) if versions else -1,
            "chunks_added": hub.get("chunks_added", 0),
            "chunks_duplicate": hub.get("chunks_duplicate", 0),
            "prefetch_wait_s": self.prefetcher.waited,
            "return_mean": float(np.mean(self.returns)) if self.returns else None,
            "nonfinite_updates": self.counters["nonfinite_updates"],
            "learner_resident_mb": resident_mb(),  # with train.keep_freed_memory: its plateau
            **rejected,
        }
        self.logger.write(steps, figures)
        self.logger.progress(
            steps,
            {
                "replay": float(figures["replay_steps"]),
                "updates": float(self.agent.updates),
                "upd/s": updates_per_s,
                "wm_loss": means.get("wm/loss"),
                "actor_loss": means.get("actor/loss"),
                "critic_loss": means.get("critic/loss"),
                "return": figures["return_mean"],
                "weights": float(self.counters["published"]),
                "actors": float(len(self.actor_versions)),
                "rejected": float(sum(rejected.values())) if rejected else None,
                "nonfinite": float(self.counters["nonfinite_updates"]) or None,
            },
        )

    def _rejections(self, hub: dict) -> dict[str, int]:
        """The gateway's refusals (``rejected_<reason>``, ``nacks_sent``) that are not zero;
        a line naming the reasons that grew since the last log, and the newest refusal."""
        rejected = {
            k: int(v) for k, v in hub.items()
            if (k.startswith("rejected_") or k == "nacks_sent") and isinstance(v, int) and v
        }  # fmt: skip
        grew = {
            k[len("rejected_") :]: v - self._rejected_at_log.get(k, 0)
            for k, v in rejected.items()
            if k.startswith("rejected_") and v > self._rejected_at_log.get(k, 0)
        }
        if grew:
            reasons = ", ".join(f"{k} {n}" for k, n in sorted(grew.items()))
            last = hub.get("last_refusal") or ""
            print(
                f"gateway: refused {sum(grew.values())} messages since the last report "
                f"({reasons}){f'; newest: {last}' if last else ''}",
                flush=True,
            )
        self._rejected_at_log = rejected
        return rejected

    def close(self) -> None:
        """Stop sampling, checkpoint, stop the hub, release the replay. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.prefetcher.stop()
        if self.pace_thread is not None:
            self.pace_thread.stop()
        try:
            try:
                self.poll()
                self._log()  # the last figures, also for runs shorter than learner.log_every_s
            except ReplayGone:  # stopped with this process group: the checkpoint still matters
                print("learner: the replay actor was already gone; its last reports are not "
                      "logged, the checkpoint is written", flush=True)  # fmt: skip
            if self.failure is None:
                self.save()
            else:
                print(
                    f"learner: not writing a checkpoint after {self.failure.__class__.__name__}; "
                    f"{self.logdir / checkpoint.FILENAME} stays the last good one",
                    flush=True,
                )
        finally:
            try:
                self.hub.stop()
            finally:
                self.logger.close()
                try:
                    self.replay.close()
                except Exception:  # noqa: BLE001 - Ray may already be shutting down
                    pass

    def console_stats(self) -> dict[str, Any]:
        """What the fleet console shows of the learner: counters, updates/s, replay size, the
        samples-per-insert state, losses and the learning curve (any thread may call it)."""
        with self._shown_lock:
            shown, curve = dict(self._shown), list(self.curve)
        stats = self.replay_stats
        inserted, sampled = int(stats.get("inserted_steps", 0)), int(stats.get("sampled_steps", 0))
        return {
            "env_steps": self.counters["env_steps"], "episodes": self.counters["episodes"],
            "updates": self.agent.updates, "updates_per_s": shown.get("updates_per_s"),
            "weights_version": self.counters["published"],
            "replay_steps": int(stats.get("steps", 0)),
            "return_mean": float(np.mean([r for _, r in curve[-100:]])) if curve else None,
            "losses": {"world model": shown.get("wm/loss"), "actor": shown.get("actor/loss"),
                       "critic": shown.get("critic/loss")},
            "spi": {  # samples per insert: replayed steps (B x L) per stored step
                "target": float(self.config.replay.samples_per_insert),
                "actual": sampled / inserted if inserted else None,
                "phase": "training" if self._begun else "prefill",
                "prefill": int(self.config.replay.min_size), "behind": self.behind(),
                "throttled": int(stats.get("throttled", 0)),
            },
            "curve": curve,
        }  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {**self.counters, "endpoint": self.endpoint, "actors": dict(self.actor_versions)}


def start_learner(
    config, bind: str | None = None, stream=None, rebind: dict[str, str] | None = None
) -> Learner:
    """The learner of ``daydream learner`` / ``daydream run``: the replay as a Ray actor (it
    reloads its files), the gateway robots connect to, and the Learner. Ray must be running.
    ``rebind`` gives streams to new robot keys (stream -> Z85 public key) before any chunk
    arrives."""
    if not ray_running():
        raise RuntimeError("the learner needs Ray: start it first (daydream run does)")
    spaces = robots.spaces(config.robot.name, config)
    replay = RemoteReplay.start(
        config.learner.replay_resource, **replay_options(config.replay, config.logdir, config.seed)
    )
    try:
        for stream, key in (rebind or {}).items():
            before = replay.rebind(stream, key)
            print(f"stream {stream!r} now belongs to robot key {key[:8]}... (was "
                  f"{before[:8] + '...' if before else 'nobody'})", flush=True)  # fmt: skip
        gateway = GatewayRunner.from_config(config, replay, bind, record_spaces(*spaces))
    except BaseException:
        replay.close()
        raise
    try:
        return Learner(config, replay, gateway, spaces, stream)
    except BaseException:
        gateway.stop()
        replay.close()
        raise
