"""``daydream learner``: the workstation side of a run: replay, gateway, training, weights.

    daydream learner --config configs/sim_ur5_pick.yaml --bind tcp://*:5555 --logdir logdir/ur5
    daydream learner ... --ray-address auto          # join a running Ray cluster

Robots connect with ``daydream actor --learner tcp://WORKSTATION:5555``. Rerun the same
command to resume from the checkpoint and the replay files in the logdir.
"""

from __future__ import annotations

import argparse
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="task file, e.g. configs/sim_ur5_pick.yaml")
    parser.add_argument("--algo", help="algorithm preset from configs/algo/ (default: the task's)")
    parser.add_argument("--bind", help="gateway address robots connect to (gateway.bind)")
    parser.add_argument(
        "--ray-address", help="address of a running Ray cluster (default: start one locally)"
    )
    parser.add_argument("--logdir", help="checkpoints, metrics, replay files; rerun to resume")
    parser.add_argument("--keys", help="CURVE key directory from `daydream keys --out DIR`")
    parser.add_argument(
        "--steps", type=int, help="stop after this many environment steps (train.steps)"
    )
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override any config key, e.g. --set learner.publish_every=2",
    )  # fmt: skip


def build_config(args: argparse.Namespace, verb: str):
    """The config from --config/--algo/--set plus the verb's shorthand flags."""
    from daydream.config import ConfigError, load_config

    overrides = list(args.overrides)
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "logdir", None) is not None:
        overrides.append(f"logdir={args.logdir}")
    if getattr(args, "keys", None) is not None:
        from pathlib import Path

        overrides.append(f"transport.key_dir={Path(args.keys).resolve()}")
    try:
        return load_config(args.config, getattr(args, "algo", None), overrides)
    except ConfigError as e:
        raise SystemExit(f"daydream {verb}: {e}") from None


def init_ray(config, address: str | None) -> None:
    import ray

    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(
            num_cpus=int(config.learner.ray_cpus),
            object_store_memory=int(config.learner.ray_object_store_mb) << 20,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )


def stop_on_signals(stop) -> None:
    """SIGTERM and SIGINT ask ``stop()``; a second one raises KeyboardInterrupt."""
    state = {"asked": False}

    def handler(signum, frame):
        if state["asked"]:
            raise KeyboardInterrupt
        state["asked"] = True
        print(f"\n{signal.Signals(signum).name}: stopping (checkpoint on the way out)", flush=True)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(args: argparse.Namespace) -> int:
    config = build_config(args, "learner")
    from pathlib import Path

    import ray

    from daydream.config import to_yaml
    from daydream.keys import KeyFileError
    from daydream.learner import Learner

    Path(config.logdir).mkdir(parents=True, exist_ok=True)
    (Path(config.logdir) / "config.yaml").write_text(to_yaml(config))
    init_ray(config, args.ray_address)
    try:
        try:
            learner = Learner(config, bind=args.bind)
        except KeyFileError as e:
            print(f"daydream learner: {e}", file=sys.stderr)
            return 2
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
        ray.shutdown()
    return 0
