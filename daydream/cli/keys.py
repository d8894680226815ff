"""``daydream keys --out DIR [--name NAME ...]``: CURVE key pairs, the allow-list, a console token.

    daydream keys --out keys                    # gateway + actor pairs, allowed/, console.token
    daydream keys --out keys --console-token    # only a new fleet console token (keys kept)
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the key files")
    parser.add_argument(
        "--name",
        action="append",
        default=None,
        help="a client name (repeatable, default: actor); each gets NAME.key / NAME.key_secret "
        "and its public key is added to DIR/allowed/",
    )
    parser.add_argument(
        "--console-token", action="store_true",
        help="only write a new fleet console token to DIR/console.token (the key pairs stay)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from daydream.runtime.console_auth import write_token
    from daydream.wire.curve import ALLOWED_DIR, SERVER_NAME, create_keys

    if not args.console_token:
        made = create_keys(args.out, args.name or ["actor"])
        for name, (public, secret) in made.items():
            print(f"{name:>12}: public {public}  secret {secret}")
        print(
            f"server: keep {SERVER_NAME}.key_secret on the workstation; allow-list is "
            f"{args.out}/{ALLOWED_DIR}/\nrobots: copy NAME.key_secret and {SERVER_NAME}.key to "
            f"the robot computer"
        )
    token = write_token(args.out)
    print(
        f"fleet console token in {token} (mode 0600): `daydream learner --keys {args.out} "
        f"--console HOST:PORT` requires it; open the address it prints"
    )
    return 0
