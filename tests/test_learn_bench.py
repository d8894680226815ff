"""The pure parts of bench/learn.py and bench/baseline.py: rows every 1,000 steps, success
figures per task, reading a metrics.jsonl that is being written, the ``daydream run`` command."""

from __future__ import annotations

import json

import pytest

from daydream.core.config import load_config
from tests.benches import load

learn = load("learn")


def episode(step: int, ret: float, **figures) -> dict:
    return {"step": step, "episode_return": ret, "episode_length": 50, **figures}


def test_a_row_every_1000_steps_holds_the_mean_of_the_last_10_returns():
    curve = learn.Curve("")
    for i in range(30):  # an episode every 100 steps, returns 0, 1, 2, ...
        curve.add(episode(100 * (i + 1), float(i)))
    rows = curve.due()
    assert [r["step"] for r in rows] == [1000, 2000]  # 3000 is not past until a later line
    assert rows[0]["return"] == pytest.approx(sum(range(10)) / 10)
    assert rows[1]["return"] == pytest.approx(sum(range(10, 20)) / 10)
    assert [r["episodes"] for r in rows] == [10, 20]
    assert curve.due() == []  # each row once
    curve.add({"step": 3001})
    assert [r["step"] for r in curve.due()] == [3000]


def test_the_last_rows_come_when_the_run_is_over():
    curve = learn.Curve("")
    curve.add(episode(1000, -5.0))
    assert curve.due() == []  # episodes logged at step 1000 may still follow
    assert [(r["step"], r["return"]) for r in curve.due(final=True)] == [(1000, -5.0)]


def test_reach_success_is_the_final_distance_and_the_fraction_within_2_cm():
    episodes = [episode(50, -1.0, final_distance=d) for d in (0.01, 0.03, 0.015, 0.10)]
    cm, within = learn.success("reach", episodes)
    assert cm == pytest.approx(100 * (0.01 + 0.03 + 0.015 + 0.10) / 4)
    assert within == pytest.approx(0.5)


def test_walk_and_pick_place_success_figures():
    walk = [episode(1000, 500.0, forward_velocity=v) for v in (0.1, 0.3)]
    assert learn.success("walk", walk) == [pytest.approx(0.2)]
    placed = [{**episode(100, 10.0, placements=p), "episode_length": 100} for p in (1.0, 0.0, 2.0)]
    assert learn.success("pick_place", placed) == [pytest.approx(1000 * 3 / 300)]


def test_episodes_without_task_figures_show_none_and_a_row_prints_a_dash():
    assert learn.success("reach", [episode(50, -10.0)]) == [None, None]
    curve = learn.Curve("reach")
    curve.add(episode(1000, -10.0))
    (row,) = curve.due(final=True)
    line = learn.format_row("reach", row, wall_s=None)
    assert line.split() == ["1000", "-10.00", "1", "-", "-", "-"]
    assert len(line) == len(learn.header("reach"))


def test_the_task_of_a_config_picks_its_success_figure():
    assert learn.task_of(load_config("configs/sim_ur5_reach.yaml")) == "reach"
    assert learn.task_of(load_config("configs/sim_ur5_pick.yaml")) == "pick_place"
    assert learn.task_of(load_config("configs/sim_quadruped.yaml")) == "walk"
    assert learn.task_of(load_config("configs/pendulum.yaml")) == ""


def test_metrics_are_read_as_they_are_written_a_partial_line_waits(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = learn.MetricsTail(path)
    assert tail.read() == []  # not there yet
    first = json.dumps(episode(50, -3.0))
    path.write_text(first + "\n" + first[:10])
    assert tail.read() == [episode(50, -3.0)]
    with open(path, "a") as f:
        f.write(first[10:] + "\n")
    assert tail.read() == [episode(50, -3.0)]


def test_runtime_run_spawns_daydream_run_with_the_actors_steps_logdir_and_overrides():
    args = learn.parse_args(
        ["--runtime", "run", "--task", "configs/sim_ur5_reach.yaml", "--steps", "10000",
         "--set", "device=cpu", "--set", "train.ratio=64"]
    )  # fmt: skip
    cmd = learn.run_command(args, "/tmp/D")
    assert cmd[1:4] == ["-m", "daydream", "run"]
    flags = " ".join(cmd[4:])
    assert "--config configs/sim_ur5_reach.yaml" in flags and "--actors 2" in flags
    assert "--steps 10000" in flags and "--logdir /tmp/D" in flags
    assert cmd[-3:] == ["--set", "device=cpu", "train.ratio=64"]


def test_the_first_lines_say_which_size_runs_and_why_as_daydream_run_does(capsys):
    args = learn.parse_args(["--task", "configs/sim_ur5_reach.yaml", "--set", "device=cpu"])
    config = learn.build_run_config(args, "/tmp/D")
    assert "size small (auto: device is cpu" in capsys.readouterr().out
    line = learn.describe(config)
    assert line.startswith("size small: RSSM deter 128")
    assert "batch 16 x 32" in line and "ratio 128" in line and "prefill 1000" in line
    assert line.endswith("precision auto, compiled")  # the main job's small size
    asked = learn.parse_args(["--task", "configs/sim_ur5_reach.yaml", "--size", "daydreamer"])
    assert "deter 512" in learn.describe(learn.build_run_config(asked, "/tmp/D"))
    assert learn.run_command(asked, "/tmp/D")[-2:] == ["--size", "daydreamer"]


def test_the_baseline_sees_the_observation_keys_the_world_model_would():
    import robots

    baseline = load("baseline")
    config = load_config("configs/sim_ur5_reach_pixels.yaml")
    obs_space, _ = robots.spaces("sim_ur5", config)
    assert set(baseline.model_keys(obs_space, config.model)) == {
        "image", "tcp_pose", "joints", "gripper",
    }  # fmt: skip
    vectors = load_config("configs/sim_ur5_reach.yaml")
    obs_space, _ = robots.spaces("sim_ur5", vectors)
    assert set(baseline.model_keys(obs_space, vectors.model)) == {
        "tcp_pose", "joints", "gripper", "target",
    }  # fmt: skip
