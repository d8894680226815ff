"""The distributed runtime end to end: `daydream run`, learner restarts, actors that keep ticking.

Tiny models on Pendulum-v1 (vector observations) keep every test to seconds of training;
each process runs in its own process group and is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "pendulum.yaml")
TINY = [
    *tiny_model(units=32), "train.torch_threads=1",
    "train.batch_size=4", "train.batch_length=8", "replay.min_size=64", "train.pretrain=10",
    "learner.publish_every_s=0.5", "learner.log_every_s=2", "learner.checkpoint_every_s=2",
    "actor.chunk_length=8", "actor.period_s=0.01", "actor.status_every_s=0.5",
    "transport.resend_after_s=2", "transport.heartbeat_timeout_ms=2000",
    # these tests hold the simulated robot to a real robot's rule: it never waits for the
    # learner (holding the ratio is tested in test_robot_contract.py)
    "actor.sim_max_lag_steps=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m daydream ARGS`` in its own process group, output to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "daydream", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(predicate, timeout: float, what: str, logs: tuple[Path, ...] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    tails = "\n".join(f"--- {p}\n" + p.read_text(errors="replace")[-3000:] for p in logs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def status(logdir: Path, actor: str) -> dict:
    try:
        return json.loads((logdir / "actors" / actor / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def metrics(logdir: Path) -> list[dict]:
    path = logdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpointed_updates(logdir: Path) -> int:
    path = logdir / "checkpoint.pt"
    return torch.load(path, weights_only=True)["agent"]["updates"] if path.exists() else -1


def stored_chunks(directory: Path) -> tuple[dict[str, list[int]], int]:
    """Sequence numbers of the chunks in a replay directory per stream, and the step count."""
    from daydream.replay.store import Replay

    replay = Replay(10**7, directory=directory)
    out: dict[str, list[tuple[int, int]]] = {}
    for stream, seq in replay.keys():
        out.setdefault(stream, []).append(seq)
    return {k: sorted(v) for k, v in out.items()}, replay.num_steps


# ---------------------------------------------------------------- end to end


def test_daydream_run_two_robots_stream_train_swap_weights_and_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = spawn(
        ["run", "--config", CONFIG, "--actors", "2", "--steps", "900", "--logdir", str(logdir),
         "--set", *TINY],
        log,
    )  # fmt: skip
    try:
        assert proc.wait(timeout=150) == 0, log.read_text()[-3000:]
    finally:
        kill(proc)
    text = log.read_text()
    # training happened and was logged (JSON lines + TensorBoard) with a progress line
    rows = metrics(logdir)
    updates = max(r.get("updates", 0) for r in rows)
    assert updates > 0, text[-2000:]
    assert any("episode_return" in r for r in rows), "actors' episode returns reach the learner"
    assert any("wm/loss" in r for r in rows)
    assert list((logdir / "tensorboard").glob("events.*"))
    assert "upd/s" in text and "replay" in text
    # a resumable checkpoint with the trained agent and counters
    payload = torch.load(logdir / "checkpoint.pt", weights_only=True)
    assert payload["counters"]["updates"] == payload["agent"]["updates"] > 0
    # both robots' chunks are in the replay files, and every one was acknowledged
    streams, steps = stored_chunks(logdir / "replay")
    assert set(streams) == {"actor-0", "actor-1"}
    assert steps >= 900
    for actor in ("actor-0", "actor-1"):
        st = status(logdir, actor)
        seqs = streams[actor]
        assert seqs == list(range(len(seqs))), f"{actor}: gaps or duplicates in {seqs}"
        assert st["outbox"]["pending"] == 0 and st["outbox"]["acked"] == len(seqs)
        # each robot swapped weights in more than once: from its first to a newer version
        assert st["swaps"] >= 2, st
        assert st["policy_version"] > 0
    # nothing lost, nothing twice: the replay holds exactly the steps the robots recorded
    assert steps == sum(status(logdir, a)["records"] for a in ("actor-0", "actor-1"))
    assert "acting with weights version" in (logdir / "actors/actor-0/actor.log").read_text()


# ---------------------------------------------------------------- restart, outage, tick rate


def test_learner_sigkill_restart_resumes_while_the_actor_keeps_its_tick_rate(tmp_path):
    """SIGKILL the learner mid-run: the actor keeps ticking at its rate with the weights it
    has, its chunks wait in the outbox; a new learner on the same logdir resumes from the
    checkpoint and the replay files, and every chunk ends up stored exactly once."""
    from daydream.wire.curve import create_keys

    logdir, keys = tmp_path / "run", tmp_path / "keys"
    create_keys(keys, ["actor"])
    port = free_port()
    learner_args = ["learner", "--config", CONFIG, "--bind", f"tcp://127.0.0.1:{port}",
                    "--logdir", str(logdir), "--keys", str(keys), "--steps", "100000",
                    "--set", *TINY]  # fmt: skip
    llog1, llog2, alog = tmp_path / "learner1.log", tmp_path / "learner2.log", tmp_path / "a.log"
    actor = learner = None
    try:
        learner = spawn(learner_args, llog1)
        actor = spawn(
            ["actor", "--config", CONFIG, "--learner", f"tcp://127.0.0.1:{port}", "--id", "arm",
             "--keys", str(keys), "--logdir", str(logdir), "--set", *TINY],
            alog,
        )  # fmt: skip
        logs = (llog1, alog)
        first = wait_for(
            lambda: (status(logdir, "arm").get("policy_version", -1) > 0
                     and checkpointed_updates(logdir) > 0 and status(logdir, "arm")),
            90, "the actor acting with learned weights and a checkpoint of them", logs,
        )  # fmt: skip
        before_kill = status(logdir, "arm")
        kill(learner, signal.SIGKILL)
        saved = torch.load(logdir / "checkpoint.pt", weights_only=True)
        assert saved["agent"]["updates"] > 0
        # learner gone: the control loop keeps its rate, experience piles up in the outbox
        time.sleep(4.0)
        during = status(logdir, "arm")
        # actor.period_s = 0.01 s: a loop blocked on the dead learner would make almost no steps;
        # half the nominal 100 Hz leaves room for a loaded 2-core CI machine.
        rate = (during["steps"] - before_kill["steps"]) / (during["time"] - before_kill["time"])
        assert rate > 0.5 * 100, (before_kill, during)
        assert during["outbox"]["pending"] > 0
        assert during["policy_version"] >= first["policy_version"]  # keeps acting with them

        learner = spawn(learner_args, llog2)
        logs = (llog2, alog)
        wait_for(lambda: "resumed from" in llog2.read_text(), 60, "the resume message", logs)
        resumed_at = int(llog2.read_text().split(", update ")[1].split(",")[0])
        assert resumed_at == saved["agent"]["updates"]
        # the outbox drains into the new learner's replay, and training goes on past it
        wait_for(lambda: status(logdir, "arm")["outbox"]["pending"] == 0
                 and status(logdir, "arm")["policy_version"] > resumed_at,
                 90, "resent chunks acknowledged and newer weights", logs)  # fmt: skip
        kill(actor, signal.SIGTERM)
        final = json.loads((logdir / "actors/arm/status.json").read_text())
        kill(learner, signal.SIGTERM)
        assert learner.returncode == 0, llog2.read_text()[-2000:]
    finally:
        for p in (actor, learner):
            if p is not None:
                kill(p)
    # every chunk the actor produced is stored exactly once, across the outage
    streams, steps = stored_chunks(logdir / "replay")
    assert streams["arm"] == list(range(len(streams["arm"])))
    assert final["outbox"]["pending"] == 0
    assert steps == final["records"]
    rows = metrics(logdir)
    assert max(r.get("updates", 0) for r in rows) > resumed_at


# ---------------------------------------------------------------- in-process pieces


def _tiny_config(tmp_path, *extra):
    from daydream.core.config import load_config

    return load_config(CONFIG, overrides=[*TINY, f"logdir={tmp_path}", *extra])


def test_actor_without_a_learner_keeps_its_tick_rate_and_keeps_the_chunks(tmp_path):
    from daydream.runtime.robot_actor import RobotActor
    from daydream.wire.curve import create_keys

    create_keys(tmp_path / "keys", ["actor"])
    config = _tiny_config(tmp_path, "actor.shutdown_grace_s=0.2")
    actor = RobotActor.networked(config, f"tcp://127.0.0.1:{free_port()}", "lonely", max_steps=300)
    t0 = time.monotonic()
    result = actor.run()
    elapsed = time.monotonic() - t0
    assert result["steps"] == 300
    assert elapsed < 300 * 0.01 * 1.5 + 1.0, f"300 ticks of 10 ms took {elapsed:.2f} s"
    assert result["policy_version"] == -1  # random policy: no weights ever arrived
    assert result["outbox"]["pending"] == result["records"] // 8 + (result["records"] % 8 > 0)
    assert result["outbox"]["acked"] == 0


def test_an_actor_says_when_no_learner_answers(tmp_path, caplog):
    from daydream.runtime.robot_actor import RobotActor
    from daydream.wire.curve import create_keys

    create_keys(tmp_path / "keys", ["actor"])
    quick = ["actor.learner_silence_warn_s=0.3", "actor.status_every_s=0.2"]
    config = _tiny_config(tmp_path, "actor.shutdown_grace_s=0.2", *quick)
    address = f"tcp://127.0.0.1:{free_port()}"
    actor = RobotActor.networked(config, address, "lonely", max_steps=100)
    with caplog.at_level("WARNING", logger="daydream"):
        actor.run()
    said = [r.getMessage() for r in caplog.records]
    said = [m for m in said if "no answer from the learner" in m]
    assert len(said) == 1 and address in said[0]
    status = json.loads((actor.directory / "status.json").read_text())
    assert status["learner_silent_s"] > 0.3


def test_weights_load_into_the_spare_copy_and_swap_in_by_reference():
    import robots
    from daydream.agent.agent import Agent
    from daydream.core.config import load_config
    from daydream.runtime.robot_actor import PolicySlots

    config = load_config(CONFIG, overrides=TINY)
    obs_space, act_space = robots.spaces(config.robot.name, config)
    slots = PolicySlots(lambda: Agent(obs_space, act_space, config, device="cpu"))
    assert slots.current() == (None, False)  # random policy until weights arrive
    learner = Agent(obs_space, act_space, config, device="cpu")
    w1 = learner.policy_weights()
    w1.version = 1
    slots.stage(w1)
    first, swapped = slots.current()
    assert swapped and slots.version == 1
    assert slots.current() == (first, False)
    acting = {k: v.clone() for k, v in first.behavior.actor.state_dict().items()}

    for p in learner.behavior.actor.parameters():
        p.data.add_(1.0)
    w2 = learner.policy_weights()
    w2.version = 2
    done = threading.Event()
    threading.Thread(target=lambda: (slots.stage(w2), done.set())).start()
    assert done.wait(30)
    # staging never wrote into the copy that is acting
    for k, v in first.behavior.actor.state_dict().items():
        assert torch.equal(v, acting[k])
    second, swapped = slots.current()
    assert swapped and second is not first and slots.version == 2
    for k, v in second.behavior.actor.state_dict().items():
        assert np.allclose(v.numpy(), w2.arrays[f"actor.{k}"])


@pytest.mark.parametrize("verb", ["run", "learner", "actor"])
def test_runtime_verbs_are_registered_with_help(verb):
    out = subprocess.run(
        [sys.executable, "-m", "daydream", verb, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--config" in out.stdout


def test_a_latched_stop_is_persisted_and_a_restarted_actor_starts_stopped(tmp_path):
    from daydream.runtime.robot_actor import LATCH_FILENAME, RobotActor
    from daydream.wire.curve import create_keys

    create_keys(tmp_path / "keys", ["actor"])
    config = _tiny_config(tmp_path, "actor.shutdown_grace_s=0.2")
    address = f"tcp://127.0.0.1:{free_port()}"
    actor = RobotActor.networked(config, address, "arm", max_steps=10_000)
    runner = threading.Thread(target=actor.run)
    runner.start()
    try:
        deadline = time.time() + 30
        while actor.steps < 5 and time.time() < deadline:
            time.sleep(0.01)
        actor.sup.request_stop("keyboard", reason="person pressed stop")
    finally:
        actor.stop()
        runner.join(timeout=30)
    assert actor.status()["safety_stopped"]
    latch = actor.directory / LATCH_FILENAME
    assert latch.is_file()

    again = RobotActor.networked(config, address, "arm", max_steps=10_000)
    runner = threading.Thread(target=again.run)
    runner.start()
    try:
        time.sleep(1.0)
        assert again.sup is not None and again.sup.stopped
        assert again.steps == 0  # nothing was commanded after the restart
    finally:
        again.stop()
        runner.join(timeout=30)
    assert latch.is_file()  # still latched: only a person's reset removes it
