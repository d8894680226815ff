"""The learner: trains the Agent on batches from the replay and publishes its policy.

    robots ──chunks──▶ Gateway ──add_batch──▶ replay (a Ray actor, files in LOGDIR/replay)
                          ▲                        │ sample (samples-per-insert limiter)
                          │                        ▼
                   publish_weights ◀── Learner ◀── Prefetcher (thread, queue of batches)
                                          │
                                          └──▶ LOGDIR/checkpoint.pt, metrics.jsonl, tensorboard/

One ``Learner`` per run, the same in both runtimes:

- ``daydream learner`` / ``daydream run`` (:func:`start_learner`): the replay is a Ray
  actor, the hub is the gateway (a thread beside the learner, or a Ray actor with
  ``learner.gateway: ray``), and ``run()`` trains continuously from prefetched batches;
- ``daydream train`` (runtime/local.py): the replay is in this process, the hub is the
  in-process link to the robot actor, and ``train_owed()`` runs between two ticks.

Either way the learner owns the seeding, the resume (agent, optimisers, counters from
LOGDIR/checkpoint.pt), the counters (environment steps = records the replay received,
all robots together; episodes; updates; sampled steps), the episode bookkeeping (returns
reported by the robots, written to metrics.jsonl), publication and checkpoints.
Training is paced by the replay's samples-per-insert limiter (``train.ratio``); the
first ``train.pretrain`` updates after prefill are not counted against it.
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
from daydream.core.spaces import Space, record_spaces
from daydream.replay.remote import RemoteReplay, call, kill, ray_running, remote_class
from daydream.replay.service import replay_options
from daydream.runtime.logger import MetricsLogger

POLL_EVERY_S = 1.0  # replay statistics and robot reports
PACE_EVERY_S = 0.1  # how often the robots hear how far behind the ratio the learner is
PRETRAINING = 2**31 - 1  # "behind" while pretraining: simulated robots wait for it


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


class GatewayRunner:
    """Owns the gateway of ``daydream learner``: as a thread beside the learner, or as a Ray
    actor (``learner.gateway: ray``), behind one interface (the learner's hub)."""

    def __init__(self, config, replay, bind: str | None, spaces: dict[str, Space] | None):
        from daydream.wire.curve import key_directory
        from daydream.wire.gateway import Gateway
        from daydream.wire.transport import TransportOptions

        self.mode = config.learner.gateway
        kwargs = dict(
            curve=config.transport.curve,
            key_dir=key_directory(config.transport.key_dir, config.logdir),
            max_batch=config.gateway.max_batch,
            poll_ms=config.gateway.poll_ms,
            options=TransportOptions.from_block(config.transport),
            spaces=spaces if config.gateway.validate else None,
        )
        bind = bind or config.gateway.bind
        if self.mode == "thread":
            self.gateway = Gateway(replay, bind, **kwargs)
            self.endpoint = self.gateway.start()
        elif self.mode == "ray":
            self.gateway = remote_class(Gateway).remote(replay, bind, **kwargs)
            self.endpoint = call(self.gateway, "start")
        else:
            raise ValueError(f"learner.gateway must be thread or ray, got {self.mode!r}")

    def _call(self, name: str, *args):
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

    def stop(self) -> None:
        try:
            self._call("stop")
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
        self.logdir = Path(config.logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        obs_space, act_space = spaces or robots.spaces(config.robot.name, config)
        self.agent = Agent(obs_space, act_space, config)
        self.counters = {
            "env_steps": 0, "episodes": 0, "sessions": 0, "updates": 0, "published": -1,
            "sampled_steps": 0,
        }  # fmt: skip
        self.resumed = self._resume()
        self.counters["sessions"] += 1
        self.replay, self.hub = replay, hub
        self.replay_stats: dict = replay.stats()  # a Ray replay answers once it has reloaded
        self._count_env_steps()
        if self.resumed:
            replay.restore_sampled(self.counters["sampled_steps"])
        train = config.train
        self.batch = (train.batch_size, train.batch_length)
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
        self.should_pace = Every(PACE_EVERY_S)
        self._begun = self.agent.updates > 0  # pretrained, ratio counting (a resumed run: yes)
        self._updates_at_poll = self.agent.updates
        self.returns: deque = deque(maxlen=100)
        self.actor_versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._closed = False
        self._updates_at_log = (time.monotonic(), self.agent.updates)

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
        payload = checkpoint.load_for_resume(self.logdir, self.config)
        if payload is None:
            return False
        self.agent.load_state_dict(payload["agent"])
        self.counters.update(payload.get("counters", {}))
        self.counters["updates"] = self.agent.updates
        print(
            f"resumed from {self.logdir / checkpoint.FILENAME} at step "
            f"{self.counters['env_steps']}, update {self.agent.updates}, session "
            f"{self.counters['sessions'] + 1}",
            flush=True,
        )
        return True

    def save(self) -> Path:
        """Write agent, optimisers and counters atomically to LOGDIR/checkpoint.pt."""
        self.counters["updates"] = self.agent.updates
        path = checkpoint.save(
            self.logdir, checkpoint.agent_payload(self.agent, counters=dict(self.counters))
        )
        self.should_save.reset()
        return path

    # ------------------------------------------------------------------ weights
    def publish(self) -> int:
        """Hand the current policy weights to the robots; returns their version."""
        weights = self.agent.policy_weights()
        self.hub.publish_weights(weights.arrays, int(weights.version))
        self.counters["published"] = int(weights.version)
        return int(weights.version)

    # ------------------------------------------------------------------ training
    def _train(self, batch: dict[str, np.ndarray]) -> None:
        self.logger.accumulate(self.agent.train(batch))
        self.counters["updates"] = self.agent.updates

    def _begin(self) -> bool:
        """Once the replay holds ``train.prefill`` steps (replay.min_size): ``train.pretrain``
        updates, not counted against the ratio (simulated robots wait meanwhile), then the
        ratio counts from here on, as it does in one process. True once begun."""
        if self._begun:
            return True
        if not self.replay.ready(self.batch[1]):
            return False
        self.hub.set_pace(PRETRAINING)
        for _ in range(self.config.train.pretrain):
            batch = self.replay.sample(*self.batch, timeout=0.0, counted=False)
            if batch is None:
                break
            self._train(batch)
        self.replay.start_ratio()
        self._begun = True
        self.poll()
        self._send_pace()
        return True

    def behind(self) -> int:
        """Environment steps stored that the learner has not yet trained on at its ratio."""
        ratio = self.config.replay.samples_per_insert
        inserted = int(self.replay_stats.get("inserted_steps", 0))
        if ratio <= 0:
            return 0
        if not self._begun:
            return max(0, inserted - self.config.replay.min_size)
        sampled = int(self.replay_stats.get("sampled_steps", 0))
        sampled += (self.agent.updates - self._updates_at_poll) * self.batch[0] * self.batch[1]
        return max(0, int(inserted - sampled / ratio))

    def _send_pace(self) -> None:
        try:
            self.hub.set_pace(self.behind())
        except Exception as e:  # noqa: BLE001 - only pacing: never stop training for it
            print(f"learner: could not tell the robots its pace ({e})", flush=True)

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
        if self.agent.updates > 0:
            self.publish()  # resumed: robots get the trained policy at once
        try:
            while not self._stop.is_set():
                if self.should_poll():
                    self.poll()
                    if total and self.counters["env_steps"] >= total:
                        break
                if not self._begin():
                    self._stop.wait(0.1)
                    self._housekeeping()
                    continue
                batch = self.prefetcher.get(timeout=0.1)
                if batch is not None:
                    self._train(batch)
                self._housekeeping()
        except BaseException:
            self.close()
            raise
        self.prefetcher.stop()
        if close:
            self.close()
        return dict(self.counters)

    def _housekeeping(self) -> None:
        if self.should_pace():
            self._send_pace()
        newer = self.agent.updates > max(self.counters["published"], 0)
        if newer and self.should_publish():
            self.publish()
        if self.should_save():
            self.save()
        if self.should_log():
            self._log()

    # ------------------------------------------------------------------ reports and metrics
    def poll(self) -> None:
        try:
            self.replay_stats = self.replay.stats()
            self._updates_at_poll = self.agent.updates
            self._count_env_steps()
        except Exception as e:  # noqa: BLE001 - keep training on what is prefetched
            print(f"learner: the replay did not answer ({e})", flush=True)
        for report in self.hub.pop_reports():
            if report["policy_version"] is not None:
                self.actor_versions[report["actor"]] = report["policy_version"]
            for ret, length in report["episodes"]:
                self.counters["episodes"] += 1
                self.returns.append(ret)
                self.logger.write(
                    self.counters["env_steps"],
                    {"episode_return": ret, "episode_length": length,
                     "episodes": self.counters["episodes"]},
                )  # fmt: skip

    def _log(self) -> None:
        now = time.monotonic()
        t0, u0 = self._updates_at_log
        updates_per_s = (self.agent.updates - u0) / max(now - t0, 1e-9)
        self._updates_at_log = (now, self.agent.updates)
        steps = self.counters["env_steps"]
        means = self.logger.flush_means()
        hub = self.hub.stats()
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
            },
        )

    def close(self) -> None:
        """Stop sampling, checkpoint, stop the hub, release the replay. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.prefetcher.stop()
        try:
            self.poll()
            self._log()  # the last figures, also for runs shorter than learner.log_every_s
            self.save()
        finally:
            try:
                self.hub.stop()
            finally:
                self.logger.close()
                try:
                    self.replay.close()
                except Exception:  # noqa: BLE001 - Ray may already be shutting down
                    pass

    def status(self) -> dict[str, Any]:
        return {**self.counters, "endpoint": self.endpoint, "actors": dict(self.actor_versions)}


def start_learner(config, bind: str | None = None, stream=None) -> Learner:
    """The learner of ``daydream learner`` / ``daydream run``: the replay as a Ray actor (it
    reloads its files), the gateway robots connect to, and the Learner. Ray must be running."""
    if not ray_running():
        raise RuntimeError("the learner needs Ray: start it first (daydream run does)")
    spaces = robots.spaces(config.robot.name, config)
    replay = RemoteReplay.start(**replay_options(config.replay, config.logdir, config.seed))
    try:
        gateway = GatewayRunner(config, replay, bind, record_spaces(*spaces))
    except BaseException:
        replay.close()
        raise
    try:
        return Learner(config, replay, gateway, spaces, stream)
    except BaseException:
        gateway.stop()
        replay.close()
        raise
