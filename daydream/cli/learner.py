"""``daydream learner``: the workstation side of a run: replay, gateway, training, weights.

    daydream learner --config configs/sim_ur5_pick.yaml --bind tcp://*:5555 --logdir logdir/ur5
    daydream learner ... --ray-address auto          # join a running Ray cluster

Robots connect with ``daydream actor --learner tcp://WORKSTATION:5555``. Rerun the same
command to resume from the checkpoint and the replay files in the logdir.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daydream.cli.common import add_config_arguments

    add_config_arguments(
        parser, "task file, e.g. configs/sim_ur5_pick.yaml", keys=True,
        example="learner.publish_every_s=2",
    )  # fmt: skip
    parser.add_argument("--bind", help="gateway address robots connect to (gateway.bind)")
    parser.add_argument(
        "--ray-address", help="address of a running Ray cluster (default: start one locally)"
    )


def main(args: argparse.Namespace) -> int:
    from daydream.cli.common import (
        EXIT_USAGE,
        build_config,
        start_ray,
        stop_on_signals,
        stop_ray,
        write_run_config,
    )

    config = build_config(args, "learner")

    from daydream.runtime.learner import start_learner
    from daydream.wire.curve import KeyFileError

    write_run_config(config)
    start_ray(config, args.ray_address)
    try:
        try:
            learner = start_learner(config, bind=args.bind)
        except KeyFileError as e:
            print(f"daydream learner: {e}", file=sys.stderr)
            return EXIT_USAGE
        stop_on_signals(learner.stop)
        print(
            f"daydream learner: {config.algo} for {config.robot.name}, gateway on "
            f"{learner.endpoint}, device {learner.agent.device}, logdir {config.logdir}",
            flush=True,
        )
        counters = learner.run()
        print(
            f"learner stopped: {counters['env_steps']} environment steps, "
            f"{counters['updates']} updates; checkpoint in {config.logdir}",
            flush=True,
        )
    finally:
        stop_ray()
    return 0
