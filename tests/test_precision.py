"""train.precision: a bfloat16 update computes what the float32 update computes, within
bfloat16's rounding, and keeps distributions, losses and the recurrent state in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daydream.agent.agent import Agent, resolve_precision
from daydream.core.config import load_config
from daydream.core.spaces import Space, step_spaces
from tests.test_algorithms import _fixed_batch
from tests.tiny import tiny_model

OBS = {"state": Space((2,)), "image": Space((16, 16, 3), np.uint8), **step_spaces()}


def _agent(precision: str, discrete: bool = False) -> Agent:
    torch.manual_seed(0)
    config = load_config(None, overrides=[*tiny_model(units=32), f"train.precision={precision}"])
    act = {"action": Space((2,), np.float32, -1.0, 1.0, discrete=discrete)}
    return Agent(OBS, act, config)


@pytest.mark.parametrize("discrete", [False, True])
def test_a_bfloat16_update_agrees_with_the_float32_update_on_a_fixed_batch(discrete):
    batch = _fixed_batch(images=True, rng=np.random.default_rng(0))
    full, half = _agent("float32", discrete), _agent("bfloat16", discrete)
    assert half.precision == torch.bfloat16 and full.precision is None
    assert (half.precision_name, full.precision_name) == ("bfloat16", "float32")  # as printed
    torch.manual_seed(1)
    want = full.train(batch)
    torch.manual_seed(1)  # the same samples, drawn in the same order
    got = half.train(batch)
    for key in ("wm/loss", "wm/kl", "wm/reward_loss", "wm/image_loss", "critic/loss"):
        assert got[key] == pytest.approx(want[key], rel=0.03, abs=1e-3), key
    for a, b in zip(full.wm.parameters(), half.wm.parameters(), strict=True):
        assert b.dtype == torch.float32  # the weights stay float32; only the products round
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)  # one Adam step of lr 1e-4 apart


def test_under_bfloat16_the_distributions_and_the_recurrent_state_are_float32():
    agent = _agent("bfloat16")
    batch = {k: torch.as_tensor(v) for k, v in _fixed_batch(True, np.random.default_rng(0)).items()}
    with agent.autocast():
        embed = agent.wm.encoder({**batch, "image": batch["image"].float() / 255 - 0.5})
        prev = torch.zeros_like(batch["action"])
        post, prior = agent.wm.rssm.observe(embed, prev, batch["is_first"])
        feat = agent.wm.rssm.feat(post)
        reward = agent.wm.reward(feat)
        actor = agent.behavior.actor(feat)
    for value in [*post.values(), *prior.values(), reward, actor.mean, actor.std]:
        assert value.dtype == torch.float32


def test_auto_precision_is_bfloat16_only_where_the_hardware_multiplies_it_natively():
    flags = open("/proc/cpuinfo").read()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    want = torch.bfloat16 if native else None
    assert resolve_precision("auto", torch.device("cpu")) == want
    assert resolve_precision("float32", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("half", torch.device("cpu"))


def test_the_world_models_half_of_an_update_runs_in_the_agents_precision():
    """``Agent.train_world_model`` (what bench/train_step.py times as the world model's update)
    multiplies in bfloat16 as ``Agent.train`` does: the bench once timed it in float32."""
    from daydream.agent.world_model import preprocess, to_torch

    agent = _agent("bfloat16")
    seen: list[torch.dtype] = []
    agent.wm.rssm.cell.linear.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    data = preprocess(to_torch(_fixed_batch(True, np.random.default_rng(0)), agent.device),
                      agent.wm.images)  # fmt: skip
    post, metrics = agent.train_world_model(data, vis=False)
    assert seen and set(seen) == {torch.bfloat16}
    assert np.isfinite(metrics["wm/loss"]) and post["deter"].dtype == torch.float32
