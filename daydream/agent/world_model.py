"""The world model: multimodal encoder, RSSM, decoders and heads, and its loss.

Reconstruction objective (Dreamer eq. 10; DreamerV2 eq. 2), per time step:

    J = ln q(o_t | s_t)  +  ln q(r_t | s_t)  +  ln q(c_t | s_t)  -  KL-balanced(post || prior)

where o_t is every decoded sensor (images and vectors), r_t the reward and
c_t = 1 - is_terminal the continuation flag (DreamerV2's discount head). The loss
minimised is -J, averaged over batch and time.

``model.repr`` switches the representation term (daydream/agent/contrastive.py has the equations):
    reconstruction  ln q(o_t | s_t)                          (above)
    nce             Dreamer's contrastive estimation, J_S = ln q(s_t|o_t) - ln sum_o' q(s_t|o')
    dreaming        Dreaming's NCE between z_t and an augmented view of o_t, with the KL term,
                    both overshot k = 0..K steps: sum_k (J_k^NCE + J_k^KL)
Reconstruction-free models may also train a visualisation decoder on detached features
(``model.vis_decoder``); its gradient never reaches the world model.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from daydream.agent import contrastive
from daydream.agent.dists import Bernoulli, MSEDist
from daydream.agent.nets import MLP, ConvDecoder, ConvEncoder, RunningNorm
from daydream.agent.rssm import RSSM, State
from daydream.core.spaces import STEP_KEYS, Space

phase = torch.profiler.record_function  # labels for bench/train_step.py --profile

# Keys in a step record that are not sensors.
NON_SENSOR_KEYS = set(STEP_KEYS) | {"action", "intervention"}


def sensor_keys(obs_space: dict[str, Space], cfg) -> tuple[list[str], list[str]]:
    """Split observation keys into image keys (CNN) and vector keys (MLP) by config regexes."""
    images, vectors = [], []
    for key, space in obs_space.items():
        if key in NON_SENSOR_KEYS:
            continue
        if space.is_image and re.fullmatch(cfg.cnn_keys, key):
            images.append(key)
        elif len(space.shape) == 1 and not space.is_image and re.fullmatch(cfg.mlp_keys, key):
            vectors.append(key)
    if not images and not vectors:
        raise ValueError(
            f"no observation key matches model.cnn_keys={cfg.cnn_keys!r} (images HxWxC uint8) "
            f"or model.mlp_keys={cfg.mlp_keys!r} (vectors); observation keys: {sorted(obs_space)}"
        )
    return sorted(images), sorted(vectors)


def preprocess(obs: dict[str, torch.Tensor], images: list[str]) -> dict[str, torch.Tensor]:
    """uint8 images -> float in [-0.5, 0.5]; everything else -> float32."""
    out = {}
    for key, value in obs.items():
        if key in images:
            out[key] = value.float() / 255.0 - 0.5
        else:
            out[key] = value.float()
    return out


def previous_actions(action: torch.Tensor) -> torch.Tensor:
    """(B, T, A) actions -> the action before each step, a_{t-1} (zeros before the first): what
    the RSSM consumes at step t, the replay storing a_t with the observation it followed."""
    return torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)


class MultiEncoder(nn.Module):
    """Sensor fusion: a CNN per image key, one MLP over all vector keys, embeddings concatenated."""

    def __init__(self, obs_space: dict[str, Space], images: list[str], vectors: list[str], cfg):
        super().__init__()
        self.images, self.vectors = images, vectors
        self.cnns = nn.ModuleDict(
            {k: ConvEncoder(obs_space[k].shape, cfg.encoder.cnn_depth, cfg.act) for k in images}
        )
        vec_size = sum(obs_space[k].shape[0] for k in vectors)
        self.sizes = [obs_space[k].shape[0] for k in vectors]
        # model.vector_norm: vectors standardised by running statistics (else passed as they are)
        self.norm = RunningNorm(vec_size) if vectors and cfg.vector_norm else None
        self.mlp = (
            MLP(vec_size, None, cfg.encoder.mlp_layers, cfg.encoder.mlp_units, cfg.act, cfg.norm)
            if vectors
            else None
        )
        self.out_dim = sum(c.out_dim for c in self.cnns.values()) + (
            self.mlp.out_dim if self.mlp else 0
        )

    def vector(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """All vector keys, concatenated and standardised (``model.vector_norm``)."""
        x = torch.cat([obs[k] for k in self.vectors], -1)
        return self.norm(x) if self.norm is not None else x

    def vector_targets(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each vector key as the decoder reconstructs it: standardised like the input."""
        return dict(zip(self.vectors, self.vector(obs).split(self.sizes, -1), strict=True))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.cnns[k](obs[k]) for k in self.images]
        if self.mlp is not None:
            parts.append(self.mlp(self.vector(obs)))
        return torch.cat(parts, -1)  # (..., E)


class MultiDecoder(nn.Module):
    """One transposed CNN per image key, one MLP predicting all vector keys."""

    def __init__(
        self, feat: int, obs_space: dict[str, Space], images: list[str], vectors: list[str], cfg
    ):
        super().__init__()
        self.images, self.vectors = images, vectors
        self.sizes = [obs_space[k].shape[0] for k in vectors]
        self.cnns = nn.ModuleDict(
            {
                k: ConvDecoder(feat, obs_space[k].shape, cfg.decoder.cnn_depth, cfg.act)
                for k in images
            }
        )
        self.mlp = (
            MLP(
                feat,
                sum(self.sizes),
                cfg.decoder.mlp_layers,
                cfg.decoder.mlp_units,
                cfg.act,
                cfg.norm,
            )
            if vectors
            else None
        )

    def forward(self, feat: torch.Tensor) -> dict[str, MSEDist]:
        dists = {k: MSEDist(self.cnns[k](feat), 3) for k in self.images}
        if self.mlp is not None:
            for key, mean in zip(self.vectors, self.mlp(feat).split(self.sizes, -1), strict=True):
                dists[key] = MSEDist(mean, 1)
        return dists


class WorldModel(nn.Module):
    """Owns the encoder, RSSM, decoder (reconstruction objective), reward and continuation heads."""

    def __init__(self, obs_space: dict[str, Space], act_space: dict[str, Space], cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.images, self.vectors = sensor_keys(obs_space, cfg)
        self.action_size = act_space["action"].shape[0]
        self.encoder = MultiEncoder(obs_space, self.images, self.vectors, cfg)
        self.rssm = RSSM(self.encoder.out_dim, self.action_size, cfg.rssm, cfg.act)
        feat = self.rssm.feat_size
        self.heads = nn.ModuleDict()
        ccfg = cfg.contrastive
        embed = self.encoder.out_dim
        if cfg.repr == "reconstruction":
            self.heads["decoder"] = MultiDecoder(feat, obs_space, self.images, self.vectors, cfg)
        elif cfg.repr == "nce":
            self.heads["state_model"] = contrastive.StateModel(
                embed, feat, ccfg.proj_units, ccfg.state_min_std, cfg.act, cfg.norm
            )
        elif cfg.repr == "dreaming":
            self.heads["contrastive"] = contrastive.ContrastiveHead(
                feat, embed, ccfg.proj_units, cfg.act, cfg.norm
            )
            self.heads["linear_dynamics"] = contrastive.LinearDynamics(feat, self.action_size)
        else:
            raise ValueError(
                f"model.repr={cfg.repr!r} is not available; use reconstruction, nce or dreaming"
            )
        if cfg.repr != "reconstruction" and cfg.vis_decoder:
            self.heads["vis_decoder"] = MultiDecoder(
                feat, obs_space, self.images, self.vectors, cfg
            )
        self.heads["reward"] = MLP(
            feat, 1, cfg.reward_head.layers, cfg.reward_head.units, cfg.act, cfg.norm
        )
        if cfg.pred_cont:
            self.heads["cont"] = MLP(
                feat, 1, cfg.cont_head.layers, cfg.cont_head.units, cfg.act, cfg.norm
            )

    def reward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.heads["reward"](feat).squeeze(-1)

    def cont(self, feat: torch.Tensor) -> Bernoulli | None:
        return Bernoulli(self.heads["cont"](feat).squeeze(-1)) if "cont" in self.heads else None

    def loss(
        self, data: dict[str, torch.Tensor], vis: bool = True
    ) -> tuple[torch.Tensor, State, dict[str, float]]:
        """data: preprocessed batch (B, T, ...). Returns loss, posterior states, metrics.
        ``vis``: also the visualisation decoder's loss (reconstruction-free models train it
        every ``model.vis_every`` updates only)."""
        cfg = self.cfg
        if self.encoder.norm is not None:  # statistics of everything trained on, this batch too
            self.encoder.norm.update(torch.cat([data[k] for k in self.vectors], -1))
        targets = {**data, **self.encoder.vector_targets(data)} if self.vectors else data
        with phase("wm: encoder"):
            if cfg.repr == "dreaming":
                view, key_view = self._views(data)
                embed = self.encoder(view)  # (B, T, E) from the first augmented view
            else:
                embed = self.encoder(data)  # (B, T, E)
        prev_action = previous_actions(data["action"])
        with phase("wm: observe (RSSM over T)"):
            post, prior = self.rssm.observe(embed, prev_action, data["is_first"])
        feat = self.rssm.feat(post)  # (B, T, F)
        with phase("wm: KL"):
            prior_part, post_part, kl = self.rssm.kl_loss(
                post, prior, cfg.kl.balance, cfg.kl.free
            )
        losses = {"kl": cfg.kl.scale * (prior_part + post_part)}
        if "decoder" in self.heads:
            with phase("wm: decoder"):
                for key, dist in self.heads["decoder"](feat).items():
                    scale = cfg.loss_scales.image if key in self.images else cfg.loss_scales.vector
                    losses[key] = -scale * dist.log_prob(targets[key]).mean()
        if cfg.repr == "nce":
            with phase("wm: contrastive (NCE, overshooting)"):
                mean, std = self.heads["state_model"](embed)  # (B, T, F) each
                flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
                nce = contrastive.state_model_nce(flat(feat), flat(mean), flat(std))  # (B*T,)
                losses["nce"] = cfg.contrastive.scale * nce.mean()
        if cfg.repr == "dreaming":
            with phase("wm: encoder"):
                key_embed = self.encoder(key_view)  # (B, T, E) from the second view
            with phase("wm: contrastive (NCE, overshooting)"):
                kl_0 = losses.pop("kl")  # the one-step KL is the k = 0 overshooting term
                losses.update(
                    self._dreaming_losses(post, prior, feat, key_embed, prev_action, data, kl_0)
                )
        vis = vis and "vis_decoder" in self.heads
        if vis:
            with phase("wm: visualisation decoder"):
                n = cfg.vis_batch or feat.shape[0]  # sequences it trains on (it only draws)
                for key, dist in self.heads["vis_decoder"](feat[:n].detach()).items():
                    scale = cfg.loss_scales.image if key in self.images else cfg.loss_scales.vector
                    losses[f"vis_{key}"] = -scale * dist.log_prob(targets[key][:n]).mean()
        with phase("wm: reward and continuation heads"):
            reward = MSEDist(self.reward(feat), 0)
            losses["reward"] = -cfg.loss_scales.reward * reward.log_prob(data["reward"]).mean()
            cont = self.cont(feat)
            if cont is not None:
                target = 1.0 - data["is_terminal"].float()
                losses["cont"] = -cfg.loss_scales.cont * cont.log_prob(target).mean()
        total = sum(losses.values())
        metrics = {f"wm/{k}_loss": float(v.detach()) for k, v in losses.items()}
        metrics["wm/loss"] = float(total.detach())
        if vis:  # the world model's own loss, without the visualisation
            own = sum(v for k, v in losses.items() if not k.startswith("vis_"))
            metrics["wm/model_loss"] = float(own.detach())
        metrics["wm/kl"] = float(kl.mean())
        metrics["wm/prior_entropy"] = float(self._entropy(prior))
        metrics["wm/post_entropy"] = float(self._entropy(post))
        return total, post, metrics

    def _views(self, data: dict[str, torch.Tensor]):
        """Two independently augmented copies of the batch (images cropped, the rest shared)."""
        ccfg = self.cfg.contrastive
        view, key_view = dict(data), dict(data)
        for key in self.images:
            view[key], key_view[key] = contrastive.two_views(
                data[key], ccfg.augment_size, ccfg.augment
            )
        return view, key_view

    def _dreaming_losses(
        self,
        post: State,
        prior: State,
        feat: torch.Tensor,
        key_embed: torch.Tensor,
        prev_action: torch.Tensor,
        data: dict[str, torch.Tensor],
        kl_0: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """sum_{k=0..K} (L_k^NCE + L_k^KL), Okada & Taniguchi 2021 eq. 10 (see contrastive.py)."""
        cfg, ccfg = self.cfg, self.cfg.contrastive
        batch, length = feat.shape[:2]
        steps = max(0, min(int(ccfg.overshoot), length - 2))
        is_first = data["is_first"]
        head = self.heads["contrastive"]
        keys = head.obs(key_embed).float().reshape(batch * length, -1)  # (N, P): every x'
        nce_terms = []
        preds = contrastive.linear_overshoot(
            feat, prev_action, self.heads["linear_dynamics"], steps
        )
        for k, pred in enumerate(preds):  # pred (B, T-k, F) predicts t+k
            mask = contrastive.overshoot_mask(is_first, k)  # (B, T-k)
            target = torch.arange(batch * length, device=feat.device).reshape(batch, length)
            target = target[:, k:][mask]  # (Q,) the key of time t+k
            scores = contrastive.contrastive_scores(
                head.latent(pred[mask]), keys, ccfg.score, ccfg.temperature
            )  # (Q, N)
            nce_terms.append(ccfg.scale * contrastive.info_nce(scores, target).mean())
        kl_terms = [kl_0]
        overshot = contrastive.rssm_overshoot(self.rssm, prior, prev_action, steps)
        for k, prior_k in enumerate(overshot, start=1):  # prior_k (B, T-k-1) predicts t+k+1
            mask = contrastive.overshoot_mask(is_first, k + 1)  # (B, T-k-1)
            if not bool(mask.any()):
                kl_terms.append(torch.zeros((), device=feat.device))
                continue
            target = {key: value[:, k + 1 :][mask] for key, value in post.items()}  # (Q, ...)
            pred = {key: value[mask] for key, value in prior_k.items()}  # (Q, ...)
            prior_part, post_part, _ = self.rssm.kl_loss(target, pred, cfg.kl.balance, cfg.kl.free)
            kl_terms.append(cfg.kl.scale * (prior_part + post_part))
        _, parts = contrastive.dreaming_objective(nce_terms, kl_terms)
        return parts

    def _entropy(self, state: State) -> torch.Tensor:
        with torch.no_grad():
            return self.rssm.dist(state).entropy().mean()


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v), device=device) for k, v in batch.items()}
