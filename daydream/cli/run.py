"""``daydream run``: the whole system on one machine, the README's main command.

    daydream run --config configs/sim_ur5_pick.yaml --actors 2 --steps 20000 --logdir logdir/ur5
    daydream run ... --console :8080       # and the fleet console web page: every robot, stop

Starts a local Ray instance, the replay actor, the gateway and the learner in this
process, and N simulated robots as ``daydream actor`` subprocesses on loopback (CURVE
keys generated into LOGDIR/keys on the first run; actor logs in LOGDIR/actors/). Stops
after ``--steps`` environment steps from all robots together, or on Ctrl-C / SIGTERM:
robots first (their last chunks acknowledged), then a checkpoint. Rerun to resume.
With ``--console``, every robot runs its safety console on a loopback port of its own and
the learner serves the fleet console page (``daydream/runtime/console_web.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daydream.cli.common import add_config_arguments
    from daydream.cli.learner import add_console_argument

    add_config_arguments(parser, "task file, e.g. configs/sim_ur5_pick.yaml")
    parser.add_argument("--actors", type=int, default=1, help="simulated robots (default 1)")
    parser.add_argument("--robot", help="robot driver for the actors (default: robot.name)")
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="gateway address (loopback)")
    parser.add_argument(
        "--no-report", action="store_true",
        help="do not write `daydream report` output (curves, open-loop video) at the end",
    )  # fmt: skip
    add_console_argument(parser)


def spawn_actor(
    args: argparse.Namespace, config, endpoint: str, key_dir: Path | None, index: int,
    extra: list[str] = (),
) -> tuple[subprocess.Popen, Path]:
    """Start one ``daydream actor`` subprocess in its own session (``extra``: more --set
    overrides); returns it and its log."""
    from daydream.runtime.robot_actor import actor_directory

    actor_id = f"actor-{index}"
    directory = actor_directory(config, actor_id)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "actor.log"
    cmd = [sys.executable, "-m", "daydream", "actor", "--config", args.config,
           "--learner", endpoint, "--id", actor_id, "--logdir", str(config.logdir)]  # fmt: skip
    if args.algo:
        cmd += ["--algo", args.algo]
    cmd += ["--size", config.size]  # the learner's size: auto is resolved once, here
    if args.robot:
        cmd += ["--robot", args.robot]
    if key_dir is not None:
        cmd += ["--keys", str(key_dir)]
    if args.overrides or extra:
        cmd += ["--set", *args.overrides, *extra]
    env = {**os.environ, "DAYDREAM_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return proc, log_path


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def stop_processes(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each process group, wait up to ``grace`` s, then SIGKILL what is left."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _watch(procs: list[tuple[subprocess.Popen, Path]], done: threading.Event) -> None:
    reported: set[int] = set()
    while not done.wait(1.0):
        for i, (p, log_path) in enumerate(procs):
            if p.poll() is not None and i not in reported and not done.is_set():
                reported.add(i)
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                print(
                    f"actor-{i} exited with code {p.returncode}; last lines of {log_path}:\n  "
                    + "\n  ".join(tail),
                    flush=True,
                )


def main(args: argparse.Namespace) -> int:
    from daydream.cli.common import (
        build_config,
        fail,
        start_ray,
        stop_on_signals,
        stop_ray,
        write_run_config,
    )
    from daydream.wire.transport import check_endpoint

    if args.actors < 1:
        fail("run", "--actors must be at least 1")
    try:
        check_endpoint(args.bind, "--bind")
    except ValueError as e:
        fail("run", str(e))
    extra = [f"robot.name={args.robot}"] if args.robot else []
    config = build_config(args, "run", extra + ([f"console.bind={args.console}"]
                                                if args.console else []))  # fmt: skip

    from daydream.agent.checkpoint import CheckpointError
    from daydream.runtime.console_web import console_settings, start_console
    from daydream.runtime.learner import (
        EXIT_CHECKPOINT,
        EXIT_NONFINITE,
        NonFiniteTraining,
        start_learner,
    )
    from daydream.wire.curve import SERVER_NAME, create_keys, key_directory

    logdir = Path(config.logdir).resolve()
    config.logdir = str(logdir)
    write_run_config(config)
    key_dir = None
    if config.transport.curve or config.console.bind:  # the robots' consoles need keys too
        key_dir = key_directory(config.transport.key_dir, logdir).resolve()
        if not (key_dir / f"{SERVER_NAME}.key_secret").is_file():
            create_keys(key_dir, [str(config.transport.client_key)])
            print(f"daydream run: created CURVE keys in {key_dir}", flush=True)
    console_at, actor_sets = None, []
    if config.console.bind:
        try:
            console_at = console_settings(config, config.console.bind)
        except ValueError as e:  # ConsoleAuthError
            fail("run", str(e))
        allow_console_client(key_dir, config.teleop)
        actor_sets = ["teleop.console=tcp://127.0.0.1:*"]  # a loopback port for each robot

    start_ray(config)
    procs: list[tuple[subprocess.Popen, Path]] = []
    done = threading.Event()
    learner = console = None
    status = 0
    try:
        learner = start_learner(config, bind=args.bind)
        stop_on_signals(learner.stop)
        print(
            f"daydream run: {config.algo} on {args.actors} x {config.robot.name}, gateway "
            f"{learner.endpoint}, learner on {learner.agent.device} "
            f"({learner.agent.precision_name}), logdir {logdir}",
            flush=True,
        )
        if console_at is not None:
            try:
                console = start_console(config, learner, *console_at)
            except (RuntimeError, FileNotFoundError) as e:  # a port in use, no key pair
                fail("run", str(e))  # exits 2; the finally below closes what started
            print(f"daydream run: fleet console on {console.login_url}", flush=True)
        for i in range(args.actors):
            procs.append(spawn_actor(args, config, learner.endpoint, key_dir, i, actor_sets))
        threading.Thread(target=_watch, args=(procs, done), daemon=True).start()
        counters = learner.run(close=False)
        print(
            f"daydream run: {counters['env_steps']} environment steps, {counters['updates']} "
            f"updates; stopping the robots",
            flush=True,
        )
    except KeyboardInterrupt:
        print("daydream run: interrupted again; stopping now", flush=True)
    except CheckpointError as e:
        print(f"daydream run: {e}", file=sys.stderr, flush=True)
        status = EXIT_CHECKPOINT
    except NonFiniteTraining as e:
        print(f"daydream run: stopped: {e}", file=sys.stderr, flush=True)
        status = EXIT_NONFINITE
    finally:
        done.set()
        if console is not None:
            console.close()
        stop_processes([p for p, _ in procs], config.actor.shutdown_grace_s + 10.0)
        if learner is not None:
            learner.close()
            if not status:
                print(f"checkpoint in {logdir}; rerun the same command to resume", flush=True)
        stop_ray()
    if learner is not None and not args.no_report and not status:
        _report(logdir)
    return status


def allow_console_client(key_dir: Path, teleop) -> None:
    """Put the workstation's public key (``teleop.client_key``) on the robots' console
    allow-list (``teleop.allowed_dir``), so the fleet console may stop them."""
    allowed = key_dir / teleop.allowed_dir
    target = allowed / f"{teleop.client_key}.key"
    if not target.is_file():
        allowed.mkdir(parents=True, exist_ok=True)
        shutil.copy(key_dir / f"{teleop.client_key}.key", target)


def _report(logdir: Path) -> None:
    """What ``daydream report --logdir LOGDIR`` writes, and where it is."""
    from daydream.runtime.report import write_report

    try:
        written, notes = write_report(logdir)
    except Exception as e:  # noqa: BLE001 - the run itself is saved; say why and how to retry
        print(f"daydream run: the report failed ({e}); retry with daydream report --logdir "
              f"{logdir}", flush=True)  # fmt: skip
        return
    for note in notes:
        print(f"daydream run: report: {note}", flush=True)
    if written:
        print(f"daydream run: report in {written[0].parent}: "
              f"{', '.join(p.name for p in written)}", flush=True)  # fmt: skip
