"""Reconstruction-free objectives: NCE values by hand, detached visualisation decoder,
augmentation, overshooting, and the three presets training end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from daydream.agent import contrastive
from daydream.core.config import load_config
from tests.tiny import tiny_model

torch.set_num_threads(1)

# Tiny models: every preset trains in seconds on one core.
TINY = tiny_model(units=32, stoch=8, classes=8)
PRESETS = [("dreamer", ["model.repr=nce"]), ("dreaming", []), ("dreamingv2", [])]


def tiny_world_model(algo: str, extra: list[str] = ()):
    from daydream.agent.world_model import WorldModel
    from daydream.core.spaces import Space

    config = load_config(None, algo, [*TINY, *extra])
    obs_space = {
        "image": Space((64, 64, 3), np.dtype(np.uint8)),
        "joints": Space((4,), np.dtype(np.float32)),
    }
    act_space = {"action": Space((2,), np.dtype(np.float32), -1.0, 1.0)}
    return WorldModel(obs_space, act_space, config.model), config


def fake_batch(batch: int = 3, length: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    from daydream.agent.world_model import preprocess

    g = torch.Generator().manual_seed(seed)
    data = {
        "image": torch.randint(0, 256, (batch, length, 64, 64, 3), generator=g, dtype=torch.uint8),
        "joints": torch.randn(batch, length, 4, generator=g),
        "action": torch.rand(batch, length, 2, generator=g) * 2 - 1,
        "reward": torch.randn(batch, length, generator=g),
        "is_first": torch.zeros(batch, length, dtype=torch.bool),
        "is_terminal": torch.zeros(batch, length, dtype=torch.bool),
    }
    data["is_first"][:, 0] = True
    data["is_first"][0, 3] = True  # an episode start inside a sequence
    return preprocess(data, ["image"])


# ---------------------------------------------------------------------------- values by hand


def test_state_model_nce_equals_hand_computed_value_for_two_items():
    # 1-D states s = (0, 1); state model q(s | o_j) = N(m_j, 1) with m = (0, 2).
    states = torch.tensor([[0.0], [1.0]])
    mean = torch.tensor([[0.0], [2.0]])
    std = torch.ones(2, 1)
    loss = contrastive.state_model_nce(states, mean, std)
    # ln q(s_i|o_j) = -(s_i - m_j)^2 / 2 - ln sqrt(2 pi); the constant cancels in the NCE.
    # item 0: -(0 - ln(e^0 + e^-2));  item 1: -(-1/2 - ln(e^-1/2 + e^-1/2)) = ln 2
    expected = torch.tensor([math.log(1 + math.exp(-2)), math.log(2)])
    torch.testing.assert_close(loss, expected)


def test_state_model_nce_with_different_stds_matches_a_loop_over_pairs():
    states = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.3, 0.7]])
    mean = torch.tensor([[0.0, 0.0], [1.5, 0.5], [-1.0, 1.0]])
    std = torch.tensor([[1.0, 2.0], [0.5, 1.0], [2.0, 0.3]])

    def log_normal(x, m, s):
        return sum(
            -0.5 * ((xd - md) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)
            for xd, md, sd in zip(x.tolist(), m.tolist(), s.tolist(), strict=True)
        )

    expected = []
    for i in range(3):
        row = [log_normal(states[i], mean[j], std[j]) for j in range(3)]
        expected.append(math.log(sum(math.exp(v) for v in row)) - row[i])
    loss = contrastive.state_model_nce(states, mean, std)
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_bilinear_info_nce_equals_hand_computed_value():
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # g(z_i)
    key = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # W e(x_j)
    scores = contrastive.contrastive_scores(query, key, "bilinear", temperature=1.0)
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    loss = contrastive.info_nce(scores, torch.tensor([0, 1]))
    expected = torch.tensor(
        [math.log(math.e + 1) - 1, math.log(2 * math.exp(2)) - 2]  # ln sum_j e^s_ij - s_ii
    )
    torch.testing.assert_close(loss, expected)


def test_cosine_scores_are_bounded_by_inverse_temperature():
    scores = contrastive.contrastive_scores(
        torch.randn(5, 8) * 100, torch.randn(7, 8) * 100, "cosine", temperature=0.1
    )
    assert scores.shape == (5, 7)
    assert scores.abs().max() <= 10.0 + 1e-4


# ---------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("mode", ["pad", "resize"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_two_augmented_views_differ_and_keep_shape_and_dtype(mode, dtype):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 64, 3), generator=g).to(dtype)
    first, second = contrastive.two_views(images, 72, mode, generator=g)
    for view in (first, second):
        assert view.shape == images.shape and view.dtype == images.dtype
    assert not torch.equal(first, second)
    assert not torch.equal(first, images)


def test_pad_crop_is_a_shift_of_at_most_four_pixels():
    images = torch.arange(64.0)[None, :, None, None].expand(1, 64, 64, 1).contiguous()
    crop = contrastive.random_crop(images, 72, "pad")
    # every row of the crop is one row of the (replicate-padded) image: a vertical shift <= 4
    shift = crop[0, 10, 0, 0] - 10
    assert abs(float(shift)) <= 4
    torch.testing.assert_close(crop[0, 10:50, :, 0], images[0, 10:50, :, 0] + shift)


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_every_augmented_image_is_a_64_crop_of_its_image_padded_or_resized_to_72(mode):
    """Whatever way the crop is computed: each view is, exactly, one of the 9 x 9 crops of the
    image replicate-padded by 4 (or resized to 72 x 72), and the offsets vary."""
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 5, 64, 64, 3), generator=g, dtype=torch.uint8)
    views = contrastive.random_crop(images, 72, mode, generator=g)
    chw = images.reshape(-1, 64, 64, 3).permute(0, 3, 1, 2).float()
    if mode == "pad":
        big = F.pad(chw, (4, 4, 4, 4), mode="replicate")
    else:
        big = F.interpolate(chw, size=(72, 72), mode="bilinear", align_corners=False).round()
    big = big.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (N, 72, 72, 3)
    offsets = set()
    for view, padded in zip(views.reshape(-1, 64, 64, 3), big, strict=True):
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(view, padded[dy : dy + 64, dx : dx + 64])]  # fmt: skip
        assert found, "a view that is no crop of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 3


# ---------------------------------------------------------------------------- overshooting


def test_overshoot_mask_excludes_predictions_across_episode_starts():
    is_first = torch.tensor([[1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert contrastive.overshoot_mask(is_first, 0).all()
    assert contrastive.overshoot_mask(is_first, 2).tolist() == [[True, False, False, True]]


def test_overshooting_with_k0_reduces_to_the_one_step_objective():
    nce, kl = torch.tensor(1.5), torch.tensor(0.25)
    total, parts = contrastive.dreaming_objective([nce], [kl])
    assert set(parts) == {"nce_0", "kl_0"} and float(total) == 1.75
    feat = torch.randn(2, 5, 3)
    assert len(contrastive.linear_overshoot(feat, torch.zeros(2, 5, 1), None, 0)) == 1

    wm0, _ = tiny_world_model("dreaming", ["model.contrastive.overshoot=0"])
    wm0.cfg.contrastive.augment = "none"  # identical views: the check below is deterministic
    data = fake_batch()
    torch.manual_seed(0)
    total, post, metrics = wm0.loss(data)
    terms = {k for k in metrics if k.startswith(("wm/nce", "wm/kl_"))}
    assert terms == {"wm/nce_0_loss", "wm/kl_0_loss"}
    # the one-step NCE of the posterior features against the batch's observations, by hand
    head = wm0.heads["contrastive"]
    feat = wm0.rssm.feat(post).reshape(-1, wm0.rssm.feat_size)  # (N, F)
    keys = head.obs(wm0.encoder(data)).reshape(feat.shape[0], -1)  # (N, P)
    scores = head.latent(feat) @ keys.T  # bilinear, temperature 1
    one_step = (torch.logsumexp(scores, 1) - scores.diagonal()).mean()
    assert metrics["wm/nce_0_loss"] == pytest.approx(float(one_step.detach()), rel=1e-5)
    # the one-step KL term: balanced KL with free nats, alpha and 1 - alpha summing to 1
    assert metrics["wm/kl_0_loss"] == pytest.approx(
        max(wm0.cfg.kl.free, metrics["wm/kl"]), rel=1e-5
    )

    # K = 2 adds terms but leaves the k = 0 terms as they were
    wm2, _ = tiny_world_model("dreaming", ["model.contrastive.overshoot=2"])
    wm2.load_state_dict(wm0.state_dict())
    wm2.cfg.contrastive.augment = "none"
    torch.manual_seed(0)
    _, _, metrics2 = wm2.loss(data)
    assert {"wm/nce_2_loss", "wm/kl_2_loss"} <= set(metrics2)
    assert metrics2["wm/nce_0_loss"] == pytest.approx(metrics["wm/nce_0_loss"], rel=1e-5)
    assert metrics2["wm/kl_0_loss"] == pytest.approx(metrics["wm/kl_0_loss"], rel=1e-5)


def test_rssm_overshoot_continues_the_one_step_priors_of_observe_without_recomputing_them():
    from daydream.agent.world_model import previous_actions

    wm, _ = tiny_world_model("dreaming")
    data = fake_batch(length=7)
    prev_action = previous_actions(data["action"])
    post, prior = wm.rssm.observe(wm.encoder(data), prev_action, data["is_first"])
    steps, length = 3, 7
    calls = []
    img_step = wm.rssm.img_step
    wm.rssm.img_step = lambda *a, **k: calls.append(a[0]["deter"].shape) or img_step(*a, **k)
    torch.manual_seed(1)
    overshot = contrastive.rssm_overshoot(wm.rssm, prior, prev_action, steps)
    wm.rssm.img_step = img_step
    # one open-loop step per distance 2 .. K+1: distance 1 is observe's own prior
    assert [tuple(c) for c in calls] == [(3, 5, 32), (3, 4, 32), (3, 3, 32)]
    assert [p["deter"].shape[1] for p in overshot] == [length - 2, length - 3, length - 4]
    # by hand: prior_2[:, t] = img_step(prior[:, t + 1], a_{t+1}), and so on
    torch.manual_seed(1)
    state = {k: v[:, 1:-1] for k, v in prior.items()}
    for j, got in zip(range(2, steps + 2), overshot, strict=True):
        state = img_step({k: v[:, : length - j] for k, v in state.items()}, prev_action[:, j:])
        for key in state:
            torch.testing.assert_close(got[key], state[key])
    # observe's prior at t + 1 is the one-step prediction from the posterior at t, wherever no
    # episode starts at t + 1 (those chains are masked out of every KL_k)
    again = img_step({k: v[:, :-1] for k, v in post.items()}, prev_action[:, 1:])
    inside = data["is_first"][:, 1:] == 0
    assert not bool(inside.all())  # the batch has an episode start inside a sequence
    torch.testing.assert_close(again["deter"][inside], prior["deter"][:, 1:][inside])
    torch.testing.assert_close(again["mean"][inside], prior["mean"][:, 1:][inside])


# ---------------------------------------------------------------------------- vis decoder


@pytest.mark.parametrize("algo,extra", PRESETS)
def test_visualisation_decoder_loss_gives_no_gradient_to_the_world_model(algo, extra):
    wm, _ = tiny_world_model(algo, extra)
    decoder = wm.heads["vis_decoder"]
    captured = {}
    original = decoder.forward

    def spy(feat):
        captured["dists"] = original(feat)
        return captured["dists"]

    decoder.forward = spy
    data = fake_batch()
    total, _, _ = wm.loss(data)
    vis_loss = sum(-d.log_prob(data[k]).mean() for k, d in captured["dists"].items())
    model_params = [p for n, p in wm.named_parameters() if not n.startswith("heads.vis_decoder")]
    grads = torch.autograd.grad(vis_loss, model_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads), "visualisation loss reached a world-model parameter"
    # ... while the decoder itself is trained by the total loss
    vis_grads = torch.autograd.grad(total, list(decoder.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in vis_grads)


def test_reconstruction_has_no_visualisation_decoder_and_unchanged_terms():
    wm, _ = tiny_world_model("dreamer")
    assert "vis_decoder" not in wm.heads and "decoder" in wm.heads
    _, _, metrics = wm.loss(fake_batch())
    assert {"wm/kl_loss", "wm/image_loss", "wm/joints_loss", "wm/reward_loss"} <= set(metrics)
    assert "wm/model_loss" not in metrics


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("algo,extra", PRESETS)
def test_preset_trains_end_to_end_on_sim_ur5_reach_and_its_loss_falls(algo, extra, tmp_path):
    from daydream.agent import checkpoint
    from daydream.agent.world_model import preprocess, to_torch
    from daydream.cli import main
    from daydream.replay.store import Replay

    logdir = tmp_path / algo
    overrides = [
        *TINY,
        *extra,
        "train.batch_size=4",
        "train.batch_length=12",
        "train.prefill=100",
        "train.pretrain=5",
        "train.ratio=8",
        "train.torch_threads=1",
        "replay.min_size=50",
        "ur5.episode_length=25",
    ]
    config = "configs/sim_ur5_reach_pixels.yaml"
    code = main(
        ["train", "--config", config, "--algo", algo, "--steps", "300"]
        + ["--logdir", str(logdir), "--set", *overrides]
    )
    assert code == 0
    agent, config = checkpoint.load_agent(logdir, device="cpu")
    assert config.model.repr == ("nce" if algo == "dreamer" else "dreaming")
    assert agent.updates > 20

    replay = Replay(10**6, logdir / "replay", 0.0, seed=0)
    data = preprocess(to_torch(replay.sample(4, 12), agent.device), agent.wm.images)

    def model_loss(seed: int = 0) -> float:
        torch.manual_seed(seed)
        return agent.wm.loss(data)[2]["wm/model_loss"]

    before = np.mean([model_loss(s) for s in range(3)])
    for _ in range(30):
        agent.model_opt.step(agent.wm.loss(data)[0])
    after = np.mean([model_loss(s) for s in range(3)])
    assert after < before, f"{algo}: world-model loss on a fixed batch {before:.3f} -> {after:.3f}"


def test_visualisation_decoder_has_its_own_optimiser_and_never_scales_the_model_clip():
    """The world model's update is the same whether or not the decoder's gradients are huge."""
    from daydream.agent.agent import Agent
    from daydream.core.spaces import Space, step_spaces

    config = load_config(None, "dreaming", [*TINY, "model.opt.clip=1.0"])
    obs_space = {"image": Space((64, 64, 3), np.dtype(np.uint8)),
                 "joints": Space((4,), np.dtype(np.float32)), **step_spaces()}
    act_space = {"action": Space((2,), np.dtype(np.float32), -1.0, 1.0)}
    batch = {k: v.numpy() for k, v in fake_batch().items()}
    rng = np.random.default_rng(0)  # the agent takes raw uint8 images
    batch["image"] = rng.integers(0, 256, batch["image"].shape, dtype=np.uint8)
    updated = []
    for scale in (1.0, 1e6):  # scale the visualisation loss: its gradient norm grows a million-fold
        torch.manual_seed(0)
        agent = Agent(obs_space, act_space, config)
        assert agent.vis_opt is not None
        vis_params = {id(p) for p in agent.wm.heads["vis_decoder"].parameters()}
        assert not vis_params & {id(p) for p in agent.model_opt.params}
        agent.wm.cfg.loss_scales.image = scale  # only the visualisation decodes images here
        torch.manual_seed(1)
        agent.train(batch)
        updated.append([p.detach().clone() for p in agent.model_opt.params])
    for a, b in zip(*updated, strict=True):
        torch.testing.assert_close(a, b)
