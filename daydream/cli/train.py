"""``daydream train``: single-process training on a simulated or gymnasium robot."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="task file, e.g. configs/pendulum.yaml")
    parser.add_argument("--algo", help="algorithm preset from configs/algo/ (default: the task's)")
    parser.add_argument("--steps", type=int, help="environment steps (train.steps)")
    parser.add_argument("--logdir", help="where checkpoints and metrics go; rerun to resume")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set model.rssm.deter=256",
    )


def main(args: argparse.Namespace) -> int:
    from daydream.config import ConfigError, load_config, to_yaml

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.logdir is not None:
        overrides.append(f"logdir={args.logdir}")
    try:
        config = load_config(args.config, args.algo, overrides)
    except ConfigError as e:
        raise SystemExit(f"daydream train: {e}") from None

    from pathlib import Path

    from daydream.train import Trainer

    Path(config.logdir).mkdir(parents=True, exist_ok=True)
    (Path(config.logdir) / "config.yaml").write_text(to_yaml(config))
    print(
        f"daydream train: {config.algo} on {config.robot.name}, logdir {config.logdir}", flush=True
    )
    trainer = Trainer(config)
    try:
        counters = trainer.run()
    except KeyboardInterrupt:
        print(f"stopped; rerun the same command to resume from {config.logdir}")
        return 130
    print(
        f"done: {counters['env_steps']} steps, {counters['episodes']} episodes, "
        f"{counters['trained']} updates; checkpoint in {config.logdir}"
    )
    return 0
