"""``daydream train``: single-process training on a simulated robot (runtime/local.py)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daydream.cli.common import add_config_arguments

    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from daydream.cli.common import build_config, fail, write_run_config

    config = build_config(args, "train")

    import sys

    from daydream.agent.checkpoint import CheckpointError
    from daydream.runtime.learner import EXIT_CHECKPOINT, EXIT_NONFINITE, NonFiniteTraining
    from daydream.runtime.local import LocalRun

    print(f"daydream train: {config.algo} on {config.robot.name}, logdir {config.logdir}",
          flush=True)  # fmt: skip
    try:
        run = LocalRun(config)
    except CheckpointError as e:
        print(f"daydream train: {e}", file=sys.stderr, flush=True)
        return EXIT_CHECKPOINT
    except ValueError as e:
        fail("train", str(e))
    write_run_config(config)
    try:
        counters = run.run()
    except KeyboardInterrupt:
        print(f"stopped; rerun the same command to resume from {config.logdir}")
        return 130
    except NonFiniteTraining as e:
        print(f"daydream train: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    print(
        f"done: {counters['env_steps']} steps, {counters['episodes']} episodes, "
        f"{counters['updates']} updates; checkpoint in {config.logdir}"
    )
    return 0
