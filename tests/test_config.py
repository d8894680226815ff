"""Configuration: layering, dotted overrides, and typos rejected by name."""

from __future__ import annotations

import pytest

from daydream.config import ConfigError, load_config


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
