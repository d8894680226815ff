"""The figures sim_ur5 reach is read against: the random policy and scripted controllers.

    python bench/reach_reference.py              # configs/sim_ur5_reach.yaml, 100 episodes each
    python bench/reach_reference.py --episodes 20 --set ur5.reach.max_step=0.03
    python bench/reach_reference.py --config configs/sim_ur5_reach_pixels.yaml --seed 10000
        # bench/evaluate.py's episodes (its default seed), to read a trained policy against

Each policy runs ``--episodes`` episodes through the unchanged driver on the simulated cell,
wrapped as a gymnasium environment (robots/gymnasium_env.py: every action passes the robot's
own limits, as under the safety supervisor). An action in [-1, 1]^3 moves the TCP by
``action * ur5.reach.max_step`` metres per axis; the reward is minus the distance to the target.

- random:    uniform actions in [-1, 1]^3 (what prefill collects: the floor);
- straight:  along the line to the target, d = (target - tcp) / max_step scaled down so
             that max |a_i| <= 1: the scripted straight-to-target controller (the ceiling
             issue 11's 80% target is measured against);
- clip:      a = clip(d, -1, 1), every axis at full speed until it is done (greedy for this
             reward: each coordinate error shrinks as fast as the per-axis limit allows);
- blind:     straight to the centre of the workspace box, whatever the target (the target is
             drawn uniformly in that box): the best a policy that cannot see the target does,
             near enough. From pixels (configs/sim_ur5_reach_pixels.yaml) a policy that ends
             closer than this one has read the target from the image.

It prints, per policy, the mean return, the final distance to the target (mean and median)
and the fraction of episodes ending within 2 cm (bench/learn.py's success figures), and the
return 80% of the way from random to straight.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

from daydream.core.config import load_config  # noqa: E402
from robots.gymnasium_env import RobotEnv  # noqa: E402

WITHIN = 0.02  # metres: an episode that ends this close to its target succeeded
POLICIES = ("random", "straight", "clip", "blind")


def policy(
    name: str, obs: dict, max_step: float, rng: np.random.Generator, centre: np.ndarray
) -> np.ndarray:
    if name == "random":
        return rng.uniform(-1.0, 1.0, 3).astype(np.float32)
    goal = centre if name == "blind" else obs["target"].astype(np.float64)
    delta = (goal - obs["tcp_pose"][:3].astype(np.float64)) / max_step
    if name == "clip":
        return np.clip(delta, -1.0, 1.0).astype(np.float32)
    return (delta / max(1.0, float(np.abs(delta).max()))).astype(np.float32)


def evaluate(
    env: RobotEnv, name: str, episodes: int, max_step: float, seed: int, centre: np.ndarray
) -> dict:
    """Returns and final distances of ``episodes`` episodes, episode i from ``reset(seed=seed +
    i)``: the same targets for every policy, and the same episodes as bench/evaluate.py's with
    the same ``--seed``."""
    rng = np.random.default_rng(seed)
    returns, final = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        ret, done = 0.0, False
        while not done:
            action = policy(name, obs, max_step, rng, centre)
            obs, reward, terminated, truncated, _ = env.step(action)
            ret += reward
            done = terminated or truncated
        returns.append(ret)
        final.append(float(np.linalg.norm(obs["tcp_pose"][:3] - obs["target"])))
    return {"return": np.array(returns), "final": np.array(final)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sim_ur5_reach.yaml")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    args = parser.parse_args()
    config = load_config(args.config, None, args.overrides)
    if config.robot.name != "sim_ur5" or config.ur5.task != "reach":
        raise SystemExit(f"{args.config} is not the sim_ur5 reach task")
    max_step = float(config.ur5.reach.max_step)
    box = config.ur5.workspace
    centre = (np.asarray(box.low, np.float64) + np.asarray(box.high, np.float64)) / 2
    env = RobotEnv(config, keys=("tcp_pose", "target"))
    print(
        f"reach reference: {args.config}, {args.episodes} episodes of {config.ur5.episode_length} "
        f"steps per policy, max_step {max_step} m, seed {args.seed}"
    )
    results = {}
    try:
        for name in POLICIES:
            start = time.time()
            results[name] = r = evaluate(env, name, args.episodes, max_step, args.seed, centre)
            print(
                f"{name:>8}: return {r['return'].mean():7.2f} +- {r['return'].std():5.2f}  "
                f"final distance {100 * r['final'].mean():5.1f} cm "
                f"(median {100 * np.median(r['final']):4.1f})  "
                f"within {100 * WITHIN:.0f} cm {100 * np.mean(r['final'] <= WITHIN):5.1f}%  "
                f"({time.time() - start:.0f} s)"
            )
    finally:
        env.close()
    low, high = results["random"]["return"].mean(), results["straight"]["return"].mean()
    print(f"80% of the way from random to straight: return {low + 0.8 * (high - low):.2f}")


if __name__ == "__main__":
    main()
