"""``daydream drive``: run a robot under the SafetySupervisor without a learner (bring-up).

Check the workspace, the stop, the camera, then watch a trained checkpoint act::

    daydream drive --config configs/ur5.yaml --robot sim_ur5 --policy random --steps 200
    daydream drive --config configs/ur5.yaml --robot ur5 --policy teleop --console tcp://*:5557
    daydream drive --config configs/ur5.yaml --policy logdir/run      # a checkpoint

Policies: ``random`` samples the action space; ``teleop`` holds still (the rest action)
and switches the override on at start, so the person drives (keyboard in this terminal
when stdin is a TTY, and/or the remote console); a path is a checkpoint or logdir
loaded with ``daydream.agent.checkpoint.load_agent`` and run with ``agent.policy(mode="eval")``.
Every action goes through the supervisor (stop, override, limits, watchdog). On exit
(steps done, quit key, Ctrl-C) the robot is stopped and disconnected.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="task YAML (configs/<robot>.yaml)")
    parser.add_argument("--robot", default=None, help="robot name (default: robot.name)")
    parser.add_argument(
        "--policy", default="random", help="random | teleop | CHECKPOINT (file or logdir)"
    )
    parser.add_argument("--steps", type=int, default=0, help="steps to run; 0: until quit")
    parser.add_argument(
        "--console", default=None, help="serve the remote safety console, e.g. tcp://*:5557"
    )
    parser.add_argument(
        "--no-keyboard", action="store_true", help="do not read keys even on a terminal"
    )
    parser.add_argument("--seed", type=int, default=None, help="random policy seed")
    from daydream.cli.common import add_set_argument

    add_set_argument(parser, "safety.max_change=0.1")


class _Policy:
    """Turns the chosen policy into ``act(obs) -> action dict``."""

    def __init__(self, kind: str, sup: Any, config: Any, seed: int) -> None:
        import numpy as np

        self.kind = kind
        self.sup = sup
        self.space = sup.space
        self.rng = np.random.default_rng(seed)
        self.agent = None
        self.state = None
        if kind not in ("random", "teleop"):
            from daydream.agent.checkpoint import load_agent

            self.agent, _ = load_agent(kind)

    def act(self, obs: dict) -> dict:
        if self.kind == "random":
            return {"action": self.space.sample(self.rng)}
        if self.kind == "teleop":
            return self.sup.rest_action()
        if bool(obs.get("is_first", False)):
            self.state = None
        action, self.state = self.agent.policy(obs, self.state, mode="eval")
        return {k: _numpy(v) for k, v in action.items()}


def _numpy(value: Any) -> Any:
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return value[0] if value.ndim > 1 else value  # a batch of one from the agent


def status_line(status: dict, steps: int) -> str:
    """One line of the supervisor's status for a terminal."""
    state = f"STOPPED ({status['reason']})" if status["stopped"] else "running"
    if status["overridden"]:
        state += " | OVERRIDE"
    return (
        f"ep {status['episode']} step {status['step']} return {status['return']:.2f} "
        f"| total {steps} | refused {status['refused_count']} | {state}"
    )


def main(args: argparse.Namespace) -> int:
    import robots
    from daydream.cli.common import build_config
    from daydream.safety.supervisor import SafetyStopped, SafetySupervisor

    config = build_config(args, "drive", quiet=True)
    name = args.robot or config.robot.name
    robot = robots.make(name, config)
    keyboard = console = None
    use_keyboard = not args.no_keyboard and sys.stdin.isatty()
    bind = args.console if args.console is not None else config.teleop.console
    if args.policy == "teleop" and not use_keyboard and not bind:
        print(
            "--policy teleop needs a person: run in a terminal (stdin is not a TTY here) "
            "or serve the console with --console tcp://*:PORT",
            file=sys.stderr,
        )
        return 2
    robot.connect()
    sup = SafetySupervisor(robot, config.safety).start()
    steps = 0
    try:
        policy = _Policy(args.policy, sup, config, config.seed if args.seed is None else args.seed)
        if bind:
            from daydream.safety.console import ConsoleServer
            from daydream.wire.curve import key_directory

            key_dir = key_directory(config.transport.key_dir, config.logdir)
            console = ConsoleServer(
                sup,
                bind,
                key_dir / f"{config.teleop.server_key}.key_secret",
                key_dir / config.teleop.allowed_dir,
            ).start()
            print(f"safety console on {console.endpoint}", flush=True)
        if use_keyboard:
            from daydream.safety.keyboard import KeyboardTeleop

            keyboard = KeyboardTeleop(
                sup, sup.space, config.teleop, rest=sup.rest_action()["action"]
            ).start()
            print(keyboard.help_text(), flush=True)
        if args.policy == "teleop":
            sup.set_override(True)
        period = float(robot.control_period or 0.0)
        last_print = 0.0
        obs = None
        while not (args.steps and steps >= args.steps):
            if keyboard is not None and keyboard.quit_requested.is_set():
                break
            t0 = time.monotonic()
            if t0 - last_print > 0.5:
                print("\r" + status_line(sup.status, steps).ljust(100)[:160], end="", flush=True)
                last_print = t0
            if sup.stopped:
                sup.wait_released(timeout=max(period, 0.05))
                continue
            if obs is None or bool(obs["is_last"]):
                try:
                    obs = sup.reset()
                except SafetyStopped:
                    continue
            obs, executed, _ = sup.step(policy.act(obs))
            if executed is not None:
                steps += 1
            if period:
                time.sleep(max(0.0, period - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass
    finally:
        sup.request_stop("drive exit")
        print("\n" + status_line(sup.status, steps), flush=True)
        if keyboard is not None:
            keyboard.close()
        if console is not None:
            console.close()
        sup.close()
        robot.disconnect()
    return 0
