"""`daydream report`: readable open-loop videos and learning-curve plots for a short run."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from daydream.cli import main
from tests.tiny import tiny_model

torch.set_num_threads(1)

TINY = [
    *tiny_model(units=32, stoch=8, classes=32),
    "train.batch_size=4", "train.batch_length=12", "train.prefill=100", "train.pretrain=5",
    "train.ratio=8", "train.torch_threads=1", "replay.min_size=50",
]


def short_run(logdir: Path, config: str, algo: str, extra: list[str] = ()) -> None:
    args = ["train", "--config", config, "--algo", algo, "--steps", "200", "--logdir", str(logdir)]
    assert main([*args, "--set", *TINY, *extra]) == 0


def printed_paths(out: str) -> list[Path]:
    return [Path(line) for line in out.splitlines() if line and not line.startswith("note")]


@pytest.mark.parametrize("algo", ["dreaming", "dreamer"])
def test_report_writes_a_readable_video_and_plots_for_a_short_run(algo, tmp_path, capsys):
    logdir = tmp_path / "run"
    short_run(logdir, "configs/sim_ur5_reach_pixels.yaml", algo, ["ur5.episode_length=40"])
    capsys.readouterr()
    replay_dir = logdir / "replay"  # as a learner still training leaves it: a write in flight
    (replay_dir / ".000000999999.chunk.4242.tmp").write_bytes(b"partial")
    before = {p.name: p.read_bytes() for p in replay_dir.iterdir()}
    code = main(["report", "--logdir", str(logdir), "--sequences", "3", "--length", "20"])
    assert code == 0
    assert {p.name: p.read_bytes() for p in replay_dir.iterdir()} == before
    paths = printed_paths(capsys.readouterr().out)
    videos = [p for p in paths if p.suffix == ".gif"]
    plots = [p for p in paths if p.suffix == ".png"]
    assert [p.name for p in videos] == ["openloop_image.gif"]
    frames = imageio.mimread(videos[0])
    assert len(frames) == 20  # one frame per step: 5 context frames, then 15 imagined
    assert np.asarray(frames[0]).shape[:2] == (3 * 64, 3 * 64)  # rows truth/pred/error x 3 seqs
    assert {p.name for p in plots} >= {"returns.png", "world_model.png"}
    for plot in plots:
        image = imageio.imread(plot)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize("config", ["configs/pendulum.yaml", "configs/sim_ur5_reach.yaml"])
def test_report_on_a_vector_only_task_plots_the_open_loop_vectors(config, tmp_path, capsys):
    logdir = tmp_path / "vectors"
    short_run(logdir, config, "dreamer", ["ur5.episode_length=40"])
    capsys.readouterr()
    assert main(["report", "--logdir", str(logdir), "--length", "20"]) == 0
    paths = printed_paths(capsys.readouterr().out)
    assert paths and all(p.suffix == ".png" and p.is_file() for p in paths)
    assert "openloop_vectors.png" in {p.name for p in paths}
