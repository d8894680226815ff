"""False safety stops under load: does a busy robot computer stall the control loop into a stop?

    python bench/false_stops.py                         # 30 minutes: 2 quiet, then 28 loaded
    python bench/false_stops.py --minutes 3 --quiet-minutes 1    # a short look

Setup (as bench/weights.py): a gateway in a child process plays the learner and publishes
policy weights of DayDreamer's UR5 model (``--config``, full size by default) every
``--publish-every`` seconds; this process runs a real ``RobotActor`` (network thread, outbox,
PolicySlots, SafetySupervisor with its watchdog) on a robot with the UR5's observation and
action spaces that answers instantly, ticking every ``--period`` seconds. After the quiet
phase, one busy process per CPU core spins for the rest of the run, as another program on the
robot computer would.

A watchdog stop during the run is a false stop (the robot answers instantly; only the control
loop can be late): the bench records it with the stall that caused it, resets it as a person
would, and counts on. It prints the false stops, the tick time (policy + supervisor, sleep
excluded) p50 / p99 / max in both phases and the loaded / quiet p99 ratio, and the longest gap
between two tick starts against the watchdog's deadline. Targets (issue 12): no false stop, and
the loaded p99 within 2x of the quiet one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from weights import BenchActor, pct  # noqa: E402


def spin(parent: int) -> None:
    """A busy process: another program using a whole core (until the bench's process is gone,
    however it ended)."""
    x = 0
    while os.getppid() == parent:
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


class StopWatcher:
    """Owns the record of the watchdog stops seen during the run, and resets each one."""

    def __init__(self, actor, poll_s: float = 0.02) -> None:
        self.actor, self.poll_s = actor, poll_s
        self.stops: list[tuple[float, str]] = []  # (time.perf_counter(), reason)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stop-watcher", daemon=True)

    def start(self) -> StopWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.poll_s):
            sup = self.actor.sup
            if sup is None or not sup.stopped:
                continue
            status = sup.status
            self.stops.append((time.perf_counter(), f"{status['stop_source']}: {status['reason']}"))
            print(f"false stop at {time.strftime('%H:%M:%S')}: {status['reason']}", flush=True)
            sup.reset_stop("bench/false_stops.py")


def longest_gap(starts: list[float], since: float, until: float) -> float:
    within = np.asarray([s for s in starts if since <= s < until])
    return float(np.diff(within).max()) if within.size > 1 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sim_ur5_pick.yaml")
    parser.add_argument("--size", default="daydreamer", help="model size of the policy")
    parser.add_argument("--period", type=float, default=0.1, help="actor tick, seconds (UR5)")
    parser.add_argument("--minutes", type=float, default=30.0, help="the whole run")
    parser.add_argument("--quiet-minutes", type=float, default=2.0, help="before the load")
    parser.add_argument("--publish-every", type=float, default=1.0, help="seconds")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy processes")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    args = parser.parse_args()

    from daydream.wire.curve import create_keys

    tmp = Path(tempfile.mkdtemp(prefix="daydream-bench-false-stops-"))
    create_keys(tmp / "keys", ["actor"])
    overrides = [
        f"size={args.size}", *args.overrides, f"logdir={tmp}",
        f"transport.key_dir={tmp / 'keys'}", f"actor.period_s={args.period}",
        "actor.status_every_s=1000", "device=cpu",
    ]  # fmt: skip
    bench = BenchActor(args.config, overrides, tmp)
    actor, config = bench.actor, bench.config
    watcher = StopWatcher(actor)
    busy: list = []
    published = 0
    end = time.perf_counter() + 60 * args.minutes
    load_at = time.perf_counter() + 60 * args.quiet_minutes
    try:
        bench.thread.start()
        watcher.start()
        while time.perf_counter() < end:
            if not busy and time.perf_counter() >= load_at:
                load_at = time.perf_counter()
                me = os.getpid()
                busy = [
                    bench.ctx.Process(target=spin, args=(me,), daemon=True)
                    for _ in range(args.busy)
                ]
                for p in busy:
                    p.start()
                print(f"load: {len(busy)} busy processes from now on", flush=True)
            bench.publish()
            published += 1
            time.sleep(args.publish_every)
    finally:
        for p in busy:
            p.kill()
        watcher.stop()
        bench.close()

    start = end - 60 * args.minutes
    ticks = list(actor.tick_times)  # (start, seconds of work) per acting tick
    starts = [s for s, _ in ticks]
    phases = {"quiet": (start, load_at), "loaded": (load_at, end)}
    print(f"model: {args.config} size {args.size}; tick every {args.period * 1e3:.0f} ms; "
          f"watchdog {config.safety.watchdog_deadline_s} s; weights every {args.publish_every} s "
          f"({published} published, {actor.slots.swaps} swapped in); {args.busy} busy processes "
          f"in the loaded phase; {os.cpu_count()} cores")  # fmt: skip
    p99 = {}
    for name, (a, b) in phases.items():
        work = [d for s, d in ticks if a <= s < b]
        p99[name] = pct(work, 99)
        print(f"{name:>6}: {(b - a) / 60:5.1f} min, {len(work):6d} ticks; tick p50 "
              f"{pct(work, 50):.2f} ms, p99 {p99[name]:.2f} ms, max {pct(work, 100):.2f} ms; "
              f"longest gap between ticks {longest_gap(starts, a, b) * 1e3:.0f} ms")  # fmt: skip
    in_load = [r for t, r in watcher.stops if t >= load_at]
    print(f"false stops: {len(watcher.stops)} ({len(in_load)} under load) (target 0)")
    print(f"loaded / quiet tick p99: {p99['loaded'] / p99['quiet']:.2f} (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
