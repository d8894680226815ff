"""Robust against poisoned data: one NaN never reaches the weights or a checkpoint, a learner
that keeps going non-finite stops with its own exit status, and what the gateway refused is
shown where a person looks (metrics.jsonl, TensorBoard, the progress line)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import robots
from daydream.agent import checkpoint
from daydream.core.config import load_config
from daydream.core.spaces import record_spaces
from daydream.replay.service import ReplayService
from daydream.replay.store import Replay
from daydream.runtime.learner import EXIT_NONFINITE, Learner, NonFiniteTraining
from daydream.runtime.links import InProcessLink
from tests.tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "pendulum.yaml")
TINY = [
    *tiny_model(units=16), "train.torch_threads=1", "train.batch_size=4", "train.batch_length=8",
    "train.prefill=32", "train.pretrain=12", "learner.max_nonfinite_updates=3",
]  # fmt: skip
CHUNK = 8


def make_config(logdir: Path, *extra: str):
    return load_config(CONFIG, None, [*TINY, f"logdir={logdir}", *extra])


def record_chunks(config, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Plausible records of the config's robot, CHUNK steps each."""
    rng = np.random.default_rng(seed)
    spaces = record_spaces(*robots.spaces(config.robot.name, config))
    chunks = []
    for _ in range(count):
        chunk = {k: np.stack([s.sample(rng) for _ in range(CHUNK)]) for k, s in spaces.items()}
        for flag in ("is_first", "is_last", "is_terminal"):
            chunk[flag][:] = False
        chunk["intervention"][:] = 0.0
        chunks.append(chunk)
    chunks[0]["is_first"][0] = True
    return chunks


def learner_on(config, chunks, samples_per_insert: float = 1.0, stream=None) -> Learner:
    """A Learner over an in-process replay holding ``chunks`` (stored directly, as data was
    stored before the gateway checked values)."""
    replay = ReplayService(capacity=10_000, samples_per_insert=samples_per_insert,
                           min_size=config.replay.min_size)  # fmt: skip
    for seq, chunk in enumerate(chunks):
        replay.add("actor-0", seq, chunk)
    return Learner(config, replay, InProcessLink(replay, "actor-0"), stream=stream)


def metric_lines(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- one bad value


def test_a_nan_reward_in_the_replay_never_reaches_the_weights_nor_the_checkpoint(tmp_path):
    """The incident: one NaN reward in one chunk killed the learner, overwrote the good
    checkpoint with NaN weights, and the restarted learner died again."""
    config = make_config(tmp_path, "learner.max_nonfinite_updates=20")
    chunks = record_chunks(config, 8)
    chunks[5]["reward"][3] = np.nan
    learner = learner_on(config, chunks)
    learner.train_owed()  # 12 pretraining updates, then the owed ones: batches often hold the NaN
    skipped, trained = learner.counters["nonfinite_updates"], learner.agent.updates
    assert 0 < skipped and trained >= 12 - skipped and trained > 0
    learner.close()
    payload = checkpoint.load(tmp_path)
    assert checkpoint.nonfinite(payload) == []
    assert payload["counters"]["nonfinite_updates"] == skipped
    assert metric_lines(tmp_path)[-1]["nonfinite_updates"] == skipped
    again = learner_on(config, chunks)  # the restarted learner resumes and trains on
    assert again.resumed and again.agent.updates == trained
    again.close()


def test_an_update_that_goes_non_finite_is_undone_exactly(tmp_path):
    config = make_config(tmp_path)
    learner = learner_on(config, record_chunks(config, 8))
    agent, guard = learner.agent, learner.guard
    batch = learner.replay.sample(4, 8, counted=False)
    assert guard.train(batch) is not None  # a good update: the optimisers have their moments
    before = {k: v.clone() for k, v in _flat(agent.state_dict()).items()}
    updates = agent.updates
    real_train = agent.train

    def diverging_train(batch):  # an update whose loss and weights go NaN
        metrics = real_train(batch)
        next(agent.wm.parameters()).data.fill_(float("nan"))
        return {**metrics, "wm/loss": float("nan")}

    agent.train = diverging_train
    assert guard.train(batch) is None and guard.in_a_row == 1
    after = _flat(agent.state_dict())
    assert after.keys() == before.keys() and agent.updates == updates
    assert all(torch.equal(after[k], before[k]) for k in before)  # parameters and Adam moments
    agent.train = real_train
    assert guard.train(batch) is not None and guard.in_a_row == 0 and agent.updates == updates + 1
    learner.close()


def _flat(state, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for k, v in items:
        if isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, (dict, list)):
            out.update(_flat(v, f"{prefix}{k}."))
    return out


def test_a_learner_that_keeps_going_non_finite_stops_and_keeps_its_good_checkpoint(tmp_path):
    config = make_config(tmp_path)
    learner = learner_on(config, record_chunks(config, 8))
    learner.train_owed()
    learner.close()
    good = (tmp_path / checkpoint.FILENAME).read_bytes()
    poisoned = record_chunks(config, 8, seed=1)
    for chunk in poisoned:
        chunk["state"][:, 0] = np.inf  # a sensor gone bad, stored before values were checked
    learner = learner_on(config, poisoned, samples_per_insert=0.0)  # resumes, samples freely
    with pytest.raises(NonFiniteTraining, match="3 updates in a row were non-finite"):
        learner.train_owed()
    learner.close()  # as the runtimes do on the way out: no checkpoint is written
    assert (tmp_path / checkpoint.FILENAME).read_bytes() == good
    assert not (tmp_path / checkpoint.PREVIOUS).exists()


# ---------------------------------------------------------------- where a person looks


def test_the_gateway_s_refusals_reach_metrics_tensorboard_and_the_progress_line(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from daydream.wire.gateway import Gateway
    from daydream.wire.transport import TransportClient

    config = make_config(tmp_path)
    replay = ReplayService(capacity=10_000)
    spaces = record_spaces(*robots.spaces(config.robot.name, config))
    gateway = Gateway(replay, "tcp://127.0.0.1:*", curve=False, spaces=spaces)
    gateway.start()
    learner = Learner(config, replay, gateway)
    chunk = record_chunks(config, 1)[0]
    chunk["reward"][2] = np.nan
    with TransportClient(gateway.endpoint, "actor-0", curve=False) as client:
        deadline = time.monotonic() + 10
        while not gateway.stats().get("nacks_sent") and time.monotonic() < deadline:
            client.send_chunk(0, chunk)
            client.poll(50)
    learner.close()  # logs the last figures
    last = metric_lines(tmp_path)[-1]
    assert last["rejected_non_finite"] >= 1 and last["nacks_sent"] >= 1
    out = capsys.readouterr().out
    assert "gateway: refused" in out and "non_finite" in out and "NaN" in out
    assert "| rejected " in out
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "rejected_non_finite" in events.Tags()["scalars"]


# ---------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daydream_learner_exits_with_its_own_status_when_training_keeps_going_non_finite(
    tmp_path,
):
    config = make_config(tmp_path)
    replay = Replay(capacity=10_000, directory=tmp_path / "replay")
    for seq, chunk in enumerate(record_chunks(config, 8)):
        chunk["reward"][:] = np.nan  # stored before the gateway checked values
        replay.add("actor-0", seq, chunk)
    cmd = [sys.executable, "-m", "daydream", "learner", "--config", CONFIG, "--logdir",
           str(tmp_path), "--bind", f"tcp://127.0.0.1:{free_port()}",
           "--set", *TINY, "transport.curve=false", "learner.ray_cpus=1"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == EXIT_NONFINITE, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("daydream learner")]
    assert len(errors) == 1 and "3 updates in a row" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / checkpoint.FILENAME).exists()  # nothing non-finite was written
