"""Policy latency at batch 1 on one thread, torch vs ONNX Runtime (actor.backend): p50 and p99.

    python bench/policy_step.py                       # the robot configs, both sizes
    python bench/policy_step.py --config configs/sim_ur5_pick.yaml --sizes daydreamer
    python bench/policy_step.py --calls 50            # a quick check that it runs

For each robot config and size (DayDreamer's, which a robot computer runs when the learner has
CUDA, and the small one): the torch Agent's policy and the exported graph in ONNX Runtime
(daydream/runtime/onnx_policy.py), in float32 and with int8 layers (``actor.onnx_precision``),
act on the same observation, explore mode, the recurrent state carried; blocks of calls
alternate between the three so that a busy machine slows them alike. Prints p50/p99 per
backend and torch / onnx. Target (issue 13): onnx p99 at most 2 ms at DayDreamer's UR5 size.
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
from daydream.runtime.onnx_policy import OnnxPolicy  # noqa: E402

DEFAULT_CONFIGS = [
    "configs/sim_ur5_pick.yaml",
    "configs/sim_ur5_reach.yaml",
    "configs/sim_ur5_reach_pixels.yaml",
    "configs/sim_quadruped.yaml",
]
BLOCK = 50  # calls per backend before switching to the other


def policies(config_path: str, size: str):
    """The torch Agent and OnnxPolicies (float32, int8) with the same weights, and an
    observation."""
    config = load_config(config_path, overrides=["device=cpu", f"size={size}",
                                                 "actor.backend=onnx"])  # fmt: skip
    obs_space, act_space = robots.spaces(config.robot.name, config)
    agent = Agent(obs_space, act_space, config)
    onnx = {}
    for precision in ("float32", "int8"):
        agent.config.actor.onnx_precision = precision
        agent._onnx_graph = None  # export this precision's graph
        onnx[precision] = OnnxPolicy(
            obs_space,
            act_space,
            config.behavior.expl_noise,
            np.random.default_rng(0),
            config.behavior.actor.dist,
        )
        onnx[precision].load_policy_weights(agent.policy_weights())
    rng = np.random.default_rng(0)
    obs = {
        k: rng.integers(0, 255, s.shape, dtype=np.uint8)
        if s.is_image
        else np.zeros(s.shape, s.dtype)
        for k, s in obs_space.items()
    }
    obs.update({k: np.zeros((), s.dtype) for k, s in step_spaces().items()})
    keys = ",".join(f"{k}{list(s.shape)}" for k, s in obs_space.items() if k not in step_spaces())
    params = sum(
        v.size for k, v in agent.policy_weights().arrays.items() if not k.startswith("onnx.")
    )
    return {"torch": agent, "onnx": onnx["float32"], "int8": onnx["int8"]}, obs, keys, params


def latency(config_path: str, size: str, calls: int) -> dict:
    backends, obs, keys, params = policies(config_path, size)
    states = {name: None for name in backends}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for name, policy in backends.items():  # warm-up
        for _ in range(20):
            _, states[name] = policy.policy(obs, states[name])
    while min(len(t) for t in times.values()) < calls:
        for name, policy in backends.items():
            state = states[name]
            for _ in range(min(BLOCK, calls - len(times[name]))):
                start = time.perf_counter()
                _, state = policy.policy(obs, state)
                times[name].append(time.perf_counter() - start)
            states[name] = state
    out = {"keys": keys, "params_m": params / 1e6}
    for name, ts in times.items():
        out[name] = (np.percentile(ts, 50) * 1e3, np.percentile(ts, 99) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--sizes", nargs="*", default=["daydreamer", "small"])
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per backend")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the robot actor's process: one thread (ONNX Runtime: one too)
    print(f"{'config':<34} {'size':<10} {'params':>7} {'torch p50':>9} {'p99':>6} "
          f"{'onnx p50':>9} {'p99':>6} {'int8 p50':>9} {'p99':>6} {'torch/onnx p50':>14} "
          f"{'p99':>5}  sensors")  # fmt: skip
    for path in args.config:
        for size in args.sizes:
            r = latency(path, size, args.calls)
            (t50, t99), (o50, o99), (i50, i99) = r["torch"], r["onnx"], r["int8"]
            print(f"{path:<34} {size:<10} {r['params_m']:>6.2f}M {t50:>9.2f} {t99:>6.2f} "
                  f"{o50:>9.2f} {o99:>6.2f} {i50:>9.2f} {i99:>6.2f} {t50 / o50:>14.2f} "
                  f"{t99 / o99:>5.2f}  {r['keys']}", flush=True)  # fmt: skip
    print(
        "milliseconds per policy call, batch 1, one thread, explore mode; onnx: float32, "
        "int8: actor.onnx_precision int8"
    )


if __name__ == "__main__":
    main()
