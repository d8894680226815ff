"""Formulas checked against the reference implementations on small tensors.

The references are danijar/dreamer (Dreamer), danijar/dreamerv2 (DreamerV2),
danijar/daydreamer (embodied/agents/dreamerv2plus, DayDreamer) and NM512/dreamerv3-torch.
Each test names the reference function it was checked against; the expected values are
hand computations or numbers, never the reference code.
"""

from __future__ import annotations

import pytest
import torch

from daydream.config import load_config
from daydream.rssm import RSSM
from tests.tiny import tiny_model

TINY = tiny_model(units=16, horizon=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _leaf_states(latent: str, B: int = 3, T: int = 4):
    """An RSSM and a posterior/prior pair whose distribution parameters are leaf tensors."""
    cfg = load_config(None, overrides=[*TINY, f"model.rssm.latent={latent}"]).model.rssm
    rssm = RSSM(embed=8, action=2, cfg=cfg)
    post, prior = rssm.observe(torch.randn(B, T, 8), torch.randn(B, T, 2), torch.zeros(B, T))
    params = ["logits"] if latent == "categorical" else ["mean", "std"]
    leaf = lambda k, v: v.detach().requires_grad_(k in params)  # noqa: E731
    post = {k: leaf(k, v) for k, v in post.items()}
    prior = {k: leaf(k, v) for k, v in prior.items()}
    return rssm, post, prior, [post[p] for p in params] + [prior[p] for p in params]


# ---------------------------------------------------------------------------- KL at balance 0.5
@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
@pytest.mark.parametrize("free_nats", ["below", "above"])
def test_kl_balance_one_half_is_the_plain_kl_with_its_full_gradient(latent, free_nats):
    # Dreamer (danijar/dreamer dreamer.py Dreamer._train): div = max(mean KL(post || prior), free),
    # gradient into both sides; DreamerV2 (common/nets.py EnsembleRSSM.kl_loss) special-cases
    # balance == 0.5 to this plain KL. The `dreamer` and `dreaming` presets use 0.5.
    rssm, post, prior, leaves = _leaf_states(latent)
    kl_mean = float(rssm._kl(post, prior).detach().mean())
    free = 0.5 * kl_mean if free_nats == "below" else 2.0 * kl_mean  # mean KL above / below it
    prior_part, post_part, _ = rssm.kl_loss(post, prior, balance=0.5, free=free)
    plain = torch.clamp(rssm._kl(post, prior).mean(), min=free)
    assert (prior_part + post_part).item() == pytest.approx(plain.item(), rel=1e-6)
    got = torch.autograd.grad(prior_part + post_part, leaves, allow_unused=True)
    want = torch.autograd.grad(plain, leaves, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        g = torch.zeros_like(w) if g is None else g
        torch.testing.assert_close(g, w)
    if free_nats == "below":  # the gradient is not trivially zero
        assert sum(float(w.abs().sum()) for w in want) > 0
