"""Configuration: layering, dotted overrides, and typos rejected by name."""

from __future__ import annotations

import pytest

from daydream.core.config import ConfigError, load_config


def test_defaults_then_algo_then_task_then_overrides():
    config = load_config("configs/pendulum.yaml", algo="dreamer",
                         overrides=["model.rssm.deter=256", "model.opt.lr=3e-4"])
    assert config.algo == "dreamer"
    assert config.model.rssm.latent == "gaussian"  # from configs/algo/dreamer.yaml
    assert config.train.steps == 20000  # from the task file
    assert config.model.rssm.deter == 256  # override beats the preset and the task
    assert config.model.opt.lr == pytest.approx(3e-4)  # "3e-4" is a number, not a string
    assert config.behavior.horizon == 15  # untouched default


def test_algorithm_comes_from_the_task_file_when_not_given(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("algo: dreamer\n")
    assert load_config(task).model.rssm.latent == "gaussian"
    assert load_config(task, algo="dreamerv2").model.rssm.latent == "categorical"


def test_typo_in_an_override_is_rejected_with_the_key_named():
    with pytest.raises(ConfigError, match="model.rssm.detr"):
        load_config("configs/pendulum.yaml", overrides=["model.rssm.detr=256"])


def test_typo_in_a_task_file_is_rejected_with_the_key_named(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("train:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError, match="train.batch_sise"):
        load_config(task)


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(ConfigError, match="dreamerv2"):
        load_config(None, algo="dreamerv9")


def test_override_without_equals_says_how():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, overrides=["model.rssm.deter"])


# ---------------------------------------------------------------- types: defaults are the schema
@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.steps=abc", "train.steps", "an int"),
        ("safety.watchdog_deadline_s=fast", "safety.watchdog_deadline_s", "a number"),
        ("model.rssm.deter=1.5", "model.rssm.deter", "an int"),
        ("transport.curve=maybe", "transport.curve", "true or false"),
        ("ur5.workspace.low=0.3", "ur5.workspace.low", "a list of numbers"),
        ("robot=5", "robot", "a block of keys"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_key_value_and_type(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config("configs/pendulum.yaml", overrides=[override])
    message = str(info.value)
    assert "\n" not in message
    value = override.split("=", 1)[1]
    assert key in message and value in message and expected in message, message


def test_a_wrong_type_in_a_task_file_names_the_file(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("train:\n  batch_size: sixteen\n")
    with pytest.raises(ConfigError, match=rf"train.batch_size: 'sixteen' is not an int \({task}"):
        load_config(task)


def test_values_are_converted_to_the_defaults_types():
    config = load_config(None, overrides=["train.steps=1e5", "model.opt.lr=1", "seed=3"])
    assert config.train.steps == 100000 and isinstance(config.train.steps, int)
    assert config.model.opt.lr == 1.0 and isinstance(config.model.opt.lr, float)


def test_derived_values_follow_their_source_unless_set_on_purpose():
    config = load_config(None, overrides=["train.ratio=64", "train.prefill=300"])
    assert config.replay.samples_per_insert == 64 and config.replay.min_size == 300
    config = load_config(None, overrides=["train.ratio=64", "replay.samples_per_insert=0"])
    assert config.replay.samples_per_insert == 0  # the limiter switched off on purpose


VERBS = {  # the arguments each verb needs besides --config and --set
    "train": ["--logdir", "{logdir}"],
    "run": ["--logdir", "{logdir}"],
    "learner": ["--logdir", "{logdir}"],
    "actor": ["--logdir", "{logdir}", "--learner", "tcp://127.0.0.1:1"],
    "drive": [],
    "teleop": ["--robot", "tcp://127.0.0.1:1"],
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_refuses_a_bad_value_in_one_line_before_starting_or_writing(verb, tmp_path):
    import subprocess
    import sys

    logdir = tmp_path / "never"
    args = [a.format(logdir=logdir) for a in VERBS[verb]]
    result = subprocess.run(
        [sys.executable, "-m", "daydream", verb, "--config", "configs/pendulum.yaml", *args,
         "--set", "safety.watchdog_deadline_s=fast"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"daydream {verb}: config key safety.watchdog_deadline_s: 'fast' is not a number "
        "(--set overrides)"
    ], result.stderr
    assert not logdir.exists()  # nothing written, nothing started


def test_set_is_repeatable_and_every_value_is_kept(tmp_path):
    import argparse

    from daydream.cli import train
    from daydream.cli.common import build_config

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--config", "configs/pendulum.yaml", "--set", "train.steps=7",
                              "--set", "seed=3", "model.rssm.deter=8"])  # fmt: skip
    config = build_config(args, "train")
    assert (config.train.steps, config.seed, config.model.rssm.deter) == (7, 3, 8)


# ---------------------------------------------------------------- sizes
def test_a_size_preset_applies_after_the_algorithm_and_the_tasks_size_block_after_the_task():
    small = load_config("configs/sim_ur5_reach.yaml", auto_size="small")
    big = load_config("configs/sim_ur5_reach.yaml", auto_size="daydreamer")
    assert (small.size, big.size) == ("small", "daydreamer")
    assert small.model.rssm.deter == 128 and small.model.encoder.mlp_units == 128
    assert big.model.rssm.deter == 512 and big.model.encoder.mlp_units == 512  # the UR5's RSSM
    assert big.train.prefill == 2000 and big.replay.min_size == 2000  # from sizes.daydreamer
    quad = load_config("configs/sim_quadruped.yaml", auto_size="daydreamer")
    assert quad.model.rssm.deter == 256  # DayDreamer's A1
    asked = load_config("configs/sim_ur5_reach.yaml", overrides=["size=daydreamer"],
                        auto_size="small")  # fmt: skip
    assert asked.size == "daydreamer"  # auto only decides when nobody asked


def test_an_unknown_size_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown size 'huge'; known: daydreamer, small"):
        load_config(None, overrides=["size=huge"])


def test_a_typo_in_a_tasks_size_block_is_named(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("sizes:\n  small:\n    train: {bach_size: 8}\n")
    with pytest.raises(ConfigError, match="train.bach_size"):
        load_config(task, auto_size="small")


def test_the_command_line_picks_small_on_a_cpu_and_says_why(capsys):
    import argparse

    from daydream.cli import train
    from daydream.cli.common import build_config

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    config = build_config(parser.parse_args(["--config", "configs/sim_ur5_reach.yaml",
                                             "--set", "device=cpu"]), "train")  # fmt: skip
    assert config.size == "small"
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("daydream train: size small (auto: device is cpu")


@pytest.mark.parametrize(
    "verb, flag, args",
    [("actor", "--learner", ["--logdir", "{logdir}"]),
     ("learner", "--bind", ["--logdir", "{logdir}"]),
     ("run", "--bind", ["--logdir", "{logdir}"]),
     ("teleop", "--robot", [])],
)  # fmt: skip
@pytest.mark.parametrize("endpoint", ["nonsense:5555", "tcp://host", "tcp://host:99999"])
def test_a_bad_endpoint_is_one_line_before_anything_starts(verb, flag, args, endpoint, tmp_path):
    import subprocess
    import sys

    logdir = tmp_path / "never"
    result = subprocess.run(
        [sys.executable, "-m", "daydream", verb, "--config", "configs/pendulum.yaml",
         *[a.format(logdir=logdir) for a in args], flag, endpoint],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"daydream {verb}: {flag} '{endpoint}'")
    assert not logdir.exists()


def test_endpoints_the_system_uses_are_accepted():
    from daydream.wire.transport import check_endpoint

    for ok in ("tcp://*:5555", "tcp://127.0.0.1:*", "tcp://ws-1.lab:5555", "tcp://[::1]:5555",
               "ipc:///tmp/daydream.sock"):  # fmt: skip
        assert check_endpoint(ok) == ok


def test_a_config_saved_before_a_key_existed_loads_with_that_keys_default():
    from daydream.core.config import from_dict, to_dict

    saved = to_dict(load_config("configs/sim_ur5_reach.yaml", overrides=["train.ratio=99"]))
    for key in ("backend", "onnx_precision"):  # as a checkpoint of an older daydream has it
        saved["actor"].pop(key)
    config = from_dict(saved)
    assert (config.actor.backend, config.actor.onnx_precision) == ("torch", "float32")
    assert config.train.ratio == 99 and config.ur5.task == "reach"  # what it saved stays
    with pytest.raises(Exception, match="no_such_key"):
        _ = config.train.no_such_key  # still strict
