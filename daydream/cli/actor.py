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
import os
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the learner's task file")
    parser.add_argument("--algo", help="algorithm preset (must match the learner's)")
    parser.add_argument("--robot", help="robot driver (default: robot.name of the config)")
    parser.add_argument("--learner", required=True, help="the gateway, e.g. tcp://ws:5555")
    parser.add_argument("--keys", help="CURVE key directory (this robot's pair, gateway.key)")
    parser.add_argument("--id", default=None, help="actor id, unique per robot (default: host)")
    parser.add_argument("--steps", type=int, default=0, help="executed steps to run; 0: forever")
    parser.add_argument("--logdir", help="where the outbox and status.json go (logdir)")
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override any config key (use the learner's model settings)",
    )  # fmt: skip


def _die_with_parent() -> None:
    """Under `daydream run`: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    parent = os.environ.get("DAYDREAM_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before prctl
        sys.exit(0)


def main(args: argparse.Namespace) -> int:
    import logging
    import socket

    from daydream.cli.learner import build_config

    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = build_config(args, "actor")
    actor_id = args.id or socket.gethostname()

    from daydream.actor import EXIT_SAFETY_STOP, LATCH_FILENAME, Actor
    from daydream.keys import KeyFileError

    try:
        actor = Actor(config, args.learner, actor_id, robot_name=args.robot, max_steps=args.steps)
    except KeyFileError as e:
        print(f"daydream actor: {e}", file=sys.stderr)
        return 2

    def handler(signum, frame):
        actor.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    print(
        f"daydream actor {actor_id}: {config.robot.name if not args.robot else args.robot} -> "
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
