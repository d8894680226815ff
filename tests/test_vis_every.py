"""The visualisation decoder of reconstruction-free models trains every ``model.vis_every``
updates (0, N, 2N, ...) and never changes what the world model learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daydream.core.config import load_config
from tests.tiny import tiny_model

torch.set_num_threads(1)
TINY = tiny_model(units=32, stoch=8, classes=8)


def tiny_agent(algo: str, *extra: str):
    from daydream.agent.agent import Agent
    from daydream.core.spaces import Space, step_spaces

    config = load_config(None, algo, [*TINY, *extra])
    obs_space = {"image": Space((64, 64, 3), np.dtype(np.uint8)),
                 "joints": Space((4,), np.dtype(np.float32)), **step_spaces()}  # fmt: skip
    act_space = {"action": Space((2,), np.dtype(np.float32), -1.0, 1.0)}
    return Agent(obs_space, act_space, config)


def batch(size: int = 2, length: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {
        "image": rng.integers(0, 256, (size, length, 64, 64, 3), dtype=np.uint8),
        "joints": rng.normal(size=(size, length, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, (size, length, 2)).astype(np.float32),
        "reward": rng.normal(size=(size, length)).astype(np.float32),
        "is_first": np.zeros((size, length), bool),
        "is_last": np.zeros((size, length), bool),
        "is_terminal": np.zeros((size, length), bool),
    }
    data["is_first"][:, 0] = True
    return data


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize("algo, extra", [("dreaming", []), ("dreamingv2", []),
                                         ("dreamer", ["model.repr=nce"])])  # fmt: skip
def test_the_visualisation_decoder_trains_exactly_on_updates_k_times_n(algo, extra):
    agent = tiny_agent(algo, "model.vis_every=2", *extra)
    decoder = agent.wm.heads["vis_decoder"]
    model = [p for p in agent.model_opt.params]
    data = batch()
    trained, logged, losses = [], [], []
    for update in range(5):
        before, model_before = snapshot(decoder), [p.detach().clone() for p in model]
        metrics = agent.train(data)
        trained.append(changed(before, decoder))
        logged.append("wm/vis_grad_norm" in metrics and "wm/vis_image_loss" in metrics)
        assert any(not torch.equal(a, b) for a, b in zip(model_before, model, strict=True)), (
            f"the world model did not learn on update {update}"
        )
        own = [v for k, v in metrics.items() if k.startswith("wm/") and k.endswith("_loss")
               and k != "wm/loss" and not k.startswith("wm/vis_")]  # fmt: skip
        losses.append(metrics["wm/loss"] - sum(own))
    expected = [u % 2 == 0 for u in range(5)]  # updates 0, 2, 4
    assert trained == expected and logged == expected
    # wm/loss is the world model's own loss on every update (the decoder's is logged apart)
    np.testing.assert_allclose(losses, 0, atol=1e-3)
    assert agent.vis_opt.opt.state[next(decoder.parameters())]["step"] == 3  # Adam steps taken


def test_skipping_the_visualisation_decoder_leaves_the_world_models_update_unchanged():
    """The same seeds and batch, one agent on a decoder update and one off it: the world model,
    actor and critic end up identical (the decoder's loss reaches none of their gradients)."""
    results = []
    for update in (0, 1):  # vis_every 2: update 0 trains the decoder, update 1 does not
        torch.manual_seed(0)
        agent = tiny_agent("dreaming", "model.vis_every=2")
        agent.updates = update
        torch.manual_seed(1)
        agent.train(batch())
        decoder = {id(p) for p in agent.wm.heads["vis_decoder"].parameters()}
        results.append(
            [p.detach().clone() for p in agent.wm.parameters() if id(p) not in decoder]
            + snapshot(agent.behavior)
        )
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_vis_every_below_one_is_refused_with_the_key():
    with pytest.raises(ValueError, match="model.vis_every"):
        tiny_agent("dreaming", "model.vis_every=0")


def test_reconstruction_models_have_no_decoder_to_skip():
    agent = tiny_agent("dreamerv2", "model.vis_every=3")
    assert agent.vis_opt is None and "vis_decoder" not in agent.wm.heads
    for _ in range(2):
        assert "wm/image_loss" in agent.train(batch())  # the reconstruction decoder: every update
