"""bench/train_step.py's floor of the reconstruction-free ratios (issue 13, section 4): it times
the encoder over every view an objective encodes and the reconstruction's decoder, and estimates
the lowest ratio with them."""

from __future__ import annotations

import pytest

from tests.benches import load
from tests.tiny import tiny_model

train_step = load("train_step")


def test_the_floor_is_the_reconstruction_update_with_a_second_view_for_its_decoder():
    dreaming = {"mean_cpu_sec_per_encoder": 1.2, "encoder_views": 2}  # 0.6 s a view
    dreamer = {"mean_cpu_sec_per_update": 6.0, "mean_cpu_sec_per_decoder": 1.8}
    # Dreamer's 6 s less its decoder's 1.8 s plus the second view's 0.6 s
    assert train_step.floor(dreaming, dreamer, "mean_cpu_sec") == pytest.approx(4.8 / 6.0)


@pytest.mark.parametrize(
    ("name", "views", "decoder"), [("dreaming", 2, False), ("dreamer", 1, True)]
)
def test_the_bench_times_the_encoder_over_each_view_and_the_decoder(name, views, decoder):
    # the heap setting stays the bench's own process's: not this test process's for its rest
    result = train_step.measure(name, 1, 1, 2, 6, [*tiny_model(), "train.keep_freed_memory=false"])
    assert result["encoder_views"] == views
    assert result["mean_cpu_sec_per_encoder"] > 0
    assert (result["mean_cpu_sec_per_decoder"] > 0) == decoder  # Dreaming's vis decoder: not it
