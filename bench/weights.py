"""Weights benchmark: publish -> acting latency, and what receiving + swapping costs the tick.

    python bench/weights.py [--config configs/sim_ur5_pick.yaml] [--period 0.05]
                            [--quiet 20] [--swapping 20] [--publish-every 1.0]

Setup: a gateway (CURVE on, in-memory replay) in a child process plays the learner and
publishes policy weights of the config's model (default: the DayDreamer UR5 model at
full size); this process runs a real ``RobotActor`` (network thread, outbox, PolicySlots,
SafetySupervisor) on a robot with the UR5's observation/action spaces that answers
instantly, so the tick is the policy plus the supervisor.

Figures printed:
- size of the weights message;
- latency from ``publish_weights`` returning in the learner to the weights being ready
  in the actor's spare copy (download + decode + load), and to the first tick acting
  with them (adds the wait for the next tick), p50 / max;
- the actor's tick time (policy + supervisor step; sleep excluded) p50 / p99 / max,
  in a quiet phase (no new weights) and a phase with new weights every
  ``--publish-every`` seconds, and the difference of the p99s (target: < 1 ms).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robots  # noqa: E402
from daydream.core.config import load_config  # noqa: E402
from robots.base import Robot  # noqa: E402

SPACES: dict = {}


class InstantRobot(Robot):
    """The spaces of the configured robot; observations are noise, produced instantly."""

    def __init__(self, obs_space, act_space, episode_length: int) -> None:
        self.obs_space, self.act_space = obs_space, act_space
        self.episode_length = episode_length
        self.rng = np.random.default_rng(0)
        self.t = 0

    def _obs(self, first: bool) -> dict:
        obs = {}
        for k, s in self.obs_space.items():
            if s.dtype == np.uint8:
                obs[k] = self.rng.integers(0, 255, s.shape, dtype=np.uint8)
            elif s.dtype == bool:
                obs[k] = np.bool_(False)
            else:
                obs[k] = self.rng.standard_normal(s.shape).astype(s.dtype)
        obs["reward"] = np.float32(0.0)
        obs["is_first"] = np.bool_(first)
        obs["is_last"] = np.bool_(self.t >= self.episode_length)
        obs["is_terminal"] = np.bool_(False)
        return obs

    def connect(self) -> None:
        pass

    def reset(self) -> dict:
        self.t = 0
        return self._obs(True)

    def step(self, action: dict) -> dict:
        self.t += 1
        return self._obs(False)

    def stop(self, hard: bool = False) -> None:
        pass

    def disconnect(self) -> None:
        pass


def make_instant(config, **_) -> InstantRobot:
    return InstantRobot(SPACES["obs"], SPACES["act"], int(config.ur5.episode_length))


def instant_spaces(config) -> tuple[dict, dict]:
    return SPACES["obs"], SPACES["act"]


def publisher(config_path: str, overrides: list[str], key_dir: str, conn) -> None:
    """The learner's side: a gateway and versioned weights of the full model."""
    import torch

    import robots
    from daydream.agent.agent import Agent
    from daydream.replay.service import ReplayService
    from daydream.wire.gateway import Gateway

    torch.set_num_threads(1)
    config = load_config(config_path, overrides=overrides)
    obs_space, act_space = robots.spaces(config.robot.name, config)
    agent = Agent(obs_space, act_space, config, device="cpu")
    replay = ReplayService(10**6)
    gateway = Gateway(replay, "tcp://127.0.0.1:*", curve=True, key_dir=key_dir)
    conn.send((gateway.start(), obs_space, act_space))
    version = 0
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            break
        version += 1
        for p in agent.behavior.actor.parameters():  # a different policy each time
            p.data.mul_(0.999)
        arrays = agent.policy_weights().arrays
        gateway.publish_weights(arrays, version)
        conn.send((version, time.monotonic(), sum(a.nbytes for a in arrays.values())))
    gateway.stop()


class BenchActor:
    """Owns a learner's stand-in (``publisher``, in a child process) and a real ``RobotActor``
    on the instantly answering robot, connected to it over CURVE; ``publish()`` sends new
    weights, ``close()`` stops both and removes the temporary directory."""

    def __init__(self, config_path: str, overrides: list[str], tmp: Path) -> None:
        from daydream.runtime.robot_actor import RobotActor

        self.tmp = tmp
        self.ctx = mp.get_context("spawn")
        self.conn, child_conn = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=publisher, args=(config_path, overrides,
                                     str(tmp / "keys"), child_conn), daemon=True)  # fmt: skip
        self.proc.start()
        endpoint, obs_space, act_space = self.conn.recv()
        SPACES.update(obs=obs_space, act=act_space)
        module = make_instant.__module__  # __main__ when run, weights when imported
        robots.register("bench_instant", f"{module}:make_instant", f"{module}:instant_spaces")
        self.config = load_config(config_path, overrides=overrides)
        self.actor = RobotActor.networked(
            self.config, endpoint, "bench", robot_name="bench_instant"
        )
        self.thread = threading.Thread(target=self.actor.run, daemon=True)

    def publish(self) -> tuple[int, float, int]:
        """New weights from the learner: (version, time.monotonic() published, bytes)."""
        self.conn.send("publish")
        return self.conn.recv()

    def close(self) -> None:
        self.actor.stop()
        self.thread.join(timeout=30)
        self.conn.send("stop")
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q)) if len(values) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sim_ur5_pick.yaml")
    parser.add_argument("--period", type=float, default=0.05, help="actor tick, seconds")
    parser.add_argument("--quiet", type=float, default=20.0, help="seconds without new weights")
    parser.add_argument("--swapping", type=float, default=20.0, help="seconds with new weights")
    parser.add_argument("--publish-every", type=float, default=1.0)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    args = parser.parse_args()

    from daydream.wire.curve import create_keys

    tmp = Path(tempfile.mkdtemp(prefix="daydream-bench-weights-"))
    create_keys(tmp / "keys", ["actor"])
    overrides = [
        *args.overrides,
        f"logdir={tmp}",
        f"transport.key_dir={tmp / 'keys'}",
        f"actor.period_s={args.period}",
        "actor.status_every_s=1000",
        "device=cpu",
    ]
    bench = BenchActor(args.config, overrides, tmp)
    actor = bench.actor
    published: dict[int, float] = {}
    size = 0
    try:
        bench.thread.start()
        version, at, size = bench.publish()  # v1: the actor leaves the random policy
        published[version] = at
        while actor.slots.version < 1:
            time.sleep(0.05)
        time.sleep(2.0)  # warm up
        quiet = (time.perf_counter(), time.perf_counter() + args.quiet)
        time.sleep(args.quiet)
        swap_start = time.perf_counter()
        while time.perf_counter() < swap_start + args.swapping:
            version, at, _ = bench.publish()
            published[version] = at
            time.sleep(args.publish_every)
        swapping = (swap_start, time.perf_counter())
        time.sleep(1.0)
    finally:
        bench.close()

    ticks = list(actor.tick_times)  # (start, seconds of work) per acting tick
    in_quiet = [d for s, d in ticks if quiet[0] <= s < quiet[1]]
    in_swap = [d for s, d in ticks if swapping[0] <= s < swapping[1]]
    ready = [
        actor.slots.staged_at[v] - t for v, t in published.items() if v in actor.slots.staged_at
    ]
    acting = [actor.slots.swapped_at[v] - t for v, t in published.items()
              if v in actor.slots.swapped_at]  # fmt: skip
    print(f"model: {args.config} {' '.join(args.overrides)}; weights message {size / 1e6:.1f} MB;"
          f" actor tick {args.period * 1e3:.0f} ms, torch threads 1")  # fmt: skip
    print(f"published {len(published)} versions; actor swapped {actor.slots.swaps} times")
    print(
        f"publish -> ready in spare copy: p50 {pct(ready, 50):.1f} ms, max {pct(ready, 100):.1f} ms"
    )
    print(
        f"publish -> acting with them:    p50 {pct(acting, 50):.1f} ms, "
        f"max {pct(acting, 100):.1f} ms"
    )
    for name, values in (("quiet", in_quiet), ("receiving+swapping", in_swap)):
        print(f"tick time, {name:>18}: n={len(values):5d}  p50 {pct(values, 50):.2f} ms  "
              f"p99 {pct(values, 99):.2f} ms  max {pct(values, 100):.2f} ms")  # fmt: skip
    added = pct(in_swap, 99) - pct(in_quiet, 99)
    print(f"p99 added by receiving and swapping weights: {added:+.2f} ms (target < 1 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
