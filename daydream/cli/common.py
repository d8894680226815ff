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
SIZES = ("auto", "small", "daydreamer")


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
    parser.add_argument(
        "--size", choices=SIZES,
        help="network sizes: small (learns on a CPU laptop), daydreamer (DayDreamer's, for a "
        "CUDA learner), auto (default: daydreamer with CUDA, else small)",
    )  # fmt: skip
    if steps:
        parser.add_argument("--steps", type=int, help="environment steps (train.steps)")
    if logdir:
        parser.add_argument("--logdir", help="checkpoints, metrics, replay files; rerun to resume")
    if keys:
        parser.add_argument("--keys", help="CURVE key directory from `daydream keys --out DIR`")
    add_set_argument(parser, example)


def build_config(
    args: argparse.Namespace, verb: str, extra: list[str] | tuple = (), quiet: bool = False
):
    """The config from --config/--algo/--size/--set plus the verb's shorthand flags; a bad
    file, key or value exits with one line naming it, before anything starts or is written.
    Prints which size runs and why (unless ``quiet``)."""
    from daydream.core.config import ConfigError, load_config, requested_size

    overrides = list(getattr(args, "overrides", []) or []) + list(extra)
    if getattr(args, "size", None):
        overrides.append(f"size={args.size}")
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "logdir", None) is not None:
        overrides.append(f"logdir={args.logdir}")
    if getattr(args, "keys", None) is not None:
        overrides.append(f"transport.key_dir={Path(args.keys).resolve()}")
    path, algo = getattr(args, "config", None), getattr(args, "algo", None)
    try:
        requested = requested_size(path, overrides)
        auto, why = _auto_size(verb, load_config(path, algo, overrides).device)
        config = load_config(path, algo, overrides, auto_size=auto)
    except ConfigError as e:
        fail(verb, str(e))
    if not quiet:
        reason = f"auto: {why}" if requested == "auto" else "as asked"
        other = "daydreamer" if config.size == "small" else "small"
        print(f"daydream {verb}: size {config.size} ({reason}; --size {other} for the other)",
              flush=True)  # fmt: skip
    return config


def _auto_size(verb: str, device: str) -> tuple[str, str]:
    """What ``size: auto`` means for this verb on this machine, and why."""
    if verb == "actor":
        return "daydreamer", (
            "a robot computer uses the size of a CUDA learner; give --size small when the "
            "learner runs on a CPU"
        )
    if device == "cpu":
        return "small", "device is cpu"
    import torch

    if device.startswith("cuda") or torch.cuda.is_available():
        return "daydreamer", "the learner has a CUDA device"
    return "small", "the learner has no CUDA device"


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
