"""The algorithmic facts of DESIGN.md section 1, checked against hand computations and autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daydream.agent.agent import Agent
from daydream.agent.behavior import lambda_return
from daydream.agent.dists import OneHotST
from daydream.agent.rssm import RSSM
from daydream.core.config import load_config
from daydream.core.spaces import Space, step_spaces
from tests.tiny import tiny_model

TINY = tiny_model(units=16, horizon=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def test_lambda_return_matches_hand_computation():
    # H = 2, N = 1. R_2 = v2; R_1 = r2 + d2 ((1-l) v2 + l R_2); R_0 = r1 + d1 ((1-l) v1 + l R_1)
    reward = torch.tensor([[1.0], [2.0]])  # r_1, r_2
    value = torch.tensor([[10.0], [20.0], [30.0]])  # v_0, v_1, v_2
    discount = torch.tensor([[0.9], [0.5]])  # gamma * c_1, gamma * c_2
    lam = 0.8
    r1 = 2.0 + 0.5 * ((1 - lam) * 30.0 + lam * 30.0)  # = 17
    r0 = 1.0 + 0.9 * ((1 - lam) * 20.0 + lam * r1)  # = 1 + 0.9 * (4 + 13.6) = 16.84
    out = lambda_return(reward, value, discount, lam)
    assert out.shape == (2, 1)
    assert out[1, 0].item() == pytest.approx(r1)
    assert out[0, 0].item() == pytest.approx(r0)


def test_lambda_one_is_discounted_monte_carlo_and_lambda_zero_is_td():
    reward = torch.tensor([[1.0], [1.0], [1.0]])
    value = torch.tensor([[0.0], [5.0], [5.0], [7.0]])
    discount = torch.full((3, 1), 0.5)
    mc = lambda_return(reward, value, discount, 1.0)
    assert mc[0, 0].item() == pytest.approx(1 + 0.5 * (1 + 0.5 * (1 + 0.5 * 7)))
    td = lambda_return(reward, value, discount, 0.0)
    assert td[0, 0].item() == pytest.approx(1 + 0.5 * 5)


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
def test_kl_balancing_splits_gradient_between_prior_and_posterior(latent):
    cfg = load_config(None, overrides=[*TINY, f"model.rssm.latent={latent}"]).model.rssm
    rssm = RSSM(embed=8, action=2, cfg=cfg)
    B, T = 3, 4
    embed, action = torch.randn(B, T, 8), torch.randn(B, T, 2)
    is_first = torch.zeros(B, T)
    post, prior = rssm.observe(embed, action, is_first)
    # Make the distribution parameters leaves so we can read their gradients.
    params = ["logits"] if latent == "categorical" else ["mean", "std"]
    leaf = lambda k, v: v.detach().requires_grad_(k in params)  # noqa: E731
    post = {k: leaf(k, v) for k, v in post.items()}
    prior = {k: leaf(k, v) for k, v in prior.items()}
    alpha = 0.8
    prior_part, post_part, _ = rssm.kl_loss(post, prior, balance=alpha, free=0.0)
    (prior_part + post_part).backward()
    plain = rssm._kl(post, prior).mean()  # unbalanced KL(post || prior), same leaves
    grads_plain = torch.autograd.grad(plain, [post[p] for p in params] + [prior[p] for p in params])
    n = len(params)
    for got, full in zip([post[p].grad for p in params], grads_plain[:n], strict=True):
        torch.testing.assert_close(got, (1 - alpha) * full)
    for got, full in zip([prior[p].grad for p in params], grads_plain[n:], strict=True):
        torch.testing.assert_close(got, alpha * full)


def test_free_nats_remove_the_gradient_below_the_threshold():
    cfg = load_config(None, overrides=TINY).model.rssm
    rssm = RSSM(embed=8, action=2, cfg=cfg)
    post, prior = rssm.observe(torch.randn(2, 3, 8), torch.randn(2, 3, 2), torch.zeros(2, 3))
    prior_part, post_part, kl = rssm.kl_loss(post, prior, balance=0.8, free=1e6)
    assert prior_part.item() == pytest.approx(0.8e6)
    assert not prior_part.requires_grad or torch.autograd.grad(
        prior_part + post_part, post["logits"], allow_unused=True, retain_graph=True
    )[0].abs().sum() == 0


def test_straight_through_sample_is_one_hot_and_passes_gradients():
    logits = torch.randn(5, 4, 6, requires_grad=True)
    dist = OneHotST(logits, unimix=0.0)
    sample = dist.sample()
    assert torch.allclose(sample.detach().sum(-1), torch.ones(5, 4))
    values = sample.detach()
    assert torch.allclose(values, values.round(), atol=1e-6)  # one-hot up to float rounding
    (sample * torch.randn_like(sample)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_categorical_samples_follow_the_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    dist = OneHotST(probs.log().expand(100_000, 4))
    frequencies = dist.sample().detach().mean(0)
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)


def test_unimix_bounds_the_smallest_probability():
    logits = torch.tensor([[50.0, -50.0, -50.0, -50.0]])
    assert OneHotST(logits, unimix=0.0).probs.min() < 1e-20
    probs = OneHotST(logits, unimix=0.01).probs
    assert probs.min().item() >= 0.01 / 4 - 1e-7
    assert probs.sum().item() == pytest.approx(1.0)


def _agent(discrete: bool, actor_grad: str) -> Agent:
    config = load_config(None, overrides=[*TINY, f"behavior.actor_grad={actor_grad}"])
    obs = {"state": Space((3,)), **step_spaces()}
    act = {"action": Space((2,), np.float32, -1.0, 1.0, discrete=discrete)}
    return Agent(obs, act, config)


def _transition_grad_after_actor_loss(agent: Agent) -> float:
    """Sum of |grad| that the actor loss sends into the RSSM's transition (img_in, cell)."""
    start = agent.wm.rssm.initial(6)
    start["deter"] = torch.randn_like(start["deter"])
    _, feat, actions, policy = agent.behavior.imagine(agent.wm, start)
    ret, weight, value = agent.behavior.targets(agent.wm, feat, torch.ones(6))
    loss, _ = agent.behavior.actor_loss(feat, actions, ret, value, weight, policy)
    params = [*agent.wm.rssm.img_in.parameters(), *agent.wm.rssm.cell.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


@pytest.mark.parametrize("discrete", [False, True])
def test_dynamics_actor_gradient_flows_through_the_transition(discrete):
    agent = _agent(discrete, "dynamics")
    assert agent.behavior.actor_grad == "dynamics"
    assert _transition_grad_after_actor_loss(agent) > 0


@pytest.mark.parametrize("discrete", [False, True])
def test_reinforce_actor_gradient_does_not_touch_the_transition(discrete):
    agent = _agent(discrete, "reinforce")
    assert _transition_grad_after_actor_loss(agent) == 0
    # ... yet the actor itself does learn: its parameters get a gradient.
    start = agent.wm.rssm.initial(6)
    start["deter"] = torch.randn_like(start["deter"])
    _, feat, actions, policy = agent.behavior.imagine(agent.wm, start)
    assert policy is None  # reinforce: imagination runs without gradients
    ret, weight, value = agent.behavior.targets(agent.wm, feat, torch.ones(6))
    ret = ret + torch.randn_like(ret)  # non-zero advantages
    loss, _ = agent.behavior.actor_loss(feat, actions, ret, value, weight)
    loss.backward()
    assert sum(p.grad.abs().sum() for p in agent.behavior.actor.parameters()) > 0


def test_auto_actor_gradient_follows_the_daydreamer_rule():
    assert _agent(False, "auto").behavior.actor_grad == "dynamics"
    assert _agent(True, "auto").behavior.actor_grad == "reinforce"


def _fixed_batch(images: bool, rng: np.random.Generator, B: int = 4, T: int = 12) -> dict:
    t = np.arange(T)[None, :, None]
    phase = rng.uniform(0, np.pi, (B, 1, 1))
    batch = {
        "state": np.concatenate([np.sin(0.5 * t + phase), np.cos(0.5 * t + phase)], -1).astype(
            np.float32
        ),
        "action": rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
        "reward": np.sin(0.5 * t[..., 0] + phase[..., 0]).astype(np.float32),
        "is_first": np.zeros((B, T), bool),
        "is_last": np.zeros((B, T), bool),
        "is_terminal": np.zeros((B, T), bool),
    }
    batch["is_first"][:, 0] = True
    if images:
        img = np.zeros((B, T, 16, 16, 3), np.uint8)
        for b in range(B):
            for i in range(T):
                x = int(7 + 6 * np.sin(0.5 * i + phase[b, 0, 0]))
                img[b, i, 6:10, x - 2 : x + 2] = 255
        batch["image"] = img
    return batch


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
def test_world_model_overfits_a_fixed_batch(latent):
    overrides = [*TINY, f"model.rssm.latent={latent}", "model.kl.free=0.0",
                 "model.opt.lr=3e-3", "model.rssm.deter=32", "model.rssm.hidden=32"]
    config = load_config(None, overrides=overrides)
    obs = {"state": Space((2,)), "image": Space((16, 16, 3), np.uint8), **step_spaces()}
    act = {"action": Space((2,), np.float32, -1.0, 1.0)}
    agent = Agent(obs, act, config)
    batch = _fixed_batch(images=True, rng=np.random.default_rng(0))
    first = agent.train(batch)["wm/loss"]
    for _ in range(40):
        last = agent.train(batch)["wm/loss"]
    assert last < 0.5 * first, (first, last)


def test_policy_weights_round_trip_and_reject_a_different_model():
    agent = _agent(False, "dynamics")
    weights = agent.policy_weights()
    assert all(k.split(".")[0] in ("encoder", "rssm", "actor") for k in weights.arrays)
    assert all(isinstance(v, np.ndarray) for v in weights.arrays.values())
    other = _agent(False, "dynamics")
    other.load_policy_weights(weights)
    obs = {"state": np.ones(3, np.float32), "reward": np.float32(0), "is_first": np.bool_(True),
           "is_last": np.bool_(False), "is_terminal": np.bool_(False)}
    a1, _ = agent.policy(obs, None, mode="eval")
    a2, _ = other.policy(obs, None, mode="eval")
    np.testing.assert_allclose(a1["action"], a2["action"], rtol=1e-5)
    bigger = Agent(agent.obs_space, agent.act_space,
                   load_config(None, overrides=[*TINY, "model.rssm.deter=24"]))
    with pytest.raises(ValueError, match="rssm.*shape"):
        bigger.load_policy_weights(weights)


def test_policy_accepts_single_observations_and_batches():
    agent = _agent(True, "auto")
    single = {"state": np.zeros(3, np.float32), "is_first": np.bool_(True)}
    action, state = agent.policy(single, None)
    assert action["action"].shape == (2,) and action["action"].sum() == 1
    batch = {"state": np.zeros((5, 3), np.float32), "is_first": np.ones(5, bool)}
    action, state = agent.policy(batch, None)
    assert action["action"].shape == (5, 2)
    action, _ = agent.policy(batch, state, mode="random")
    assert np.all(action["action"].sum(-1) == 1)
    for mode in ("explore", "eval"):  # exactly one-hot: the safety layer refuses anything else
        action, _ = agent.policy(batch, state, mode=mode)
        assert set(np.unique(action["action"]).tolist()) == {0.0, 1.0}


def test_agent_state_dict_round_trip_restores_training_state():
    agent = _agent(False, "dynamics")
    batch = _fixed_batch(images=False, rng=np.random.default_rng(1))
    batch["state"] = np.concatenate([batch["state"], batch["state"][..., :1]], -1)
    agent.train(batch)
    clone = _agent(False, "dynamics")
    clone.load_state_dict(agent.state_dict())
    assert clone.updates == agent.updates == 1
    for a, b in zip(agent.wm.parameters(), clone.wm.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert clone.model_opt.opt.state_dict()["state"].keys() == agent.model_opt.opt.state_dict()[
        "state"].keys()


@pytest.mark.parametrize("discrete", [False, True])
def test_the_policy_reused_from_imagination_is_the_actor_on_the_detached_features(discrete):
    agent = _agent(discrete, "dynamics")
    start = agent.wm.rssm.initial(6)
    start["deter"] = torch.randn_like(start["deter"])
    _, feat, actions, policy = agent.behavior.imagine(agent.wm, start)
    assert actions.shape[0] == feat.shape[0] - 1 == agent.config.behavior.horizon
    again = agent.behavior.actor(feat[:-1].detach())
    for name in ("logits",) if discrete else ("mean", "std"):
        torch.testing.assert_close(getattr(policy, name), getattr(again, name))
    actor = list(agent.behavior.actor.parameters())
    entropy = torch.autograd.grad(policy.entropy().mean(), actor, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in entropy)  # still trains the actor


def test_running_norm_holds_the_statistics_of_every_batch_it_saw():
    from daydream.agent.nets import RunningNorm

    rng = np.random.default_rng(0)
    batches = [rng.normal([0.46, -1.5, 3.0], [0.1, 0.5, 2.0], (n, 3)) for n in (7, 300, 41)]
    norm = RunningNorm(3)
    for b in batches:
        norm.update(torch.tensor(b, dtype=torch.float32))
    seen = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean.numpy(), seen.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), seen.var(0), rtol=1e-4)
    out = norm(torch.tensor(seen, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-3)
    constant = RunningNorm(1, min_std=0.01)
    constant.update(torch.full((10, 1), 3.14))
    assert float(constant(torch.tensor([[3.15]]))) == pytest.approx(1.0, rel=1e-3)  # not 1e6


def test_vector_norm_standardises_inputs_and_targets_and_travels_with_the_policy():
    config = load_config(None, overrides=[*TINY, "model.vector_norm=true"])
    obs = {"state": Space((2,)), **step_spaces()}
    agent = Agent(obs, {"action": Space((2,), np.float32, -1.0, 1.0)}, config)
    batch = _fixed_batch(images=False, rng=np.random.default_rng(0))
    batch["state"] = batch["state"] * 0.01 + 0.5  # centimetres around half a metre
    agent.train(batch)
    norm = agent.wm.encoder.norm
    np.testing.assert_allclose(norm.mean.numpy(), batch["state"].reshape(-1, 2).mean(0), rtol=1e-4)
    weights = agent.policy_weights()
    robot = Agent(obs, {"action": Space((2,), np.float32, -1.0, 1.0)}, config)
    robot.load_policy_weights(weights)
    torch.testing.assert_close(robot.wm.encoder.norm.mean, norm.mean)
    torch.testing.assert_close(robot.wm.encoder.norm.var, norm.var)


@pytest.mark.parametrize("shape", [(64, 64, 3), (32, 48, 1)])
def test_image_decoder_is_its_transposed_convolutions_applied_to_the_projected_features(shape):
    """ConvDecoder computes its first transposed convolution (on a 1 x 1 image) as a matrix
    product; outputs and every parameter's gradient equal DreamerV2's plain chain."""
    from daydream.agent.nets import ConvDecoder

    torch.manual_seed(0)
    decoder = ConvDecoder(24, shape, depth=4)
    feat = torch.randn(2, 3, 24)

    def plain(feat: torch.Tensor) -> torch.Tensor:
        x = decoder.net(decoder.linear(feat.reshape(-1, 24))[:, :, None, None])
        if decoder.resize:
            x = torch.nn.functional.interpolate(x, size=shape[:2], mode="bilinear")
        return x.permute(0, 2, 3, 1).reshape(2, 3, *shape)

    layouts = []  # the transposed convolutions run channels-last (15% faster on a CPU)
    for conv in decoder.net[1:]:
        conv.register_forward_pre_hook(
            lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
    out = decoder(feat)
    assert layouts and all(layouts)
    want = plain(feat)
    assert out.shape == (2, 3, *shape)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    target = torch.randn_like(want)
    params = list(decoder.parameters())
    got = torch.autograd.grad((out - target).square().sum(), params)
    ref = torch.autograd.grad((want - target).square().sum(), params)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
