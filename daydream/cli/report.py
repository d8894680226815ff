"""``daydream report``: open-loop prediction videos and learning-curve plots of a run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logdir", required=True, help="the run's logdir (checkpoint, replay)")
    parser.add_argument("--out", help="where the files go (default: LOGDIR/report)")
    parser.add_argument("--sequences", type=int, default=4, help="stored sequences per video")
    parser.add_argument("--length", type=int, default=50, help="steps per sequence")
    parser.add_argument("--context", type=int, default=5, help="observed frames before imagining")
    parser.add_argument(
        "--format", choices=["gif", "mp4"], default="gif", help="mp4 needs imageio-ffmpeg"
    )


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from daydream.runtime.report import write_report

    if not Path(args.logdir).is_dir():
        raise SystemExit(f"daydream report: {args.logdir} is not a directory (a run's --logdir)")
    written, notes = write_report(
        args.logdir, args.out, args.sequences, args.length, args.context, args.format
    )
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(path)
    if not written:
        print("daydream report: wrote nothing (see the notes above)")
        return 1
    return 0
