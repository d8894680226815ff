"""What do world models buy? A model-free baseline on the same robots, tasks and step budgets
as bench/learn.py: stable-baselines3's SAC on the robot as a gymnasium environment.

    python bench/baseline.py --task configs/sim_ur5_reach.yaml --steps 10000
    python bench/baseline.py --task configs/sim_quadruped.yaml --steps 50000
    python bench/baseline.py --task configs/pendulum.yaml --steps 20000
    python bench/baseline.py --task configs/sim_quadruped.yaml --steps 5000 --random

``--random`` acts uniformly at random instead (the floor a learner's figures are read against).

The robot is the unchanged driver behind robots/gymnasium_env.py (every action through the
robot's own limits, as under the safety supervisor), seeded with ``--seed`` (default the config's).
It sees what the world model would: the image keys matching ``model.cnn_keys`` and the vector keys
matching ``model.mlp_keys`` of the task's config (so the same ``--set`` choose the same inputs
for both); vectors only: an MLP policy on their concatenation, with images: SB3's
MultiInputPolicy (a CNN per image). Continuous actions: SAC; one-hot actions (pick and place):
DQN, as SAC needs continuous actions. SB3's default hyperparameters, with the config's device.

It prints bench/learn.py's columns every 1,000 environment steps: the mean return of the last
10 episodes, the task's success figure (from the robot's episode_info) and wall time.
stable-baselines3 is a development dependency only (``pip install -e ".[dev]"``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from learn import WINDOW, Curve, Table, task_of  # noqa: E402


def model_keys(obs_space: dict, model_cfg) -> list[str]:
    """The observation keys the world model's encoder takes (daydream/agent/world_model.py):
    images matching ``cnn_keys``, vectors matching ``mlp_keys``."""
    keys = []
    for key, space in obs_space.items():
        if space.is_image and re.fullmatch(model_cfg.cnn_keys, key):
            keys.append(key)
        elif len(space.shape) == 1 and not space.is_image and re.fullmatch(model_cfg.mlp_keys, key):
            keys.append(key)
    return keys


def make_callback(task: str, table: Table, curve: Curve, start: float):
    """An SB3 callback that turns finished episodes into bench/learn.py's rows."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Rows(BaseCallback):
        def _on_training_start(self) -> None:
            self.returns = [0.0] * self.training_env.num_envs
            self.lengths = [0] * self.training_env.num_envs

        def _on_step(self) -> bool:
            infos, rewards = self.locals["infos"], self.locals["rewards"]
            for i, done in enumerate(self.locals["dones"]):
                self.returns[i] += float(rewards[i])
                self.lengths[i] += 1
                if done:
                    curve.add({
                        "step": self.num_timesteps, "episode_return": self.returns[i],
                        "episode_length": self.lengths[i], **infos[i].get("episode_info", {}),
                    })  # fmt: skip
                    self.returns[i], self.lengths[i] = 0.0, 0
            curve.add({"step": self.num_timesteps})
            table.add(curve.due(), time.time() - start)
            return True

    return Rows()


def act_randomly(env, steps: int, seed: int, table: Table, curve: Curve, start: float) -> None:
    """Uniformly random actions for ``steps`` steps, turned into the same rows as SAC's."""
    env.action_space.seed(seed)
    env.reset(seed=seed)
    episode_return, length = 0.0, 0
    for step in range(1, steps + 1):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        episode_return, length = episode_return + float(reward), length + 1
        if terminated or truncated:
            curve.add({"step": step, "episode_return": episode_return, "episode_length": length,
                       **info.get("episode_info", {})})  # fmt: skip
            episode_return, length = 0.0, 0
            env.reset()
        curve.add({"step": step})
        table.add(curve.due(), time.time() - start)


def main(argv: list[str] | None = None) -> int:
    import stable_baselines3 as sb3
    import torch

    import robots
    from daydream.core.config import load_config
    from robots.gymnasium_env import RobotEnv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="configs/pendulum.yaml")
    parser.add_argument("--steps", type=int, default=None, help="default: the task's train.steps")
    parser.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE")  # fmt: skip
    parser.add_argument("--random", action="store_true", help="uniformly random actions, no SAC")
    args = parser.parse_args(argv)
    config = load_config(args.task, None, args.overrides)
    steps = args.steps or int(config.train.steps)
    seed = int(config.seed if args.seed is None else args.seed)
    obs_space, act_space = robots.spaces(config.robot.name, config)
    keys = model_keys(obs_space, config.model)
    flat = all(not obs_space[k].is_image for k in keys)
    discrete = act_space["action"].discrete
    algo, policy = (sb3.DQN if discrete else sb3.SAC), ("MlpPolicy" if flat else "MultiInputPolicy")
    device = "cpu" if config.device == "cpu" else "auto"
    if config.train.torch_threads:
        torch.set_num_threads(int(config.train.torch_threads))
    name = "random" if args.random else algo.__name__
    how = f"stable-baselines3 {sb3.__version__}, {policy}, defaults"
    how = "uniform actions" if args.random else how
    print(
        f"baseline: {name} ({how}) on "
        f"{args.task} ({config.robot.name}), {steps} steps, seed {seed}, device {device}\n"
        f"baseline: observations {', '.join(keys)} ({'one Box' if flat else 'Dict'})",
        flush=True,
    )
    task, start = task_of(config), time.time()
    curve, table = Curve(task), Table(task)
    env = RobotEnv(config, keys=keys, flat=flat)
    code = 0
    try:
        if args.random:
            act_randomly(env, steps, seed, table, curve, start)
        else:
            model = algo(policy, env, seed=seed, device=device, verbose=0)
            model.learn(total_timesteps=steps, callback=make_callback(task, table, curve, start))
    except KeyboardInterrupt:
        code = 130
    finally:
        env.close()
    table.add(curve.due(final=True), time.time() - start)
    title = f"{name} on {args.task}: mean return of the last {WINDOW} episodes"
    table.print_all(title + (f" and {task} success" if task else ""), curve.episodes,
                    time.time() - start)  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
