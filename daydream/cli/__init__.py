"""The daydream command: one verb per thing a user does.

Each verb lives in its own module ``daydream/cli/<verb>.py`` exposing
``add_arguments(parser)`` and ``main(args) -> int``; modules are imported only
when their verb runs, so a robot computer never imports the learner's packages.
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS: dict[str, str] = {
    "drive": "run a robot under the safety supervisor, no learner (bring-up, watch a checkpoint)",
    "teleop": "remote safety console of a robot: stop, reset, override, drive (CURVE keys)",
    "train": "single-process training: collect, store, train, log (simulated or gym robots)",
    "run": "the whole system on one machine: Ray, replay, gateway, learner, simulated robots",
    "learner": "the workstation side: replay, gateway, training, weights, checkpoints",
    "actor": "a robot acting with the newest policy from a learner (robot computer side)",
    "keys": "create CURVE key pairs for the gateway and robots, and the gateway's allow-list",
    "report": "open-loop prediction videos and learning-curve plots of a run (LOGDIR)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daydream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_text in VERBS.items():
        module = importlib.import_module(f"daydream.cli.{verb}")
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
