"""``daydream teleop --robot tcp://HOST:PORT``: the remote safety console of a robot.

Shows the robot's state (stopped, overridden, episode, return, last fault) and forwards
this terminal's keys (stop, reset, override, motion; see ``teleop.bindings``) to the
robot's actor process over CURVE-encrypted ZeroMQ. ``--send CMD`` sends one command and
exits (scripts, a big red button on the workstation): stop, reset, override-on,
override-off, status. The exit status is 1 when the robot did not answer.
"""

from __future__ import annotations

import argparse
import sys
import time

SEND = ("stop", "reset", "override-on", "override-off", "status")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robot", required=True, help="the robot's console, tcp://HOST:PORT")
    parser.add_argument("--config", default=None, help="task YAML (for key dir and bindings)")
    parser.add_argument("--keys", default=None, help="key directory (default transport.key_dir)")
    parser.add_argument(
        "--key", default=None, help="this machine's key pair name (default teleop.client_key)"
    )
    parser.add_argument(
        "--server-key", default=None,
        help="the robot's public key name in the key dir (default teleop.server_key)",
    )
    parser.add_argument("--send", choices=SEND, default=None, help="send one command and exit")
    from daydream.cli.common import add_set_argument

    add_set_argument(parser, "teleop.reply_timeout_s=5")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from daydream.cli.common import build_config, fail
    from daydream.cli.drive import status_line
    from daydream.core.spaces import Space
    from daydream.safety.console import ConsoleClient
    from daydream.wire.curve import key_directory
    from daydream.wire.transport import check_endpoint

    try:
        check_endpoint(args.robot, "--robot")
    except ValueError as e:
        fail("teleop", str(e))
    keys, args.keys = args.keys, None  # a path of its own here, not transport.key_dir
    config = build_config(args, "teleop", quiet=True)
    key_dir = Path(keys) if keys else key_directory(config.transport.key_dir, config.logdir)
    client = ConsoleClient(
        args.robot,
        key_dir / f"{args.key or config.teleop.client_key}.key_secret",
        key_dir / f"{args.server_key or config.teleop.server_key}.key",
        timeout=float(config.teleop.reply_timeout_s),
    )
    unreachable = (
        f"no reply from {args.robot} within {config.teleop.reply_timeout_s} s: is the robot's "
        f"actor running with its console on (--console / teleop.console), and is this "
        f"machine's public key ({args.key or config.teleop.client_key}.key) in the robot's "
        f"{config.teleop.allowed_dir}/ directory?"
    )
    try:
        if args.send:
            request = {
                "stop": lambda: client.request_stop("console"),
                "reset": lambda: client.reset_stop("console"),
                "override-on": lambda: client.set_override(True),
                "override-off": lambda: client.set_override(False),
                "status": client.status,
            }[args.send]
            reply = request()
            if reply is None:
                print(unreachable, file=sys.stderr)
                return 1
            print(status_line(reply["status"], reply["status"]["step"]))
            if reply["error"]:
                print(f"robot refused: {reply['error']}", file=sys.stderr)
                return 1
            return 0
        reply = client.status()
        if reply is None:
            print(unreachable, file=sys.stderr)
            return 1
        info = reply["action_space"]
        low = np.array([-np.inf if x is None else x for x in info["low"]], np.float32)
        high = np.array([np.inf if x is None else x for x in info["high"]], np.float32)
        space = Space(tuple(info["shape"]), np.float32, low=low, high=high,
                      discrete=bool(info["discrete"]))
        from daydream.safety.keyboard import KeyboardTeleop

        keyboard = KeyboardTeleop(client, space, config.teleop)
        with keyboard:
            print(keyboard.help_text(), flush=True)
            while not keyboard.quit_requested.is_set():
                reply = client.status()
                if reply is None:
                    line = "robot unreachable (retrying)"
                else:
                    status = reply["status"]
                    line = status_line(status, status["step"])
                    if status["last_fault"]:
                        line += f" | last fault: {status['last_fault']}"
                print("\r" + line.ljust(100)[:200], end="", flush=True)
                time.sleep(float(config.teleop.status_period_s))
        print()
        return 0
    except KeyboardInterrupt:
        print()
        return 0
    finally:
        client.close()
