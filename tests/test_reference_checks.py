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

from daydream.agent.agent import Agent, Optimizer, frozen
from daydream.agent.behavior import Behavior
from daydream.agent.dists import Bernoulli, OneHotST
from daydream.agent.nets import MLP
from daydream.agent.rssm import RSSM
from daydream.core.config import load_config
from daydream.core.spaces import Space, step_spaces
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


def _categorical_rssm() -> RSSM:
    cfg = load_config(None, overrides=[*TINY, "model.rssm.stoch=2", "model.rssm.classes=3"])
    return RSSM(embed=8, action=2, cfg=cfg.model.rssm)


# Posterior and prior of two steps, S = 2 variables of K = 3 classes, as log-probabilities.
POST = torch.log_softmax(torch.tensor(
    [[[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], [[0.3, 0.2, 0.1], [-1.0, 0.0, 1.0]]]), -1)
PRIOR = torch.log_softmax(torch.tensor(
    [[[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]], [[0.3, 0.0, 0.1], [0.0, 0.0, 2.0]]]), -1)
KL_STEPS = [1.0082500, 0.0810004]  # KL(post || prior) per step (torch.distributions)


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


# ---------------------------------------------------------------------------- KL at balance 0.8
def test_kl_balance_value_and_free_nats_on_the_batch_mean():
    # DreamerV2 common/nets.py EnsembleRSSM.kl_loss (forward=False, free_avg=True):
    # (1 - a) max(mean KL(post || sg prior), free) + a max(mean KL(sg post || prior), free).
    # dreamerv3-torch networks.py RSSM.kl_loss clips each step instead, mean(max(KL, free)):
    # 0.6541250 for these two steps and free = 0.3, against 0.5446252 on the batch mean.
    rssm = _categorical_rssm()
    post = {"logits": POST.clone().requires_grad_()}
    prior = {"logits": PRIOR.clone().requires_grad_()}
    mean_kl = sum(KL_STEPS) / 2  # 0.5446252
    prior_part, post_part, kl = rssm.kl_loss(post, prior, balance=0.8, free=0.0)
    torch.testing.assert_close(kl, torch.tensor(KL_STEPS))
    assert prior_part.item() == pytest.approx(0.8 * mean_kl, rel=1e-6)
    assert post_part.item() == pytest.approx(0.2 * mean_kl, rel=1e-6)
    # Free nats on the batch mean: 0.3 < mean KL, so the loss is the mean KL although the
    # second step (0.081) is below 0.3.
    prior_part, post_part, _ = rssm.kl_loss(post, prior, balance=0.8, free=0.3)
    assert (prior_part + post_part).item() == pytest.approx(mean_kl, rel=1e-6)
    prior_part, post_part, _ = rssm.kl_loss(post, prior, balance=0.8, free=0.6)
    assert (prior_part + post_part).item() == pytest.approx(0.6, rel=1e-6)
    assert not (prior_part + post_part).requires_grad or all(
        g is None or not g.any()
        for g in torch.autograd.grad(
            prior_part + post_part, [post["logits"], prior["logits"]], allow_unused=True
        )
    )


# ---------------------------------------------------------------------------- categoricals
def test_unimix_and_straight_through_gradient_match_the_reference_numbers():
    # dreamerv3-torch tools.py OneHotDist(logits, unimix_ratio=0.01): probs and the gradient
    # of sum(sample * w) w.r.t. the logits (straight-through: the gradient of sum(probs * w)).
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, -3.0]]], requires_grad=True)
    dist = OneHotST(logits, unimix=0.01)
    torch.testing.assert_close(dist.probs.detach(), torch.tensor(
        [[[0.8386902, 0.1163866, 0.0449233], [0.4909707, 0.4909707, 0.0180587]]]))
    w = torch.tensor([[[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]]])
    (dist.sample() * w).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor(
        [[[-0.1655805, 0.0906444, 0.0749362], [-0.3820477, 0.3494084, 0.0326393]]]))


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
        _, feat, actions, policy = behavior.imagine(agent.wm, start)
        ret, weight, value = behavior.targets(agent.wm, feat, torch.ones(6))
        loss, _ = behavior.actor_loss(feat, actions, ret, value, weight, policy)
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


# ---------------------------------------------------------------------------- returns and weights
# One imagined rollout, H = 3 steps, N = 2 trajectories, index i = 0..H (s_0: a start state).
REWARD = [[0.0, 0.0], [1.0, -0.5], [0.5, 2.0], [-1.0, 1.0]]  # r(s_i), r(s_0) unused
VALUE = [[3.0, 1.0], [2.0, -1.0], [4.0, 0.5], [1.5, 2.5]]  # slow critic v(s_i)
CONT = [[1.0, 1.0], [0.9, 1.0], [1.0, 0.2], [0.8, 1.0]]  # c(s_i); c(s_0) = 1 - is_terminal


class _Table(torch.nn.Module):
    """A head that reads its output off a table by (step, trajectory) stored in the features."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.table[feat[..., 0].long(), feat[..., 1].long()][..., None]


class _TableModel:
    reward_head, cont_probs = _Table(REWARD), _Table(CONT)

    def reward(self, feat):
        return self.reward_head(feat).squeeze(-1)

    def cont(self, feat):
        p = self.cont_probs(feat).squeeze(-1)
        return Bernoulli(torch.log(p) - torch.log1p(-p.clamp(max=1 - 1e-7)))


def _table_rollout(discrete: bool = False, *overrides: str):
    cfg = load_config(None, overrides=[
        *TINY, "behavior.discount=0.99", "behavior.return_lambda=0.95", *overrides]).behavior
    behavior = Behavior(2, 2, discrete, cfg, "elu", "layer")
    behavior.slow_critic = _Table(VALUE)
    steps, trajs = torch.meshgrid(torch.arange(4.0), torch.arange(2.0), indexing="ij")
    feat = torch.stack([steps, trajs], -1)  # (H+1, N, 2)
    start_cont = torch.tensor(CONT[0])
    return behavior, feat, behavior.targets(_TableModel(), feat, start_cont)


def test_lambda_returns_follow_the_reference_index_convention():
    # R_i = r_{i+1} + gamma c_{i+1} ((1 - lambda) v_{i+1} + lambda R_{i+1}), R_H = v_H:
    # dreamerv3-torch models.py ImagBehavior._compute_target (lambda_return(reward[1:], value[:-1],
    # discount[1:], bootstrap=value[-1])) gives these numbers; danijar/daydreamer VFunction.target
    # ('gve') is the same recursion. E.g. R_2 of trajectory 1 = 1.0 + 0.99 * 1.0 * 2.5 = 3.475.
    _, _, (ret, _, value) = _table_rollout()
    torch.testing.assert_close(ret, torch.tensor(
        [[1.829586, 1.950911], [0.874814, 2.658597], [0.188000, 3.475000]]))
    torch.testing.assert_close(value, torch.tensor(VALUE))


def test_trajectory_weight_is_the_cumulative_discount():
    # weight_i = gamma^i prod_{j <= i} c_j, c_0 from the data's is_terminal: danijar/daydreamer
    # WorldModel.imagine (cumprod(discount * cont) / discount). DreamerV2, Dreamer and
    # dreamerv3-torch also weight step i by gamma^i (their cumprod of gamma * cont).
    _, _, (_, weight, _) = _table_rollout()
    torch.testing.assert_close(weight, torch.tensor(
        [[1.0, 1.0], [0.891, 0.99], [0.88209, 0.19602], [0.698615, 0.19406]]))


def test_critic_regresses_to_the_returns_weighted_by_the_cumulative_discount():
    # DreamerV2 agent.py ActorCritic.critic_loss: -(log N(R_i; v(s_i), 1) * w_i)[:-1].mean(),
    # i.e. 0.5 (v - R)^2 up to a constant; DayDreamer VFunction.train the same (symlog dist).
    behavior, feat, (ret, weight, _) = _table_rollout()
    behavior.critic = _Table([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    loss, _ = behavior.critic_loss(feat, ret, weight)
    v = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    want = (weight[:-1] * 0.5 * (v - ret) ** 2).sum() / 6
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_slow_critic_moves_toward_the_critic_every_update_every_calls():
    # DreamerV2 ActorCritic.update_slow_target: every slow_target_update updates,
    # slow = fraction * critic + (1 - fraction) * slow (DayDreamer VFunction.update_slow alike).
    cfg = load_config(None, overrides=[
        *TINY, "behavior.slow_critic.update_every=2", "behavior.slow_critic.fraction=0.5"])
    behavior = Behavior(4, 2, False, cfg.behavior, "elu", "layer")
    with torch.no_grad():
        for p in behavior.critic.parameters():
            p.fill_(1.0)
        for p in behavior.slow_critic.parameters():
            p.fill_(0.0)
    seen = []
    for _ in range(3):
        behavior.update_slow_critic()
        seen.append(float(next(behavior.slow_critic.parameters()).flatten()[0]))
    assert seen == [0.5, 0.5, 0.75]


def test_reinforce_advantage_takes_the_slow_critic_as_baseline():
    # DreamerV2 ActorCritic.actor_loss: baseline = self._target_critic (the slow critic),
    # objective = log pi(a_i | s_i) sg(R_i - v_slow(s_i)) + eta H[pi(. | s_i)], weighted by w_i;
    # DayDreamer VFunction.score: baseline from target_net, the same. (dreamerv3-torch takes the
    # baseline from its fast critic.)
    behavior, feat, (ret, weight, value) = _table_rollout(
        True, "behavior.actor_grad=reinforce", "behavior.actor_ent=0.01")
    actions = torch.nn.functional.one_hot(torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]]), 2)
    loss, _ = behavior.actor_loss(feat, actions[:-1].float(), ret, value, weight)
    dist = behavior.actor(feat[:-1])
    advantage = ret - torch.tensor(VALUE[:-1])  # the slow critic's values
    objective = dist.log_prob(actions[:-1].float()) * advantage + 0.01 * dist.entropy()
    want = -(weight[:-1] * objective).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
