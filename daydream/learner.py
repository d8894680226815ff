"""The learner: trains the Agent on batches from the Ray replay and publishes its policy.

    robots ──chunks──▶ Gateway ──add_batch──▶ ReplayActor (Ray, files in LOGDIR/replay)
                          ▲                        │ sample (samples-per-insert limiter)
                          │                        ▼
                   publish_weights ◀── Learner ◀── Prefetcher (thread, queue of batches)
                                          │
                                          └──▶ LOGDIR/checkpoint.pt, metrics.jsonl, tensorboard/

One ``Learner`` per run. It builds the Agent (on CUDA when ``device: auto`` finds one),
the replay actor (which reloads its files), the gateway (a thread beside the learner, or
a Ray actor with ``learner.gateway: ray``), and resumes agent, optimisers and counters
from LOGDIR/checkpoint.pt when there is one. ``run()`` trains until the replay has
received ``train.steps`` environment steps (all actors together) or ``stop()`` is called.

Ray must be initialised by the caller (``daydream learner`` / ``daydream run``).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

import robots
from daydream import checkpoint
from daydream.agent import Agent
from daydream.logger import MetricsLogger
from daydream.replay_actor import ReplayActor, replay_kwargs
from robots.base import Space


def robot_spaces(config, name: str | None = None) -> tuple[dict[str, Space], dict[str, Space]]:
    """Observation and action spaces of the configured robot, without connecting to it."""
    robot = robots.make(name or str(config.robot.name), config)
    try:
        return dict(robot.obs_space), dict(robot.act_space)
    finally:
        try:
            robot.disconnect()  # drivers' disconnect is idempotent; frees simulated cells
        except Exception:  # noqa: BLE001 - only the spaces were wanted
            pass


def step_spaces_of(obs_space: dict[str, Space], act_space: dict[str, Space]) -> dict[str, Space]:
    """The keys of one stored step: observation, executed action, intervention flag."""
    return {**obs_space, "action": act_space["action"], "intervention": Space((), np.float32)}


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
                batch = ray.get(
                    self.replay.sample.remote(self.batch_size, self.length, timeout=self.timeout)
                )
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
        self._thread.join(timeout=self.timeout + 5.0)


class _GatewayHandle:
    """The gateway behind one interface whether it runs as a thread or as a Ray actor."""

    def __init__(self, config, replay, logdir: Path, bind: str | None, spaces):
        from daydream.gateway import Gateway, make_gateway_actor
        from daydream.transport import TransportOptions, key_dir_from_config

        self.mode = str(config.learner.gateway)
        kwargs = dict(
            curve=bool(config.transport.curve),
            key_dir=key_dir_from_config(config, logdir),
            max_batch=int(config.gateway.max_batch),
            poll_ms=int(config.gateway.poll_ms),
            options=TransportOptions.from_config(config),
            spaces=spaces if bool(config.gateway.validate) else None,
        )
        bind = bind or str(config.gateway.bind)
        if self.mode == "thread":
            self.gateway = Gateway(replay, bind, **kwargs)
            self.endpoint = self.gateway.start()
        elif self.mode == "ray":
            self.gateway = make_gateway_actor().remote(replay, bind, **kwargs)
            self.endpoint = ray.get(self.gateway.start.remote())
        else:
            raise ValueError(f"learner.gateway must be thread or ray, got {self.mode!r}")

    def _call(self, name: str, *args):
        if self.mode == "thread":
            return getattr(self.gateway, name)(*args)
        return ray.get(getattr(self.gateway, name).remote(*args))

    def publish_weights(self, arrays: dict[str, np.ndarray], version: int) -> None:
        self._call("publish_weights", arrays, version)

    def pop_reports(self) -> list[dict]:
        return self._call("pop_reports")

    def stats(self) -> dict:
        return self._call("stats")

    def stop(self) -> None:
        try:
            self._call("stop")
        finally:
            if self.mode == "ray":
                ray.kill(self.gateway)


class Learner:
    """Owns the learner side of a run: the agent, replay actor, gateway, prefetcher, weight
    publication, checkpoints and metrics."""

    def __init__(self, config, bind: str | None = None, stream=None) -> None:
        from daydream.train import seed_everything

        if not ray.is_initialized():
            raise RuntimeError("the learner needs Ray: call ray.init() first (daydream run does)")
        self.config = config
        seed_everything(int(config.seed))
        if config.train.torch_threads:
            torch.set_num_threads(int(config.train.torch_threads))
        self.logdir = Path(config.logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.lcfg = config.learner
        obs_space, act_space = robot_spaces(config)
        self.spaces = step_spaces_of(obs_space, act_space)
        self.agent = Agent(obs_space, act_space, config)
        self.counters = {"updates": 0, "sessions": 0, "published": -1, "env_steps": 0}
        self.resumed = self._resume()
        self.counters["sessions"] += 1
        self._closed = False
        self._stop = threading.Event()
        self.replay = ReplayActor.remote(**replay_kwargs(config, self.logdir))
        self.replay_stats: dict = ray.get(self.replay.stats.remote())  # waits for the reload
        self.counters["env_steps"] = max(
            self.counters["env_steps"], int(self.replay_stats["inserted_steps"])
        )
        self.gateway = None
        try:
            self.gateway = _GatewayHandle(config, self.replay, self.logdir, bind, self.spaces)
        except BaseException:
            ray.kill(self.replay)
            raise
        self.endpoint: str = self.gateway.endpoint
        tcfg = config.train
        self.prefetcher = Prefetcher(
            self.replay,
            tcfg.batch_size,
            tcfg.batch_length,
            self.lcfg.prefetch,
            self.lcfg.sample_timeout,
        )
        self.logger = MetricsLogger(
            self.logdir, int(tcfg.steps), self.counters["env_steps"], stream=stream
        )
        self.returns: deque = deque(maxlen=100)
        self.actor_versions: dict[str, int] = {}
        self.episodes = 0
        now = time.monotonic()
        self._last = {"publish": -math.inf, "save": now, "log": now, "poll": -math.inf}
        self._updates_at_log = (now, self.agent.updates)

    # ------------------------------------------------------------------ resume / save
    def _resume(self) -> bool:
        payload = checkpoint.load_for_resume(self.logdir, self.config)
        if payload is None:
            return False
        self.agent.load_state_dict(payload["agent"])
        self.counters.update(payload.get("counters", {}))
        self.counters["updates"] = self.agent.updates
        print(
            f"learner: resumed from {self.logdir / checkpoint.FILENAME} at update "
            f"{self.agent.updates}, session {self.counters['sessions'] + 1}",
            flush=True,
        )
        return True

    def save(self) -> Path:
        """Write agent, optimisers and counters atomically to LOGDIR/checkpoint.pt."""
        self.counters["updates"] = self.agent.updates
        path = checkpoint.save(
            self.logdir, checkpoint.agent_payload(self.agent, counters=dict(self.counters))
        )
        self._last["save"] = time.monotonic()
        return path

    # ------------------------------------------------------------------ weights
    def publish(self) -> int:
        """Hand the current policy weights to the gateway; returns their version."""
        weights = self.agent.policy_weights()
        self.gateway.publish_weights(weights.arrays, int(weights.version))
        self.counters["published"] = int(weights.version)
        self._last["publish"] = time.monotonic()
        return int(weights.version)

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Ask ``run`` to return (thread-safe; signal handlers call it)."""
        self._stop.set()

    def run(self, total_steps: int | None = None, close: bool = True) -> dict:
        """Train until the replay received ``total_steps`` (default train.steps) steps or stop().

        With ``close`` (default) the learner checkpoints and shuts down on the way out;
        without, the gateway keeps serving (acks for robots that are stopping) until close().
        """
        total = int(self.config.train.steps if total_steps is None else total_steps)
        self.prefetcher.start()
        if self.agent.updates > 0:
            self.publish()  # resumed: robots get the trained policy at once
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - self._last["poll"] >= 1.0:
                    self._poll(now)
                    if total and self.counters["env_steps"] >= total:
                        break
                batch = self.prefetcher.get(timeout=0.1)
                if batch is not None:
                    self.logger.accumulate(self.agent.train(batch))
                now = time.monotonic()
                newer = self.agent.updates > max(self.counters["published"], 0)
                if newer and now - self._last["publish"] >= float(self.lcfg.publish_every):
                    self.publish()
                if now - self._last["save"] >= float(self.lcfg.checkpoint_every):
                    self.save()
                if now - self._last["log"] >= float(self.lcfg.log_every):
                    self._log(now)
        except BaseException:
            self.close()
            raise
        self.prefetcher.stop()
        self.counters["updates"] = self.agent.updates
        if close:
            self.close()
        return dict(self.counters)

    def _poll(self, now: float) -> None:
        self._last["poll"] = now
        try:
            self.replay_stats = ray.get(self.replay.stats.remote(), timeout=10.0)
            self.counters["env_steps"] = max(
                self.counters["env_steps"], int(self.replay_stats["inserted_steps"])
            )
        except Exception as e:  # noqa: BLE001 - keep training on what is prefetched
            print(f"learner: the replay did not answer ({e})", flush=True)
        for report in self.gateway.pop_reports():
            if report["policy_version"] is not None:
                self.actor_versions[report["actor"]] = report["policy_version"]
            for ret, length in report["episodes"]:
                self.episodes += 1
                self.returns.append(ret)
                self.logger.write(
                    self.counters["env_steps"],
                    {"episode_return": ret, "episode_length": length, "episodes": self.episodes},
                )

    def _log(self, now: float) -> None:
        self._last["log"] = now
        t0, u0 = self._updates_at_log
        updates_per_s = (self.agent.updates - u0) / max(now - t0, 1e-9)
        self._updates_at_log = (now, self.agent.updates)
        steps = self.counters["env_steps"]
        means = self.logger.flush_means()
        gw = self.gateway.stats()
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
            "chunks_added": gw.get("chunks_added", 0),
            "chunks_duplicate": gw.get("chunks_duplicate", 0),
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
        """Stop sampling, checkpoint, stop the gateway, release the replay. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.prefetcher.stop()
        try:
            self.save()
        finally:
            if self.gateway is not None:
                self.gateway.stop()
            self.logger.close()
            try:
                ray.kill(self.replay)
            except Exception:  # noqa: BLE001 - Ray may already be shutting down
                pass

    def status(self) -> dict[str, Any]:
        return {**self.counters, "endpoint": self.endpoint, "actors": dict(self.actor_versions)}
