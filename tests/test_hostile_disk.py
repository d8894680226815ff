"""Robust against its own disk: checkpoints that cannot be read fall back to the previous one,
none is ever written non-finite, and what the replay finds wrong with its files reaches the
learner's console (the replay's own log stays in its Ray process)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daydream.agent import checkpoint
from daydream.agent.checkpoint import CheckpointError, NonFiniteError
from daydream.replay.service import ReplayService
from daydream.replay.store import Replay
from daydream.runtime.learner import EXIT_CHECKPOINT, EXIT_NONFINITE, Learner
from daydream.runtime.links import InProcessLink
from tests.test_hostile_learner import CONFIG, REPO, TINY, free_port, make_config, record_chunks

UNIT = REPO / "deploy" / "systemd" / "daydream-learner.service"


def payload(value: float, **counters) -> dict:
    return {"agent": {"w": torch.full((3,), value)}, "counters": counters}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short


def test_a_checkpoint_with_non_finite_tensors_is_never_written(tmp_path):
    good = checkpoint.save(tmp_path, payload(1.0))
    before = good.read_bytes()
    with pytest.raises(NonFiniteError, match=r"agent\.w.*last good checkpoint is kept"):
        checkpoint.save(tmp_path, payload(float("nan")))
    assert good.read_bytes() == before and not (tmp_path / checkpoint.PREVIOUS).exists()


def test_saving_keeps_the_checkpoint_it_replaces_as_the_previous_one(tmp_path):
    checkpoint.save(tmp_path, payload(1.0))
    checkpoint.save(tmp_path, payload(2.0))
    assert checkpoint.load(tmp_path / checkpoint.FILENAME)["agent"]["w"][0] == 2.0
    assert checkpoint.load(tmp_path / checkpoint.PREVIOUS)["agent"]["w"][0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.PREVIOUS, checkpoint.FILENAME]


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_naming_both(tmp_path, capsys):
    """The incident: a truncated checkpoint.pt made the learner exit with torch's zip error
    and no path; under the unit it restarted every 15 s."""
    config = make_config(tmp_path)
    first = Learner(config, ReplayService(capacity=100), InProcessLink(ReplayService(100), "a"))
    first.save()
    first.counters["env_steps"] = 777
    first.save()  # the newest; the first becomes checkpoint.prev.pt
    first.close()
    newest = tmp_path / checkpoint.FILENAME
    truncate(newest)
    learner = Learner(config, ReplayService(capacity=100), InProcessLink(ReplayService(100), "a"))
    out = capsys.readouterr().out
    assert learner.resumed and learner.counters["env_steps"] == 777  # the previous checkpoint
    line = next(line for line in out.splitlines() if "falling back" in line)
    assert str(newest) in line and str(tmp_path / checkpoint.PREVIOUS) in line
    assert (tmp_path / "checkpoint.pt.corrupt").exists()  # kept for a person to look at
    learner.close()  # writes a new checkpoint.pt; the good previous one stays the previous
    assert checkpoint.load(tmp_path / checkpoint.PREVIOUS)["counters"]["env_steps"] == 777


def test_a_checkpoint_with_nan_weights_is_not_resumed_from(tmp_path, capsys):
    config = make_config(tmp_path)
    learner = Learner(config, ReplayService(100), InProcessLink(ReplayService(100), "a"))
    learner.close()
    state = checkpoint.load(tmp_path)
    next(iter(state["agent"]["world_model"].values())).fill_(float("nan"))
    torch.save(state, tmp_path / checkpoint.FILENAME)  # as an older release may have written
    with pytest.raises(CheckpointError, match="non-finite"):
        checkpoint.load_for_resume(tmp_path, config)  # no previous one to fall back to


def test_with_neither_checkpoint_loadable_the_error_names_the_files(tmp_path):
    config = make_config(tmp_path)
    for name in (checkpoint.FILENAME, checkpoint.PREVIOUS):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_for_resume(tmp_path, config)
    message = str(info.value)
    assert "\n" not in message and "cannot be read" in message
    assert str(tmp_path / checkpoint.FILENAME) in message
    assert str(tmp_path / checkpoint.PREVIOUS) in message


def test_daydream_learner_exits_with_a_status_its_unit_does_not_restart_on(tmp_path):
    checkpoint.save(tmp_path, payload(1.0))
    truncate(tmp_path / checkpoint.FILENAME)
    cmd = [sys.executable, "-m", "daydream", "learner", "--config", CONFIG, "--logdir",
           str(tmp_path), "--bind", f"tcp://127.0.0.1:{free_port()}",
           "--set", *TINY, "transport.curve=false", "learner.ray_cpus=1"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == EXIT_CHECKPOINT, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("daydream learner")]
    assert str(tmp_path / checkpoint.FILENAME) in line and "cannot be read" in line
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    prevented = unit["Service"]["RestartPreventExitStatus"].split()
    assert {"2", str(EXIT_NONFINITE), str(EXIT_CHECKPOINT)} <= set(prevented)


# ---------------------------------------------------------------- replay warnings


def test_the_replay_s_warnings_reach_the_learner_s_console(tmp_path, capsys):
    config = make_config(tmp_path)
    directory = tmp_path / "replay"
    replay = Replay(capacity=10_000, directory=directory)
    replay.add_batch([("actor-0", s, c) for s, c in enumerate(record_chunks(config, 3))])
    (path,) = directory.glob("*.chunk")
    truncate(path)
    service = ReplayService(capacity=10_000, directory=directory)
    learner = Learner(config, service, InProcessLink(service, "actor-0"))
    out = capsys.readouterr().out
    assert f"replay: {path} is torn or corrupt" in out
    learner.close()
    assert "torn" not in capsys.readouterr().out  # said once


def test_the_ray_replay_hands_its_warnings_to_the_learner(ray_session, tmp_path):
    from daydream.replay.remote import RemoteReplay

    config = make_config(tmp_path)
    Replay(capacity=100, directory=tmp_path).add("a", 0, record_chunks(config, 1)[0])
    (path,) = tmp_path.glob("*.chunk")
    path.write_bytes(b"")
    replay = RemoteReplay.start(capacity=100, directory=str(tmp_path))
    try:
        assert replay.pop_warnings() == [f"{path} is empty; ignored"]
        assert replay.pop_warnings() == []
    finally:
        replay.close()
