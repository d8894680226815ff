"""Single-process training: collect with the policy, store chunks in the replay, train, log.

The same pieces as the distributed system (robot, Agent, ChunkBuilder, Replay,
checkpoints) in one process and one loop, for simulators and quick experiments.
Rerunning with the same logdir resumes: the agent, optimisers and counters come
from the checkpoint, the experience from the replay files.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

import robots
from daydream import checkpoint
from daydream.agent import Agent
from daydream.chunks import ChunkBuilder
from daydream.logger import MetricsLogger
from daydream.ratio import Ratio
from daydream.replay import Replay
from robots.base import validate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Owns one training run: robot, agent, replay, counters, logger and checkpoints."""

    def __init__(self, config, stream=None) -> None:
        self.config = config
        seed_everything(config.seed)
        if config.train.torch_threads:
            torch.set_num_threads(int(config.train.torch_threads))
        self.logdir = Path(config.logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.robot = robots.make(config.robot.name, config)
        self.agent = Agent(self.robot.obs_space, self.robot.act_space, config)
        rcfg = config.replay
        directory = self.logdir / rcfg.directory if rcfg.directory else None
        self.replay = Replay(rcfg.capacity, directory, rcfg.recency, config.seed)
        tcfg = config.train
        self.ratio = Ratio(tcfg.ratio, tcfg.batch_size * tcfg.batch_length)
        self.counters = {"env_steps": 0, "episodes": 0, "sessions": 0, "trained": 0}
        self._resume()
        self.counters["sessions"] += 1
        self.stream_id = f"local-{self.counters['sessions']}"
        self.chunks = ChunkBuilder(rcfg.chunk_length)
        self.seq = 0
        self.logger = MetricsLogger(
            self.logdir, tcfg.steps, self.counters["env_steps"], stream=stream
        )
        self.rng = np.random.default_rng(config.seed + self.counters["sessions"])
        self._last_save = time.time()
        self._last_print = 0.0
        self._last_logged = self.counters["env_steps"]
        self._episode = {"return": 0.0, "length": 0}
        self._last_return: float | None = None

    # ------------------------------------------------------------------ resume / save
    def _resume(self) -> None:
        payload = checkpoint.load_for_resume(self.logdir, self.config)
        if payload is None:
            return
        self.agent.load_state_dict(payload["agent"])
        self.ratio.load_state_dict(payload["ratio"])
        self.counters.update(payload["counters"])
        print(
            f"resumed from {self.logdir / checkpoint.FILENAME} at step "
            f"{self.counters['env_steps']} ({self.replay.num_steps} steps in replay)",
            flush=True,
        )

    def save(self) -> Path:
        tail = self.chunks.flush()
        if tail is not None:
            self._store(tail)
        path = checkpoint.save(
            self.logdir,
            checkpoint.agent_payload(
                self.agent, counters=dict(self.counters), ratio=self.ratio.state_dict()
            ),
        )
        self._last_save = time.time()
        return path

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train until ``train.steps`` environment steps. Ctrl-C saves a resumable checkpoint."""
        total = self.config.train.steps
        if self.counters["env_steps"] >= total:
            print(
                f"already trained for {self.counters['env_steps']} >= {total} steps; "
                f"raise --steps to continue",
                flush=True,
            )
            return dict(self.counters)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        self.robot.connect()
        try:
            obs, state = self.robot.reset(), None
            while self.counters["env_steps"] < total:
                obs, state = self._step(obs, state)
                self._train_owed()
                self._log()
                if time.time() - self._last_save > self.config.train.checkpoint_every:
                    self.save()
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: saving checkpoint at step {self.counters['env_steps']}", flush=True
            )
            raise
        finally:
            self.save()
            self.robot.disconnect()
            self.logger.close()
            signal.signal(signal.SIGTERM, previous)
        return dict(self.counters)

    def _step(self, obs: dict, state):
        validate(obs, self.robot.obs_space)
        if self.counters["env_steps"] < self.config.train.prefill:
            action = {"action": self.robot.act_space["action"].sample(self.rng)}
        else:
            action, state = self.agent.policy(obs, state, mode="explore")
        chunk = self.chunks.add({**obs, **action})
        if chunk is not None:
            self._store(chunk)
        if obs["is_last"]:
            return self.robot.reset(), None
        obs = self.robot.step(action)
        self.counters["env_steps"] += 1
        self._episode["return"] += float(obs["reward"])
        self._episode["length"] += 1
        if obs["is_last"]:
            self._end_episode()
        return obs, state

    def _store(self, chunk: dict) -> None:
        self.replay.add(self.stream_id, self.seq, chunk)
        self.seq += 1

    def _end_episode(self) -> None:
        self.counters["episodes"] += 1
        self._last_return = self._episode["return"]
        self.logger.write(
            self.counters["env_steps"],
            {
                "episode_return": self._episode["return"],
                "episode_length": self._episode["length"],
                "episodes": self.counters["episodes"],
            },
        )
        self._episode = {"return": 0.0, "length": 0}

    def _train_owed(self) -> None:
        tcfg = self.config.train
        steps = self.counters["env_steps"]
        if steps < tcfg.prefill or not self.replay.ready(tcfg.batch_length):
            return
        if self.counters["trained"] == 0:
            # First time: pretrain, then owe updates only for steps from here on.
            updates = tcfg.pretrain
            self.ratio.done = int(steps * self.ratio.per_step)
        else:
            updates = self.ratio.owed(steps)
        for _ in range(updates):
            batch = self.replay.sample(tcfg.batch_size, tcfg.batch_length)
            self.logger.accumulate(self.agent.train(batch))
            self.counters["trained"] += 1

    def _log(self) -> None:
        steps = self.counters["env_steps"]
        every = self.config.train.log_every
        now = time.time()
        if steps % every == 0 and steps > self._last_logged:
            self._last_logged = steps
            means = self.logger.flush_means()
            self.logger.write(
                steps,
                {
                    **means,
                    "updates": self.counters["trained"],
                    "fps": self.logger.rate(steps),
                    "replay_steps": self.replay.num_steps,
                },
            )
            self._print(steps, means)
        elif now - self._last_print > 15:
            self._print(steps, {})

    def _print(self, steps: int, means: dict) -> None:
        self._last_print = time.time()
        self.logger.progress(
            steps,
            {
                "return": self._last_return,
                "wm_loss": means.get("wm/loss"),
                "actor_loss": means.get("actor/loss"),
                "critic_loss": means.get("critic/loss"),
                "updates": float(self.counters["trained"]),
            },
        )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
