"""What every verb shares: config arguments, ``--set``, writing the run's config, Ray, signals.

    add_config_arguments(parser, steps=True, logdir=True)   # --config --algo --set ...
    config = build_config(args, "train")                     # one line and exit 2 on errors
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_USAGE = 2  # a config or argument error (service managers must not restart on it)


def add_set_argument(parser: argparse.ArgumentParser, example: str = "model.rssm.deter=256"):
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable: every value given is kept."""
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help=f"override any config key, e.g. --set {example} (repeatable)",
    )  # fmt: skip


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_help: str = "task file, e.g. configs/pendulum.yaml",
    config_required: bool = True,
    steps: bool = True,
    logdir: bool = True,
    keys: bool = False,
    example: str = "model.rssm.deter=256",
) -> None:
    """--config, --algo, and the shorthands that are config keys (--steps, --logdir, --keys)."""
    parser.add_argument("--config", required=config_required, default=None, help=config_help)
    parser.add_argument("--algo", help="algorithm preset from configs/algo/ (default: the task's)")
    if steps:
        parser.add_argument("--steps", type=int, help="environment steps (train.steps)")
    if logdir:
        parser.add_argument("--logdir", help="checkpoints, metrics, replay files; rerun to resume")
    if keys:
        parser.add_argument("--keys", help="CURVE key directory from `daydream keys --out DIR`")
    add_set_argument(parser, example)


def build_config(args: argparse.Namespace, verb: str, extra: list[str] | tuple = ()):
    """The config from --config/--algo/--set plus the verb's shorthand flags; a bad file,
    key or value exits with one line naming it, before anything starts or is written."""
    from daydream.core.config import ConfigError, load_config

    overrides = list(getattr(args, "overrides", []) or []) + list(extra)
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "logdir", None) is not None:
        overrides.append(f"logdir={args.logdir}")
    if getattr(args, "keys", None) is not None:
        overrides.append(f"transport.key_dir={Path(args.keys).resolve()}")
    try:
        return load_config(getattr(args, "config", None), getattr(args, "algo", None), overrides)
    except ConfigError as e:
        fail(verb, str(e))


def fail(verb: str, message: str) -> None:
    """Exit with one line on stderr: ``daydream VERB: message``."""
    print(f"daydream {verb}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def write_run_config(config) -> Path:
    """LOGDIR/config.yaml: the resolved config the run uses (written atomically)."""
    from daydream.core.config import to_yaml
    from daydream.core.files import write_text

    logdir = Path(config.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    return write_text(logdir / "config.yaml", to_yaml(config))


def start_ray(config, address: str | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one sized by ``learner.ray_*``."""
    from daydream.replay.remote import start_ray as start

    start(address, config.learner.ray_cpus, config.learner.ray_object_store_mb)


def stop_ray() -> None:
    from daydream.replay.remote import stop_ray as stop

    stop()


def stop_on_signals(stop: Callable[[], None], what: str = "checkpoint on the way out") -> None:
    """SIGTERM and SIGINT ask ``stop()``; a second one raises KeyboardInterrupt."""
    state = {"asked": False}

    def handler(signum, frame):
        if state["asked"]:
            raise KeyboardInterrupt
        state["asked"] = True
        print(f"\n{signal.Signals(signum).name}: stopping ({what})", flush=True)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def die_with_parent() -> None:
    """Under `daydream run`: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    parent = os.environ.get("DAYDREAM_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before prctl
        sys.exit(0)
