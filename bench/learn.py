"""Does it learn? Train on a task; print the mean return of the last 10 episodes every 1,000 steps.

    python bench/learn.py                                   # Pendulum-v1, dreamerv2, 20,000 steps
    python bench/learn.py --algo dreamer --steps 10000
    python bench/learn.py --task configs/sim_ur5_reach.yaml --algo dreaming --steps 5000

Target for Pendulum-v1 (issue 2): mean return above -400 within 20,000 environment steps
(a random policy gets about -1,200).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daydream.core.config import load_config  # noqa: E402
from daydream.runtime.local import LocalRun  # noqa: E402


def curve(metrics: Path, every: int = 1000, window: int = 10) -> list[tuple[int, float, int]]:
    """(step, mean of the last ``window`` returns, episodes so far) at each ``every`` steps."""
    episodes = [json.loads(line) for line in metrics.read_text().splitlines()]
    episodes = [(e["step"], e["episode_return"]) for e in episodes if "episode_return" in e]
    rows = []
    if not episodes:
        return rows
    for mark in range(every, episodes[-1][0] + 1, every):
        done = [r for s, r in episodes if s <= mark]
        if done:
            rows.append((mark, sum(done[-window:]) / len(done[-window:]), len(done)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="configs/pendulum.yaml")
    parser.add_argument("--algo", default=None, help="preset (default: the task's)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--logdir", default=None, help="default: a fresh temporary directory")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[])
    args = parser.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="daydream-learn-")
    overrides = [*args.overrides, f"logdir={logdir}"]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    config = load_config(args.task, args.algo, overrides)
    print(f"learn: {config.algo} on {args.task} for {config.train.steps} steps, logdir {logdir}")
    start = time.time()
    LocalRun(config).run()
    minutes = (time.time() - start) / 60
    print(f"\n{config.algo} on {args.task}: mean return of the last 10 episodes")
    print(f"{'step':>8}  {'return':>9}  {'episodes':>8}")
    for step, mean, episodes in curve(Path(logdir) / "metrics.jsonl"):
        print(f"{step:>8}  {mean:>9.1f}  {episodes:>8}")
    print(f"wall time {minutes:.1f} min")


if __name__ == "__main__":
    main()
