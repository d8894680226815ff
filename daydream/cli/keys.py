"""``daydream keys --out DIR [--name NAME ...]``: create CURVE key pairs and the allow-list."""

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


def main(args: argparse.Namespace) -> int:
    from daydream.wire.curve import ALLOWED_DIR, SERVER_NAME, create_keys

    made = create_keys(args.out, args.name or ["actor"])
    for name, (public, secret) in made.items():
        print(f"{name:>12}: public {public}  secret {secret}")
    print(
        f"server: keep {SERVER_NAME}.key_secret on the workstation; allow-list is "
        f"{args.out}/{ALLOWED_DIR}/\nrobots: copy NAME.key_secret and {SERVER_NAME}.key to the "
        f"robot computer"
    )
    return 0
