"""Control steps per second of each simulated robot, through its real driver.

    python -m bench.sim_fps                       # every simulated robot
    python -m bench.sim_fps --robot sim_ur5       # every benchmark of one robot
    python -m bench.sim_fps sim_quadruped_image   # single benchmarks by name

A simulated robot must not be the bottleneck of training (target for sim_ur5: over
500 steps/s with 64x64 images on one core; the process is pinned to one CPU unless
--all-cores). Each entry of ``BENCHES`` takes the number of steps and returns steps
per second; add an entry per robot or variant.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def _run(name: str, overrides: list[str], steps: int) -> float:
    import robots
    from daydream.core.config import load_config

    config = load_config(overrides=[f"robot.name={name}", *overrides])
    robot = robots.make(name, config)
    rng = np.random.default_rng(0)
    with robot:
        obs = robot.reset()
        space = robot.act_space["action"]
        t0 = time.perf_counter()
        for _ in range(steps):
            obs = robot.step({"action": space.sample(rng)})
            if obs["is_last"]:
                obs = robot.reset()
        return steps / (time.perf_counter() - t0)


def sim_quadruped(steps: int = 2000) -> float:
    """Virtual board on a pty + MuJoCo, proprioception only (the default task)."""
    return _run("sim_quadruped", [], steps)


def sim_quadruped_image(steps: int = 1000) -> float:
    """As sim_quadruped, plus a 64x64 camera image each step."""
    return _run("sim_quadruped", ["quadruped.image.enabled=true"], steps)


def sim_ur5(steps: int = 3000) -> float:
    """Simulated UR5 pick_place: driver, DH kinematics, Robotiq socket, 64x64 rendered image."""
    return _run("sim_ur5", ["ur5.task=pick_place"], steps)


def sim_ur5_reach(steps: int = 3000) -> float:
    """Simulated UR5 reach: continuous Cartesian deltas, 64x64 rendered image."""
    return _run("sim_ur5", ["ur5.task=reach"], steps)


BENCHES: dict[str, Callable[..., float]] = {
    "sim_ur5": sim_ur5,
    "sim_ur5_reach": sim_ur5_reach,
    "sim_quadruped": sim_quadruped,
    "sim_quadruped_image": sim_quadruped_image,
}


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks: {', '.join(BENCHES)}")
    parser.add_argument("--robot", default="all", help="sim_ur5 | sim_quadruped | all")
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    robot = args.robot
    names = args.names or [
        n for n in BENCHES if robot == "all" or n == robot or n.startswith(robot + "_")
    ]
    if not names:
        raise SystemExit(f"no benchmark for robot '{args.robot}'; known: {', '.join(BENCHES)}")
    for name in names:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark '{name}'; known: {', '.join(BENCHES)}")
        print(f"{name:24s} {BENCHES[name]():8.0f} steps/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
