"""``daydream actor``: run a robot with the newest policy from a learner (robot computer).

    daydream actor --config configs/sim_ur5_pick.yaml --robot sim_ur5 \
        --learner tcp://WORKSTATION:5555 --keys keys --id ur5-left

Acts with a random policy until the learner's first weights arrive, then with the
newest weights it has; keeps acting when the learner is away (experience waits in
LOGDIR/actors/ID/outbox). Ctrl-C or SIGTERM stops the robot and waits briefly for the
last acknowledgements.
"""

from __future__ import annotations

import argparse
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daydream.cli.common import add_config_arguments

    add_config_arguments(
        parser, "the learner's task file", steps=False, logdir=False, keys=True,
        example="actor.status_every_s=5",
    )  # fmt: skip
    parser.add_argument("--robot", help="robot driver (default: robot.name of the config)")
    parser.add_argument("--learner", required=True, help="the gateway, e.g. tcp://ws:5555")
    parser.add_argument("--id", default=None, help="actor id, unique per robot (default: host)")
    parser.add_argument("--steps", type=int, default=0, help="executed steps to run; 0: forever")
    parser.add_argument("--logdir", help="where the outbox and status.json go (logdir)")


def main(args: argparse.Namespace) -> int:
    import logging
    import socket

    from daydream.cli.common import EXIT_USAGE, build_config, die_with_parent, fail
    from daydream.wire.transport import check_endpoint

    die_with_parent()
    try:
        check_endpoint(args.learner, "--learner")
    except ValueError as e:
        fail("actor", str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    steps, args.steps = args.steps, None  # executed steps here, not train.steps
    config = build_config(args, "actor")
    actor_id = args.id or socket.gethostname()
    if config.actor.backend == "torch":  # onnx: torch is never imported (a robot may lack it)
        import torch

        torch.set_num_threads(1)  # the control loop's process: one thread

    from daydream.runtime.robot_actor import EXIT_SAFETY_STOP, LATCH_FILENAME, RobotActor
    from daydream.wire.curve import KeyFileError

    try:
        actor = RobotActor.networked(config, args.learner, actor_id, args.robot, steps)
    except KeyFileError as e:
        print(f"daydream actor: {e}", file=sys.stderr)
        return EXIT_USAGE

    def handler(signum, frame):
        actor.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    print(
        f"daydream actor {actor_id}: {args.robot or config.robot.name} -> "
        f"{args.learner}, tick {actor.period or 'robot-paced'}",
        flush=True,
    )
    status = actor.run()
    print(
        f"actor {actor_id} stopped: {status['steps']} steps, {status['episodes']} episodes, "
        f"weights v{status['policy_version']}, {status['outbox']['pending']} chunks unacknowledged",
        flush=True,
    )
    if status["safety_stopped"]:
        print(f"actor {actor_id}: the safety stop is latched ({actor.directory / LATCH_FILENAME}); "
              f"a person must check the robot and reset it", file=sys.stderr)
        return EXIT_SAFETY_STOP
    return 0
