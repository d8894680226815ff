"""Safety benchmark: stop latency under a busy learner, and the supervisor's per-tick cost.

    python bench/safety.py [--repeats 50] [--learner-threads 0]

Figures printed:
- stop latency, request -> robot.stop() call, p50 / p99 / max, for the three paths a stop
  takes: the keyboard (a key handled in the keyboard thread), the remote console
  (ConsoleClient -> CURVE over loopback -> server thread), and the watchdog (time past
  its deadline when it calls stop), while the actor's control loop ticks at 20 Hz and a
  "learner" process multiplies large torch matrices on every core;
- per-tick overhead: SafetySupervisor.step minus a bare robot.step (a robot that does
  nothing), with default limits and with every limit on.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daydream.core.config import load_config  # noqa: E402
from daydream.core.spaces import Space, step_spaces  # noqa: E402
from daydream.safety.supervisor import SafetySupervisor  # noqa: E402
from robots.base import Robot  # noqa: E402

TICK = 0.05


class NullRobot(Robot):
    """Does nothing, instantly; records when stop() is called."""

    def __init__(self) -> None:
        self.obs_space = {**step_spaces(), "x": Space((8,))}
        self.act_space = {"action": Space((6,), low=-1.0, high=1.0)}
        self.obs = {
            "x": np.zeros(8, np.float32),
            "reward": np.float32(0),
            "is_first": np.array(False),
            "is_last": np.array(False),
            "is_terminal": np.array(False),
        }
        self.stop_times: list[float] = []
        self.last_command = 0.0

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def reset(self):
        return dict(self.obs, is_first=np.array(True))

    def step(self, action):
        self.last_command = time.perf_counter()
        return self.obs

    def stop(self, hard: bool = False) -> None:
        self.stop_times.append(time.perf_counter())


def busy_learner(seconds: float, threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    end = time.time() + seconds
    while time.time() < end:
        a = torch.tanh(a @ a) * 0.5


def pct(values: list[float]) -> str:
    ms = np.array(values) * 1000
    return (
        f"p50 {np.percentile(ms, 50):7.3f} ms  p99 {np.percentile(ms, 99):7.3f} ms  "
        f"max {ms.max():7.3f} ms  (n={len(ms)})"
    )


def control_loop(sup: SafetySupervisor, done: threading.Event, stall: threading.Event) -> None:
    rng = np.random.default_rng(0)
    while not done.is_set():
        t0 = time.monotonic()
        if sup.stopped or stall.is_set():
            time.sleep(0.002)
            continue
        if sup.status["needs_reset"]:
            sup.reset()
        sup.step({"action": rng.uniform(-0.1, 0.1, 6)})
        time.sleep(max(0.0, TICK - (time.monotonic() - t0)))


def measure_stops(repeats: int) -> dict[str, list[float]]:
    from daydream.safety.console import ConsoleClient, ConsoleServer
    from daydream.safety.keyboard import KeyboardTeleop
    from daydream.wire.curve import create_keys

    config = load_config(overrides=["safety.watchdog_deadline_s=0.2"])
    robot = NullRobot()
    sup = SafetySupervisor(robot, config.safety).start()
    keys = Path(tempfile.mkdtemp(prefix="daydream-bench-keys-"))
    create_keys(keys, ["actor"])
    (keys / "console_allowed").mkdir()
    shutil.copy(keys / "gateway.key", keys / "console_allowed")
    server = ConsoleServer(
        sup, "tcp://127.0.0.1:0", keys / "actor.key_secret", keys / "console_allowed"
    ).start()
    client = ConsoleClient(server.endpoint, keys / "gateway.key_secret", keys / "actor.key", 2.0)
    client.status()
    keyboard = KeyboardTeleop(sup, sup.space, config.teleop)
    done, stall = threading.Event(), threading.Event()
    loop = threading.Thread(target=control_loop, args=(sup, done, stall), daemon=True)
    loop.start()
    rng = np.random.default_rng(1)
    out: dict[str, list[float]] = {"keyboard": [], "console": [], "watchdog": []}
    try:
        for _ in range(repeats):
            for path in out:
                time.sleep(TICK * (2 + rng.random()))  # land anywhere within a tick
                n = len(robot.stop_times)
                if path == "keyboard":
                    t0 = time.perf_counter()
                    keyboard.feed("space")
                elif path == "console":
                    t0 = time.perf_counter()
                    client.request_stop()
                else:
                    stall.set()
                    deadline = float(config.safety.watchdog_deadline_s)
                    while len(robot.stop_times) == n:
                        time.sleep(0.001)
                    t0 = robot.last_command + deadline
                while len(robot.stop_times) == n:
                    time.sleep(0.0002)
                out[path].append(robot.stop_times[n] - t0)
                stall.clear()
                sup.reset_stop("bench")
    finally:
        done.set()
        loop.join(2)
        client.close()
        server.close()
        sup.close()
        shutil.rmtree(keys, ignore_errors=True)
    return out


def measure_overhead(ticks: int) -> dict[str, float]:
    results = {}
    actions = np.random.default_rng(0).uniform(-0.2, 0.2, (ticks, 6))
    robot = NullRobot()
    t0 = time.perf_counter()
    for a in actions:
        robot.step({"action": a.astype(np.float32)})
    bare = (time.perf_counter() - t0) / ticks
    for name, overrides in {
        "default limits": [],
        "all limits on": ["safety.max_abs=0.5", "safety.max_change=0.1",
                          "safety.refuse_change=0.5"],
    }.items():
        sup = SafetySupervisor(robot, load_config(overrides=overrides).safety)
        sup.reset()
        t0 = time.perf_counter()
        for a in actions:
            sup.step({"action": a})
        results[name] = (time.perf_counter() - t0) / ticks - bare
    results["bare robot.step"] = bare
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="stops measured per path")
    parser.add_argument("--ticks", type=int, default=20000, help="ticks for the overhead")
    parser.add_argument(
        "--learner-threads", type=int, default=0, help="torch threads of the busy learner (0: all)"
    )
    args = parser.parse_args()
    logging.getLogger("daydream").setLevel(logging.ERROR)  # 3 x repeats stop/release lines

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpus: {os.cpu_count()}, load average {load}, control tick {TICK * 1000:.0f} ms")
    overhead = measure_overhead(args.ticks)
    for name, seconds in overhead.items():
        label = "bare" if name.startswith("bare") else "supervisor overhead"
        print(f"per tick, {label:>19} ({name}): {seconds * 1e6:8.1f} us")

    ctx = mp.get_context("spawn")
    learner = ctx.Process(target=busy_learner, args=(3600, args.learner_threads), daemon=True)
    learner.start()
    time.sleep(3.0)  # let torch start multiplying
    try:
        results = measure_stops(args.repeats)
    finally:
        learner.terminate()
        learner.join(5)
    print("stop request -> robot.stop() under a busy learner (torch matmuls on all cores):")
    for path, values in results.items():
        what = "past the deadline" if path == "watchdog" else "after the request"
        print(f"  {path:>8} ({what}): {pct(values)}")


if __name__ == "__main__":
    main()
