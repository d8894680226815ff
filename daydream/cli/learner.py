"""``daydream learner``: the workstation side of a run: replay, gateway, training, weights.

    daydream learner --config configs/sim_ur5_pick.yaml --bind tcp://*:5555 --logdir logdir/ur5
    daydream learner ... --ray-address auto          # join a running Ray cluster
    daydream learner ... --rebind ur5-0=keys/ur5-new.key   # a replaced robot keeps its stream
    daydream learner ... --console :8080             # the fleet console web page (loopback)

Robots connect with ``daydream actor --learner tcp://WORKSTATION:5555``. Rerun the same
command to resume from the checkpoint and the replay files in the logdir.

Exit statuses a service manager must not restart on: 2 (arguments, config, keys), 4
(``EXIT_NONFINITE``: training kept going non-finite), 5 (``EXIT_CHECKPOINT``: no checkpoint
in the logdir can be loaded).
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
    parser.add_argument(
        "--rebind", action="append", default=[], metavar="STREAM=KEYFILE",
        help="give an actor stream to the robot whose public key is in KEYFILE (its NAME.key), "
        "e.g. after replacing its computer (repeatable; see docs/PROTOCOL.md)",
    )  # fmt: skip
    add_console_argument(parser)


def add_console_argument(parser: argparse.ArgumentParser) -> None:
    """``--console [HOST]:PORT``, shared with ``daydream run``."""
    parser.add_argument(
        "--console", metavar="[HOST]:PORT",
        help="serve the fleet console web page (every robot, stop and reset) here, e.g. :8080 "
        "on loopback; another address needs a token made beforehand (daydream keys "
        "--console-token) (console.bind)",
    )  # fmt: skip


def parse_rebind(items: list[str]) -> dict[str, str]:
    """``STREAM=KEYFILE`` arguments as stream -> public key (Z85 text); KeyFileError or
    ValueError with one line naming the bad one."""
    from daydream.wire.curve import load_keypair

    out = {}
    for item in items:
        stream, sep, path = item.partition("=")
        if not sep or not stream or not path:
            raise ValueError(f"--rebind {item!r}: expected STREAM=KEYFILE (a robot's NAME.key)")
        out[stream] = load_keypair(path)[0].decode("ascii")
    return out


def main(args: argparse.Namespace) -> int:
    from daydream.cli.common import (
        EXIT_USAGE,
        build_config,
        fail,
        start_ray,
        stop_on_signals,
        stop_ray,
        write_run_config,
    )

    config = build_config(args, "learner", [f"console.bind={args.console}"] if args.console else [])

    from daydream.agent.checkpoint import CheckpointError
    from daydream.runtime.console_web import console_settings, start_console
    from daydream.runtime.learner import (
        EXIT_CHECKPOINT,
        EXIT_NONFINITE,
        NonFiniteTraining,
        start_learner,
    )
    from daydream.wire.curve import KeyFileError
    from daydream.wire.transport import check_endpoint

    try:
        check_endpoint(args.bind or config.gateway.bind, "--bind")
        rebind = parse_rebind(args.rebind)
        console_at = console_settings(config, config.console.bind) if config.console.bind else None
    except (KeyFileError, ValueError) as e:  # console_settings: ConsoleAuthError, a ValueError
        fail("learner", str(e))
    write_run_config(config)
    start_ray(config, args.ray_address)
    try:
        try:
            learner = start_learner(config, bind=args.bind, rebind=rebind)
        except KeyFileError as e:
            print(f"daydream learner: {e}", file=sys.stderr)
            return EXIT_USAGE
        except CheckpointError as e:
            print(f"daydream learner: {e}", file=sys.stderr, flush=True)
            return EXIT_CHECKPOINT
        stop_on_signals(learner.stop)
        print(
            f"daydream learner: {config.algo} for {config.robot.name}, gateway on "
            f"{learner.endpoint}, device {learner.agent.device} "
            f"({learner.agent.precision_name}), logdir {config.logdir}",
            flush=True,
        )
        console = None
        if console_at is not None:
            try:
                console = start_console(config, learner, *console_at)
            except (RuntimeError, FileNotFoundError) as e:  # a port in use, no key pair
                learner.close()
                print(f"daydream learner: {e}", file=sys.stderr, flush=True)
                return EXIT_USAGE
            print(f"daydream learner: fleet console on {console.login_url}", flush=True)
        try:
            counters = learner.run()
        except NonFiniteTraining as e:
            print(f"daydream learner: stopped: {e}", file=sys.stderr, flush=True)
            return EXIT_NONFINITE
        finally:
            if console is not None:
                console.close()
        print(
            f"learner stopped: {counters['env_steps']} environment steps, "
            f"{counters['updates']} updates; checkpoint in {config.logdir}",
            flush=True,
        )
    finally:
        stop_ray()
    return 0
