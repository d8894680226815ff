"""How well does a trained policy do? Run a checkpoint's policy and a random one on the same
seeded episodes of its simulated robot and print each one's mean and standard error.

    python bench/evaluate.py LOGDIR                       # 20 episodes: eval, explore, random
    python bench/evaluate.py LOGDIR/checkpoint.pt --episodes 50 --modes eval random
    python bench/evaluate.py LOGDIR --backend onnx-int8   # as a robot with actor.backend onnx

LOGDIR is a ``daydream train`` / ``daydream run`` / ``bench/learn.py`` logdir (its
checkpoint.pt) or a checkpoint file; the robot and task are the checkpoint's own config.
Episode i of every mode starts from ``reset(seed=SEED + i)`` (robots/gymnasium_env.py), so
the modes meet the same targets, cubes and physics. Modes (Agent.policy): ``eval`` takes the
actor's mode, ``explore`` samples as the robots do while learning, ``random`` acts uniformly at
random. The policy steps as ``daydream actor`` does: its recurrent state carries the action the
robot executed (after the robot's own limits), not the one it proposed. ``--backend``: the
torch Agent (default), or the checkpoint's policy exported to ONNX and run with ONNX Runtime
as ``actor.backend: onnx`` runs it, in float32 (``onnx``) or with int8 layers (``onnx-int8``,
``actor.onnx_precision: int8``).

Columns: the mean return and, per task (bench/learn.py's figures), reach: final distance (cm)
and the fraction within 2 cm; walk: forward velocity (m/s); pick and place: placements per
1,000 steps; each as mean +- standard error over the episodes. The learning curves' "clearly
above random" is read here: the gap between a policy's mean and random's in standard errors.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from learn import COLUMNS, success, task_of  # noqa: E402

MODES = ("eval", "explore", "random")
BACKENDS = ("torch", "onnx", "onnx-int8")


def backend_policy(agent, config, backend: str, seed: int):
    """What acts: the Agent itself, or an OnnxPolicy bound to its weights (the robot's way)."""
    import numpy as np

    if backend == "torch":
        return agent
    from daydream.runtime.onnx_policy import OnnxPolicy

    config.actor.backend = "onnx"
    config.actor.onnx_precision = "int8" if backend == "onnx-int8" else "float32"
    policy = OnnxPolicy(agent.obs_space, agent.act_space, config.behavior.expl_noise,
                        np.random.default_rng(seed), config.behavior.actor.dist)  # fmt: skip
    policy.load_policy_weights(agent.policy_weights())
    return policy


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def figures(task: str, episode: dict) -> dict[str, float]:
    """One episode's success figures: bench/learn.py's columns over this episode alone."""
    names = [name for name, _, _ in COLUMNS[task]]
    values = success(task, [episode])
    return {n: float(v) for n, v in zip(names, values, strict=True) if v is not None}


def run_episode(env, policy, mode: str, seed: int) -> dict:
    """One episode of ``mode`` from ``reset(seed=seed)``: its return, length and episode_info."""
    import numpy as np

    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    state, first, total, length = None, True, 0.0, 0
    while True:
        if mode == "random":
            action = env.action_space.sample()
        else:
            out, state = policy.policy({**obs, "is_first": np.asarray(first)}, state, mode=mode)
            action = np.asarray(out["action"]).reshape(-1)
            if env.action_space.shape == ():  # one-hot robot: gymnasium's Discrete
                action = int(np.argmax(action))
        obs, reward, terminated, truncated, info = env.step(action)
        if mode != "random":
            state = policy.executed(state, info["executed"])
        total, length, first = total + float(reward), length + 1, False
        if terminated or truncated:
            return {"episode_return": total, "episode_length": length,
                    **info.get("episode_info", {})}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import torch

    from daydream.agent.checkpoint import load_agent
    from robots.gymnasium_env import RobotEnv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a logdir (its checkpoint.pt) or a checkpoint file")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seed", type=int, default=10_000,
                        help="episode i starts from reset(seed=SEED + i) (default 10000: not "
                             "the seeds the robots trained on)")  # fmt: skip
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        parser.error(f"no checkpoint at {path}")
    torch.set_num_threads(1)
    agent, config = load_agent(path, device="cpu")
    task = task_of(config)
    env = RobotEnv(config, keys=list(agent._sensor_keys))
    policy = backend_policy(agent, config, args.backend, args.seed)
    print(f"evaluate: {path} ({agent.updates} updates), {config.robot.name} "
          f"{task or ''}, {args.episodes} episodes per mode from seed {args.seed}, "
          f"backend {args.backend}", flush=True)  # fmt: skip
    results: dict[str, list[dict]] = {}
    try:
        for mode in args.modes:
            start = time.time()
            results[mode] = [run_episode(env, policy, mode, args.seed + i)
                             for i in range(args.episodes)]  # fmt: skip
            print(f"evaluate: {mode}: {args.episodes} episodes in {time.time() - start:.0f} s",
                  flush=True)  # fmt: skip
    finally:
        env.close()
    print_table(task, results)
    return 0


def print_table(task: str, results: dict[str, list[dict]]) -> None:
    """Each mode's mean +- standard error, and its return's distance from random's in
    standard errors of the difference."""
    columns = ["return", *figures(task, next(iter(results.values()))[0])]
    print(f"\n{'mode':>8}" + "".join(f"  {c:>16}" for c in columns) + "  vs random")
    stats = {}
    for mode, episodes in results.items():
        rows = [{"return": e["episode_return"], **figures(task, e)} for e in episodes]
        stats[mode] = {c: mean_se([r[c] for r in rows]) for c in columns}
    for mode, cols in stats.items():
        cells = "".join(f"  {m:>8.3f} +-{se:>6.3f}" for m, se in cols.values())
        gap = ""
        if mode != "random" and "random" in stats:
            (m, se), (rm, rse) = cols["return"], stats["random"]["return"]
            spread = math.hypot(se, rse)
            gap = f"  {(m - rm) / spread:+.1f} se" if spread else ""
        print(f"{mode:>8}{cells}{gap}")


if __name__ == "__main__":
    raise SystemExit(main())
