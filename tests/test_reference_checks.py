"""Formulas checked against the reference implementations on small tensors.

The references are danijar/dreamer (Dreamer), danijar/dreamerv2 (DreamerV2),
danijar/daydreamer (embodied/agents/dreamerv2plus, DayDreamer) and NM512/dreamerv3-torch.
Each test names the reference function it was checked against; the expected values are
hand computations or numbers, never the reference code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daydream.agent import Agent, Optimizer, frozen
from daydream.config import load_config
from daydream.nets import MLP
from daydream.rssm import RSSM
from robots.base import Space, step_spaces
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


# ---------------------------------------------------------------------------- imagination
def _agent(discrete: bool, *overrides: str) -> Agent:
    config = load_config(None, overrides=[*TINY, *overrides])
    obs = {"state": Space((3,)), **step_spaces()}
    act = {"action": Space((2,), np.float32, -1.0, 1.0, discrete=discrete)}
    return Agent(obs, act, config)


def _start(agent: Agent, n: int = 6):
    start = agent.wm.rssm.initial(n)
    start["deter"] = torch.randn_like(start["deter"])
    return start


@pytest.mark.parametrize("discrete", [False, True])
def test_dynamics_actor_gradient_uses_detached_policy_inputs(discrete):
    # Every reference stops the gradient of the features the policy sees while imagining:
    # danijar/dreamer Dreamer._imagine_ahead, danijar/dreamerv2 WorldModel.imagine,
    # danijar/daydreamer ImagActorCritic.train (policy on sg(latent)),
    # NM512/dreamerv3-torch ImagBehavior._imagine.
    # The actor still learns through the dynamics: a_i -> s_{i+1} -> reward, value.
    agent = _agent(discrete, "behavior.actor_grad=dynamics", "behavior.actor_ent=0.0")
    behavior, rssm, horizon = agent.behavior, agent.wm.rssm, agent.config.behavior.horizon
    start, actor = _start(agent), list(agent.behavior.actor.parameters())
    torch.manual_seed(1)
    with frozen(agent.wm):
        _, feat, actions = behavior.imagine(agent.wm, start)
        ret, weight, value = behavior.targets(agent.wm, feat, torch.ones(6))
        loss, _ = behavior.actor_loss(feat, actions, ret, value, weight)
    got = torch.autograd.grad(loss, actor)

    torch.manual_seed(1)  # the same samples, drawn in the same order
    state, states = start, [start]
    for _ in range(horizon):
        action = behavior.actor(rssm.feat(state).detach()).rsample()
        state = rssm.img_step(state, action)
        states.append(state)
    feat = torch.stack([rssm.feat(s) for s in states])  # (H+1, N, F)
    ret, weight, _ = behavior.targets(agent.wm, feat, torch.ones(6))
    want = torch.autograd.grad(-(weight[:-1] * ret).mean(), actor)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------------------- optimiser
def test_weight_decay_shrinks_weight_matrices_by_wd_per_step_whatever_the_learning_rate():
    # DreamerV2 (common/tfutils.py Optimizer._apply_weight_decay) and dreamerv3-torch
    # (tools.py Optimizer._apply_weight_decay) multiply the weights by (1 - wd) before each Adam
    # step, independent of the learning rate; DayDreamer (dreamerv2plus/tfutils.py
    # Optimizer._apply_wd) decays only kernels, by 1 - wd * lr = 1 - 1e-2 * 1e-4: the same 1e-6.
    cfg = load_config(None, overrides=["model.opt.lr=1e-12"]).model.opt
    assert cfg.wd == 1e-6
    net = MLP(3, 2, layers=1, units=4)  # Linear (no bias) -> LayerNorm -> ELU -> Linear + bias
    opt = Optimizer(net.parameters(), cfg)
    before = {name: p.detach().double().clone() for name, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # Adam moves nothing: only the decay acts
    opt.clip_and_step()
    for name, p in net.named_parameters():
        after = p.detach().double()
        if p.dim() >= 2:  # weight matrices (kernels)
            shrink = (before[name] - after) / before[name]
            torch.testing.assert_close(shrink, torch.full_like(shrink, cfg.wd), rtol=0.1, atol=0)
        else:  # biases and layer-norm parameters are not decayed (DayDreamer's 'kernel' pattern)
            torch.testing.assert_close(after, before[name], rtol=0, atol=0)
