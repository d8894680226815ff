"""Does it learn? Train on a task and print, every 1,000 environment steps, the mean return of
the last 10 episodes, the task's success figure and the wall time.

    python bench/learn.py                                         # Pendulum-v1, daydream train
    python bench/learn.py --task configs/sim_ur5_reach.yaml --steps 10000
    python bench/learn.py --runtime run --task configs/sim_ur5_reach.yaml --steps 10000 --logdir D
    python bench/learn.py --runtime run --actors 4 --task configs/sim_quadruped.yaml --steps 50000
    python bench/learn.py --size daydreamer --task configs/sim_ur5_reach.yaml   # DayDreamer's size

The size (``--size small|daydreamer|auto``, default auto: small on a CPU learner, DayDreamer's
with CUDA) is resolved as ``daydream train`` and ``daydream run`` resolve it, and the first
lines say which size runs, why, and its networks and batches.

Runtimes (the same learner, replay layout and metrics either way):
- ``train``: single-process ``daydream train`` (daydream.runtime.local.LocalRun), in this process;
- ``run``: the distributed runtime, ``python -m daydream run --actors N`` as a subprocess (local
  Ray, the replay actor, the gateway, the learner and N simulated robots over ZeroMQ).

Both leave LOGDIR/metrics.jsonl, with one ``episode_return`` / ``episode_length`` line per
episode; this script reads it while the run goes (rows appear as the steps pass) and prints the
whole table again at the end. Success figures (from the episode lines' task figures, the
robots' ``episode_info``, robots/tasks.py):

    reach        final distance to the target (cm, mean of the last 10 episodes) and the
                 fraction of them ending within 2 cm (bench/reach_reference.py: the ceiling)
    walk         mean forward velocity (m/s, mean of the last 10 episodes)
    pick_place   placements (releases over the other bin, +10) per 1,000 steps of the last 10
                 episodes

Target for Pendulum-v1 (issue 2): mean return above -400 within 20,000 environment steps
(a random policy gets about -1,200). Issue 11's targets for the simulated robots are in the
issue; bench/reach_reference.py prints the reach figures they are read against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVERY = 1000  # environment steps per row
WINDOW = 10  # episodes the figures of a row are taken over
WITHIN = 0.02  # metres: a reach episode that ends this close to its target succeeded


# ---------------------------------------------------------------- what a row shows, per task
def task_of(config) -> str:
    """reach | pick_place | walk | '' (no success figure: a gymnasium environment)."""
    name = str(config.robot.name)
    if name in ("ur5", "sim_ur5"):
        return str(config.ur5.task)
    if name in ("quadruped", "sim_quadruped"):
        return "walk"
    return ""


# task -> [(column header, width, format)]; success() fills them in this order
COLUMNS = {
    "reach": [("final cm", 8, ".1f"), ("<2cm", 5, "%")],
    "walk": [("fwd m/s", 7, ".3f")],
    "pick_place": [("placed/1k", 9, ".2f")],
    "": [],
}


def success(task: str, episodes: list[dict]) -> list[float | None]:
    """The task's success figures over ``episodes`` (episode lines of metrics.jsonl, or the
    same dicts from bench/baseline.py); None where the episodes do not carry the figure."""
    def mean(key: str) -> float | None:
        values = [e[key] for e in episodes if key in e]
        return sum(values) / len(values) if values else None

    if task == "reach":
        finals = [e["final_distance"] for e in episodes if "final_distance" in e]
        if not finals:
            return [None, None]
        return [100 * sum(finals) / len(finals), sum(d <= WITHIN for d in finals) / len(finals)]
    if task == "walk":
        return [mean("forward_velocity")]
    if task == "pick_place":
        counted = [e for e in episodes if "placements" in e]
        steps = sum(e.get("episode_length", 0) for e in counted)
        return [1000 * sum(e["placements"] for e in counted) / steps if steps else None]
    return []


@dataclass
class Curve:
    """Owns the episodes seen so far and the rows due every ``EVERY`` environment steps."""

    task: str
    episodes: list[dict] = field(default_factory=list)
    next_mark: int = EVERY
    last_step: int = 0

    def add(self, line: dict) -> None:
        self.last_step = max(self.last_step, int(line.get("step", 0)))
        if "episode_return" in line:
            self.episodes.append(line)

    def due(self, final: bool = False) -> list[dict]:
        """The rows whose mark has passed: every episode up to a mark has been logged once a
        line with a later step is (the learner logs in step order); ``final`` (the run is
        over): every mark up to the last step."""
        rows = []
        while self.next_mark < self.last_step or (final and self.next_mark <= self.last_step):
            mark = self.next_mark
            done = [e for e in self.episodes if e["step"] <= mark]
            recent = done[-WINDOW:]
            returns = [e["episode_return"] for e in recent]
            rows.append({
                "step": mark,
                "return": sum(returns) / len(returns) if returns else None,
                "episodes": len(done),
                "success": success(self.task, recent),
            })  # fmt: skip
            self.next_mark += EVERY
        return rows


def header(task: str) -> str:
    cols = "".join(f"  {name:>{width}}" for name, width, _ in COLUMNS[task])
    return f"{'step':>8}  {'return':>9}  {'episodes':>8}{cols}  {'wall min':>8}"


def format_row(task: str, row: dict, wall_s: float | None) -> str:
    def cell(value, width: int, fmt: str) -> str:
        if value is None:
            return f"{'-':>{width}}"
        return f"{100 * value:>{width - 1}.0f}%" if fmt == "%" else f"{value:>{width}{fmt}}"

    figures = "".join(
        "  " + cell(value, width, fmt)
        for (_, width, fmt), value in zip(COLUMNS[task], row["success"], strict=True)
    )
    ret = cell(row["return"], 9, ".2f")
    wall = cell(None if wall_s is None else wall_s / 60, 8, ".2f")
    return f"{row['step']:>8}  {ret}  {row['episodes']:>8}{figures}  {wall}"


# ---------------------------------------------------------------- reading metrics.jsonl live
class MetricsTail:
    """Owns the reading position in a metrics.jsonl that another thread or process appends to;
    a line still being written is left for the next read."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset, self._rest = path, 0, b""

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # not one of the learner's lines
        return out


class Table:
    """Owns the printed rows of a run: each as it comes due, all again at the end."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.rows: list[tuple[dict, float | None]] = []

    def add(self, rows: list[dict], wall_s: float | None) -> None:
        for row in rows:
            if not self.rows:
                print(header(self.task), flush=True)
            self.rows.append((row, wall_s))
            print(format_row(self.task, row, wall_s), flush=True)

    def print_all(self, title: str, episodes: list[dict], wall_s: float) -> None:
        print(f"\n{title}")
        print(header(self.task))
        for row, wall in self.rows:
            print(format_row(self.task, row, wall))
        if self.task and episodes and all(v is None for v in success(self.task, episodes)):
            print(
                "(no success figures: the episodes carry no task figures; the runtime logs "
                "them once it reports each robot's episode_info with the return)"
            )
        print(f"wall time {wall_s / 60:.1f} min", flush=True)


class Watcher:
    """Prints the rows of a run as its metrics.jsonl passes each mark, and the whole table at
    the end. Lines already in the file when it starts (a resumed run) have no wall time."""

    def __init__(self, logdir: Path, task: str, poll_s: float = 1.0) -> None:
        self.tail = MetricsTail(logdir / "metrics.jsonl")
        self.curve, self.table, self.poll_s = Curve(task), Table(task), poll_s
        self.start = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learn-watch", daemon=True)

    def start_thread(self) -> Watcher:
        self._read(wall=False)  # the lines of an earlier run, if resuming
        self._thread.start()
        return self

    def _read(self, final: bool = False, wall: bool = True) -> None:
        for line in self.tail.read():
            self.curve.add(line)
        self.table.add(self.curve.due(final), time.time() - self.start if wall else None)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._read()

    def finish(self, title: str) -> None:
        self._stop.set()
        self._thread.join()
        self._read(final=True)
        self.table.print_all(title, self.curve.episodes, time.time() - self.start)


# ---------------------------------------------------------------- the runs
def describe(config) -> str:
    """The model size and settings a run uses, in one line."""
    m, t = config.model, config.train
    latent = (
        f"{m.rssm.stoch} x {m.rssm.classes} categorical"
        if m.rssm.latent == "categorical" else f"{m.rssm.stoch}-d gaussian"
    )  # fmt: skip
    return (
        f"size {config.size}: RSSM deter {m.rssm.deter} hidden {m.rssm.hidden}, {latent}, MLPs "
        f"{m.encoder.mlp_layers} x {m.encoder.mlp_units}, CNN depth {m.encoder.cnn_depth}, actor "
        f"{config.behavior.actor.layers} x {config.behavior.actor.units}; batch {t.batch_size} x "
        f"{t.batch_length}, ratio {t.ratio:g}, prefill {t.prefill}; device {config.device}, "
        f"precision {t.precision}{', compiled' if t.compile else ''}"
    )


def run_command(args: argparse.Namespace, logdir: str) -> list[str]:
    """The ``daydream run`` command line of ``--runtime run``."""
    cmd = [sys.executable, "-m", "daydream", "run", "--config", args.task,
           "--actors", str(args.actors), "--logdir", logdir]  # fmt: skip
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.algo:
        cmd += ["--algo", args.algo]
    if args.size:
        cmd += ["--size", args.size]
    if args.overrides:
        cmd += ["--set", *args.overrides]
    return cmd


def train_in_process(config) -> None:
    """What ``daydream train`` does: the run, its config.yaml in the logdir (for ``daydream
    report``), then training."""
    from daydream.cli.common import write_run_config
    from daydream.runtime.local import LocalRun

    run = LocalRun(config)
    write_run_config(config)
    run.run()


def run_subprocess(cmd: list[str]) -> int:
    """``daydream run`` in a child process, on this checkout's daydream; Ctrl-C reaches it too
    (same process group) and it checkpoints on the way out: wait for it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from daydream.cli.common import SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("train", "run"), default="train")
    parser.add_argument("--task", default="configs/pendulum.yaml")
    parser.add_argument("--algo", default=None, help="preset (default: the task's)")
    parser.add_argument("--size", choices=SIZES, default=None, help="default: the config's (auto)")
    parser.add_argument("--steps", type=int, default=None, help="default: the task's train.steps")
    parser.add_argument("--actors", type=int, default=2, help="--runtime run: simulated robots")
    parser.add_argument("--logdir", default=None, help="default: a fresh temporary directory")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE")  # fmt: skip
    return parser.parse_args(argv)


def build_run_config(args: argparse.Namespace, logdir: str):
    """What ``daydream train`` / ``daydream run`` make of the same arguments; prints which
    size runs and why; a bad key or value exits here, before a run."""
    from daydream.cli.common import build_config

    return build_config(
        argparse.Namespace(**{**vars(args), "config": args.task, "logdir": logdir}), args.runtime
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logdir = str(Path(args.logdir or tempfile.mkdtemp(prefix="daydream-learn-")).resolve())
    config = build_run_config(args, logdir)
    actors = f" with {args.actors} actors" if args.runtime == "run" else ""
    print(
        f"learn: {config.algo} on {args.task} ({config.robot.name}), runtime {args.runtime}"
        f"{actors}, {config.train.steps} steps, logdir {logdir}\nlearn: {describe(config)}",
        flush=True,
    )
    task = task_of(config)
    watcher = Watcher(Path(logdir), task).start_thread()
    code = 0
    try:
        if args.runtime == "train":
            train_in_process(config)
        else:
            code = run_subprocess(run_command(args, logdir))
    except KeyboardInterrupt:
        code = 130
    watcher.finish(
        f"{config.algo} on {args.task}, runtime {args.runtime}{actors}: mean return of the last "
        f"{WINDOW} episodes{' and ' + task + ' success' if task else ''}"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
