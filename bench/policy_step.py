"""Policy latency at batch 1 with one torch thread: p50 and p99 over 1,000 calls.

    python bench/policy_step.py                           # the robot model sizes below
    python bench/policy_step.py --config configs/sim_ur5_pick.yaml

Target (issue 2): p99 under 10 ms on a 2-core CPU for the default robot config.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robots  # noqa: E402
from daydream.agent.agent import Agent  # noqa: E402
from daydream.core.config import load_config  # noqa: E402
from daydream.core.spaces import step_spaces  # noqa: E402

DEFAULT_CONFIGS = [
    "configs/sim_ur5_pick.yaml",
    "configs/sim_ur5_reach.yaml",
    "configs/sim_quadruped.yaml",
]


def latency(config_path: str, calls: int) -> tuple[float, float, str]:
    config = load_config(config_path, overrides=["device=cpu"])
    obs_space, act_space = robots.spaces(config.robot.name, config)
    agent = Agent(obs_space, act_space, config)
    rng = np.random.default_rng(0)
    obs = {
        k: (
            rng.integers(0, 255, s.shape, dtype=np.uint8)
            if s.is_image
            else np.zeros(s.shape, s.dtype)
        )
        for k, s in obs_space.items()
    }
    obs.update({k: np.zeros((), s.dtype) for k, s in step_spaces().items()})
    state = None
    for _ in range(50):
        _, state = agent.policy(obs, state)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        _, state = agent.policy(obs, state)
        times.append(time.perf_counter() - start)
    keys = ",".join(f"{k}{list(s.shape)}" for k, s in obs_space.items() if k not in step_spaces())
    return np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'config':<30} {'p50 ms':>7} {'p99 ms':>7}  sensors")
    for path in args.config:
        p50, p99, keys = latency(path, args.calls)
        print(f"{path:<30} {p50:>7.2f} {p99:>7.2f}  {keys}", flush=True)


if __name__ == "__main__":
    main()
