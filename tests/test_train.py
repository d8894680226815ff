"""`daydream train` end to end on a gymnasium task: metrics, checkpoint, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from robots.base import ObservationError, Space, step_spaces, validate
from tests.tiny import tiny_model

TINY = [
    *tiny_model(units=16), "train.batch_size=4", "train.batch_length=8", "train.prefill=100",
    "train.pretrain=5", "train.ratio=8", "train.log_every=100", "replay.chunk_length=8",
    "train.torch_threads=1", "gym.time_limit=50",
]


def _train(logdir, steps, *extra):
    cmd = [sys.executable, "-m", "daydream", "train", "--config", "configs/pendulum.yaml",
           "--steps", str(steps), "--logdir", str(logdir), "--set", *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _lines(logdir):
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_metrics_and_checkpoint_then_resumes(tmp_path):
    logdir = tmp_path / "run"
    first = _train(logdir, 300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "steps/s" in first.stdout  # live progress
    assert (logdir / "checkpoint.pt").is_file()
    assert list((logdir / "tensorboard").iterdir())
    lines = _lines(logdir)
    assert all("step" in line for line in lines)
    episodes = [line for line in lines if "episode_return" in line]
    assert len(episodes) == 6  # 300 steps of 50-step episodes
    assert any("wm/loss" in line for line in lines)

    second = _train(logdir, 400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 300" in second.stdout
    lines = _lines(logdir)
    assert max(line["step"] for line in lines) == 400
    assert len([line for line in lines if "episode_return" in line]) == 8
    updates = [line["updates"] for line in lines if "updates" in line]
    assert updates == sorted(updates) and updates[-1] > updates[0]  # went on, not restarted


def test_resume_refuses_a_different_model(tmp_path):
    logdir = tmp_path / "run"
    assert _train(logdir, 120).returncode == 0
    result = _train(logdir, 200, "model.rssm.deter=24")
    assert result.returncode != 0
    assert "different 'model' config" in result.stderr + result.stdout


def test_config_typo_on_the_command_line_names_the_key(tmp_path):
    result = _train(tmp_path / "run", 10, "train.batch_sise=3")
    assert result.returncode != 0
    assert "train.batch_sise" in result.stderr


def test_observation_that_does_not_match_its_space_is_rejected_with_details():
    spaces = {"image": Space((64, 64, 3), np.uint8), **step_spaces()}
    obs = {"image": np.zeros((64, 48, 3), np.uint8), "reward": np.float32(0),
           "is_first": np.bool_(True), "is_last": np.bool_(False), "is_terminal": np.bool_(False)}
    with pytest.raises(ObservationError, match=r"'image'.*\(64, 48, 3\).*\(64, 64, 3\)"):
        validate(obs, spaces)
    obs["image"] = np.zeros((64, 64, 3), np.float32)
    with pytest.raises(ObservationError, match=r"'image'.*float32.*uint8"):
        validate(obs, spaces)


@pytest.mark.parametrize("algo", ["dreamer", "dreamerv2"])
def test_train_runs_on_images_with_discrete_actions(tmp_path, algo):
    logdir = tmp_path / algo
    result = _train(logdir, 150, "gym.env=CartPole-v1", "gym.obs=image", "gym.image_size=[32,32]",
                    "model.encoder.cnn_depth=4", "model.decoder.cnn_depth=4", f"algo={algo}",
                    "gym.time_limit=30")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _lines(logdir)
    assert any("wm/image_loss" in line for line in lines)
    assert any("episode_return" in line for line in lines)


@pytest.mark.parametrize("task", ["sim_ur5_pick", "sim_ur5_reach", "sim_quadruped"])
def test_train_runs_on_each_simulated_robot(tmp_path, task):
    logdir = tmp_path / task
    cmd = [sys.executable, "-m", "daydream", "train", "--config", f"configs/{task}.yaml",
           "--steps", "200", "--logdir", str(logdir), "--set",
           *[o for o in TINY if not o.startswith("gym.")],
           "model.encoder.cnn_depth=4", "model.decoder.cnn_depth=4"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _lines(logdir)
    assert max(line["step"] for line in lines) == 200
    assert any("wm/loss" in line for line in lines)
    assert (logdir / "checkpoint.pt").is_file()
