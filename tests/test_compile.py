"""train.compile: the compiled update computes what the eager update computes, and what leaves
the learner (the ONNX export, the robot's policy) is eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from daydream.agent.agent import Agent
from daydream.agent.compiled import eager_copy
from daydream.core.config import load_config
from daydream.core.spaces import Space, step_spaces
from daydream.core.weights import ONNX_GRAPH_KEY
from tests.test_algorithms import _fixed_batch
from tests.tiny import tiny_model

OBS = {"state": Space((2,)), "image": Space((16, 16, 3), np.uint8), **step_spaces()}
ACT = {"action": Space((2,), np.float32, -1.0, 1.0)}


def _agent() -> Agent:
    torch.manual_seed(0)
    config = load_config(None, overrides=[*tiny_model(units=32), "train.compile=true"])
    return Agent(OBS, ACT, config)


@pytest.fixture
def same_random_numbers():
    """Inductor draws its own random numbers unless told to call torch's, as eager does."""
    import torch._inductor.config as inductor

    with inductor.patch(fallback_random=True):
        yield


def test_a_compiled_update_agrees_with_the_eager_update_on_a_fixed_batch(same_random_numbers):
    batch = _fixed_batch(images=True, rng=np.random.default_rng(0))
    eager, compiled = _agent(), _agent()
    assert compiled.compile_update() > 0
    for update in range(2):  # the first with the visualisation decoder, the second without
        torch.manual_seed(1 + update)
        want = eager.train(batch)
        torch.manual_seed(1 + update)  # the same samples, drawn in the same order
        with torch._dynamo.config.patch(suppress_errors=False):  # compiled, not fallen back
            got = compiled.train(batch)
        for key in ("wm/loss", "wm/kl", "wm/reward_loss", "wm/image_loss", "actor/loss",
                    "critic/loss"):  # fmt: skip
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), (update, key)
    for a, b in zip([*eager.wm.parameters(), *eager.behavior.parameters()],
                    [*compiled.wm.parameters(), *compiled.behavior.parameters()],
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    compiled.config.actor.backend = "onnx"  # a learner that compiles exports the eager policy
    assert ONNX_GRAPH_KEY in compiled.policy_weights().arrays


def test_the_policy_that_leaves_the_learner_is_eager_and_saves_as_before():
    agent = _agent()
    before = {k: v.clone() for k, v in agent.state_dict()["world_model"].items()}
    agent.compile_update()
    assert agent.state_dict()["world_model"].keys() == before.keys()  # no renamed parameters
    copy = eager_copy(agent.wm.rssm)
    assert "img_step" not in vars(copy) and "obs_step" not in vars(copy)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in copy.modules())
    assert "img_step" in vars(agent.wm.rssm)  # the learner's own stay compiled


def test_compile_mode_reaches_every_compiled_callable_and_marks_each_update(monkeypatch):
    """train.compile_mode is torch.compile's mode; where it replays CUDA graphs (reduce-overhead
    on CUDA) every update starts with a step mark, so no update reads the last one's outputs."""
    modes, marks = [], []

    def spy(fn, **kwargs):  # records the mode, compiles nothing
        modes.append(kwargs.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr("daydream.agent.agent.records_graphs", lambda mode, device: True)
    config = load_config(None, overrides=[*tiny_model(units=32), "train.compile=true",
                                          "train.compile_mode=reduce-overhead"])  # fmt: skip
    agent = Agent(OBS, ACT, config)
    assert agent.compile_update() == len(modes) > 2
    assert set(modes) == {"reduce-overhead"}
    batch = _fixed_batch(images=True, rng=np.random.default_rng(0))
    agent.train(batch)
    agent.train(batch)
    assert len(marks) == 2


def test_cuda_graphs_are_recorded_on_cuda_only_and_a_mode_torch_lacks_is_one_line():
    from daydream.agent.compiled import records_graphs

    assert records_graphs("reduce-overhead", torch.device("cuda"))
    assert records_graphs("max-autotune", torch.device("cuda"))
    assert not records_graphs("reduce-overhead", torch.device("cpu"))
    assert not records_graphs("default", torch.device("cuda"))
    assert not records_graphs("max-autotune-no-cudagraphs", torch.device("cuda"))
    config = load_config(None, overrides=[*tiny_model(units=32), "train.compile_mode=fast"])
    with pytest.raises(ValueError, match="train.compile_mode must be one of default, .*'fast'"):
        Agent(OBS, ACT, config)
