"""`daydream train` end to end on a gymnasium task: metrics, checkpoint, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from daydream.core.spaces import ObservationError, Space, step_spaces, validate
from tests.tiny import tiny_model

TINY = [
    *tiny_model(units=16), "train.batch_size=4", "train.batch_length=8", "train.prefill=100",
    "train.pretrain=5", "train.ratio=8", "actor.chunk_length=8",
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
    # 300 records (steps), as the replay counts them: 50 ticks + the last observation per
    # episode, so five whole episodes of 51 records and a 45-record one cut off at the end
    assert len(episodes) == 5 and {e["episode_length"] for e in episodes} == {50}
    assert any("wm/loss" in line for line in lines)
    # the learner's resident memory (what train.keep_freed_memory holds) is logged with updates
    resident = [line["learner_resident_mb"] for line in lines if "updates" in line]
    assert resident and all(100 < mb < 4000 for mb in resident), resident

    second = _train(logdir, 400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 300" in second.stdout
    lines = _lines(logdir)
    assert max(line["step"] for line in lines) == 400
    assert len([line for line in lines if "episode_return" in line]) == 6  # one more whole one
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


@pytest.mark.parametrize(
    "task, figure, short",
    [("sim_ur5_pick", "placements", "ur5.episode_length=40"),
     ("sim_ur5_reach", "final_distance", "ur5.episode_length=40"),
     ("sim_quadruped", "forward_velocity", "quadruped.episode_length=40")],
)  # fmt: skip
def test_train_runs_on_each_simulated_robot_and_logs_its_task_figure(tmp_path, task, figure, short):
    logdir = tmp_path / task
    cmd = [sys.executable, "-m", "daydream", "train", "--config", f"configs/{task}.yaml",
           "--steps", "200", "--logdir", str(logdir), "--set",
           *[o for o in TINY if not o.startswith("gym.")],
           "model.encoder.cnn_depth=4", "model.decoder.cnn_depth=4", short]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _lines(logdir)
    assert max(line["step"] for line in lines) == 200
    assert any("wm/loss" in line for line in lines)
    assert (logdir / "checkpoint.pt").is_file()
    episodes = [line for line in lines if "episode_return" in line]
    assert episodes and all(np.isfinite(line[figure]) for line in episodes)


def stored_layout(directory) -> tuple[set[str], dict]:
    """The streams in a replay directory and the keys, dtypes and shapes of its records."""
    from daydream.replay.store import Replay

    replay = Replay(10**7, directory=directory)
    batch = replay.sample(1, 1)
    return {s for s, _ in replay.keys()}, {k: (v.dtype, v.shape[2:]) for k, v in batch.items()}


def test_train_and_run_write_the_same_replay_layout(tmp_path):
    import robots
    from daydream.core.config import load_config
    from daydream.core.spaces import record_spaces

    assert _train(tmp_path / "train", 120).returncode == 0
    run = subprocess.run(
        [sys.executable, "-m", "daydream", "run", "--config", "configs/pendulum.yaml",
         "--steps", "120", "--logdir", str(tmp_path / "run"), "--set", *TINY,
         "learner.log_every_s=1", "actor.period_s=0.005"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trained = stored_layout(tmp_path / "train" / "replay")
    ran = stored_layout(tmp_path / "run" / "replay")
    assert trained == ran
    streams, layout = trained
    assert streams == {"actor-0"}  # the same stream name: the single process is actor-0 too
    config = load_config("configs/pendulum.yaml", overrides=TINY)
    spaces = record_spaces(*robots.spaces("gym", config))
    assert layout == {k: (s.dtype, s.shape) for k, s in spaces.items()}
    assert "intervention" in layout
