"""Fleet console stop-to-latch time: a press of a robot's STOP button on the web page to the
latch in that robot's SafetySupervisor.

    python bench/console_stop.py --presses 50                 # 2 simulated UR5s, reach
    python bench/console_stop.py --presses 5 --learn-every 0  # a quick check

It starts ``daydream run --actors N --console 127.0.0.1:0`` (tiny networks, so the learner
trains beside the robots without owning the CPU, ``actor.period_s`` 0.1 s as a real UR5),
opens the page in Debian's headless chromium (Playwright; no browser download) and, N
times, on the robots in turn:

  1. clicks the robot's STOP; the page's click handler records the press time
     (``performance.timeOrigin + performance.now()``, epoch ms, on the card);
  2. reads the robot's supervisor status over its CURVE console until it is latched:
     ``stopped_since`` is ``time.time()`` in the robot's process when the stop latched;
  3. types a name into the page's reset form and waits until the robot acts again.

All processes run on this machine, so both times read one clock: latch - press is the time
from the press to the latch (browser event, HTTP to the learner, ZeroMQ CURVE to the robot's
console thread, SafetySupervisor.request_stop). It also prints the page's round trip
(press to the robot's confirming reply). Prints every press, then p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")

from tests.tiny import tiny_model  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
TINY = [  # tests/tiny.py's networks, a small batch, robots that never wait for the learner
    *tiny_model(units=16), "train.batch_size=4", "train.batch_length=8", "train.pretrain=2",
    "replay.min_size=64", "train.torch_threads=1", "actor.sim_max_lag_steps=0",
    "console.push_every_s=0.25", "console.poll_every_s=0.5", "actor.heartbeat_every_s=0.5",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presses", type=int, default=20, help="stop presses to time (default 20)")
    p.add_argument("--actors", type=int, default=2, help="simulated robots (default 2)")
    p.add_argument("--config", default=str(ROOT / "configs" / "sim_ur5_reach.yaml"))
    p.add_argument("--period", type=float, default=0.1, help="actor.period_s (default 0.1)")
    p.add_argument("--learn-every", type=float, default=2.0,
                   help="learner.publish_every_s; 0 keeps the learner idle (train.prefill "
                   "beyond reach): no training load")  # fmt: skip
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--logdir", help="where the run writes (default: a temporary directory)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE", help="more config overrides for the run")  # fmt: skip
    return p.parse_args(argv)


def start_run(args: argparse.Namespace, logdir: Path) -> tuple[subprocess.Popen, Path]:
    settings = [*TINY, f"actor.period_s={args.period}"]
    if args.learn_every > 0:
        settings.append(f"learner.publish_every_s={args.learn_every}")
    else:
        settings += ["train.prefill=100000000", "replay.min_size=100000000"]
    log = logdir / "run.log"
    cmd = [sys.executable, "-m", "daydream", "run", "--config", args.config, "--actors",
           str(args.actors), "--steps", "0", "--no-report", "--logdir", str(logdir / "run"),
           "--console", "127.0.0.1:0", "--set", *settings, *args.overrides]  # fmt: skip
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)  # fmt: skip
    return proc, log


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"console_stop: timed out after {timeout} s waiting for {what}")


def fleet(base: str, token: str) -> dict:
    request = urllib.request.Request(base + "api/fleet",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return {r["id"]: r for r in json.loads(response.read())["robots"]}


class Consoles:
    """Reads each robot's supervisor status over its CURVE console (as `daydream teleop`)."""

    def __init__(self, keys: Path, endpoints: dict[str, str]) -> None:
        from daydream.safety.console import ConsoleClient

        self.clients = {r: ConsoleClient(e, keys / "gateway.key_secret", keys / "actor.key", 5.0)
                        for r, e in endpoints.items()}  # fmt: skip

    def status(self, robot: str) -> dict:
        reply = self.clients[robot].status()
        if reply is None:
            raise SystemExit(f"console_stop: {robot}'s console did not answer")
        return reply["status"]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def press(page, consoles: Consoles, robot: str) -> tuple[float, float]:
    """One stop press and reset; (latch - press, page round trip), seconds."""
    card = page.locator(f'article.robot[data-robot="{robot}"]')
    card.locator(".state", has_text="acting").wait_for(timeout=30000)
    card.locator("button.stop").click()
    status = wait_for(lambda: (s := consoles.status(robot))["stopped"] and s, 10, "the latch")
    wait_for(lambda: card.get_attribute("data-stop-confirmed-ms") is not None, 10, "the reply")
    pressed_at = float(card.get_attribute("data-stop-pressed-at")) / 1000.0
    round_trip = float(card.get_attribute("data-stop-confirmed-ms")) / 1000.0
    page.evaluate("card => delete card.dataset.stopConfirmedMs", card.element_handle())
    card.locator("input.reset-name").fill("bench")
    card.locator("button.reset-button").click()
    wait_for(lambda: not consoles.status(robot)["stopped"], 10, "the reset")
    return status["stopped_since"] - pressed_at, round_trip


def report(name: str, values: list[float]) -> None:
    ms = np.asarray(values) * 1e3
    print(f"{name:<28} p50 {np.percentile(ms, 50):7.1f} ms | p99 {np.percentile(ms, 99):7.1f} ms"
          f" | max {ms.max():7.1f} ms | n {ms.size}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright

    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="console_stop_"))
    logdir.mkdir(parents=True, exist_ok=True)
    proc, log = start_run(args, logdir)
    consoles = None
    try:
        url = wait_for(lambda: next((w for line in log.read_text().splitlines()
                                     if "fleet console on " in line for w in line.split()
                                     if w.startswith("http")), None), 120, "the console",
                       poll=0.5)  # fmt: skip
        base, token = url.split("?token=")
        robots = wait_for(lambda: len(r := fleet(base, token)) == args.actors and all(
            x["console"]["reachable"] and x["state"] == "acting" for x in r.values()) and r,
            120, "every robot acting with its console answering", poll=0.5)  # fmt: skip
        consoles = Consoles(logdir / "run" / "keys",
                            {r: x["console"]["endpoint"] for r, x in robots.items()})
        print(f"console_stop: {args.actors} x sim robot, tick {args.period} s, learner "
              f"{'training' if args.learn_every > 0 else 'idle'}, {args.presses} presses, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        latch, trip = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            names = sorted(robots)
            for i in range(args.presses):
                robot = names[i % len(names)]
                a, b = press(page, consoles, robot)
                latch.append(a)
                trip.append(b)
                print(f"press {i + 1:>3} {robot}: latched {a * 1e3:6.1f} ms after the press, "
                      f"confirmed to the page after {b * 1e3:6.1f} ms", flush=True)  # fmt: skip
            browser.close()
        report("press -> latch", latch)
        report("press -> page confirmation", trip)
    finally:
        if consoles is not None:
            consoles.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
