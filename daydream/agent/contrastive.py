"""Reconstruction-free representation objectives, as pure functions (and two tiny modules).

Three things live here, each a function whose docstring carries its equation:

1. Dreamer's contrastive estimation (Hafner et al. 2020, "Dream to Control", sec. 4,
   "Contrastive estimation"): a state model q(s_t | o_t) scores every state of the batch
   against every observation of the batch,

       J_S^t = ln q(s_t | o_t) - ln sum_{o'} q(s_t | o')                       (Dreamer eq. 12)

2. Dreaming's NCE (Okada & Taniguchi 2021, "Dreaming", eq. 7-9) between the latent z_t
   and an independently augmented view x_t of the observation, negatives from the whole batch,

       J^NCE = ln f(z_t, x_t) - ln sum_{x' in D} f(z_t, x'),
       f(z, x) = exp(g(z)^T W e(x))                    bilinear (Dreaming)
       f(z, x) = exp(cos(g(z), W e(x)) / tau)          cosine   (our choice for DreamingV2's
                                                                 categorical latents)

   and its K-step *linear* overshooting (Dreaming eq. 10-12):

       J := sum_{k=0..K} (J_k^NCE + J_k^KL)
       J_k^NCE = E_{p~(z_t | z_{t-k}, a_{<t}) q(z_{t-k} | .)}
                     [ln f(z_t, x_t) - ln sum_{x'} f(z_t, x')]
       J_k^KL  = E_{p(z_t | z_{t-k}, a_{<t}) q(z_{t-k} | .)}
                     [KL(q(z_{t+1} | .) || p(z_{t+1} | z_t, a_t))]

   where p~ is an independent *linear* forward model z_t = A z_{t-1} + B a_{t-1} (used only
   inside the NCE terms) and p is the RSSM prior rolled open-loop (latent overshooting).

3. The augmentation: two independent random crops per image (pad or resize 64 -> 72, then crop
   back to 64), keeping shape and dtype.

Every loss here is returned as a quantity to *minimise* (the negative of the J above).
Letters: B batch, T time, N = B*T items, M keys, P projection size, F feature size, E embedding.

Time alignment of the overshooting (``prev_action[:, t]`` is a_{t-1}, see rssm.py):

    start t      pred_1[:, t] = z~_{t+1}   pred_2[:, t] = z~_{t+2}   ...
    uses         a_t = prev_action[:, t+1]  a_{t+1} = prev_action[:, t+2]
    valid when   no is_first in t+1 .. t+k (the prediction never crosses an episode start)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from daydream.agent.nets import MLP

# ---------------------------------------------------------------------------- scores and NCE


def info_nce(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-query NCE loss  -(s_{i, target_i} - ln sum_j exp s_{ij}).

    scores (Q, M): log-score of query i against key j (ln f, or ln q(s_i | o_j));
    target (Q,): index of the positive key of each query. Returns (Q,).
    This is -J^t of Dreamer eq. 12 / Dreaming eq. 9 (the sum, not the mean, over keys:
    the constant ln M does not change gradients).
    """
    positive = scores.gather(1, target[:, None]).squeeze(1)  # (Q,)
    return torch.logsumexp(scores, 1) - positive


def gaussian_log_density_matrix(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """ln N(x_i; mean_j, diag(std_j^2)) for every pair: x (N, F), mean/std (M, F) -> (N, M).

    Expanded as quadratic forms so memory is O(N M), not O(N M F):
        sum_d (x_d - m_d)^2 / s_d^2 = x^2 . p - 2 x . (m p) + m^2 . p,   p = 1 / s^2
    """
    prec = std.pow(-2)  # (M, F)
    quad = x.pow(2) @ prec.T - 2 * x @ (mean * prec).T + (mean.pow(2) * prec).sum(-1)  # (N, M)
    log_norm = std.log().sum(-1) + 0.5 * x.shape[-1] * math.log(2 * math.pi)  # (M,)
    return -0.5 * quad - log_norm


def state_model_nce(states: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Dreamer's contrastive estimation (Hafner et al. 2020, eq. 12), as a loss per item.

        -J_S^t = -(ln q(s_t | o_t) - ln sum_{o'} q(s_t | o'))

    states (N, F): the model states s_t of the batch; mean/std (N, F): the state model
    q(s | o_j) = N(mean_j, std_j) computed from each observation o_j of the same batch
    (item i's own observation is o_i). Returns (N,).
    """
    log_q = gaussian_log_density_matrix(states, mean, std)  # (N, N): ln q(s_i | o_j)
    return info_nce(log_q, torch.arange(states.shape[0], device=states.device))


def contrastive_scores(
    query: torch.Tensor, key: torch.Tensor, kind: str, temperature: float
) -> torch.Tensor:
    """ln f(z_i, x_j) for projected latents query (Q, P) and projected observations key (M, P).

    bilinear (Dreaming): q_i^T k_j / tau, with the projections making it z^T W e(x) with a
    learned low-rank W = G^T H. cosine (DreamingV2 here): cos(q_i, k_j) / tau. Returns (Q, M).
    """
    if kind == "cosine":
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    elif kind != "bilinear":
        raise ValueError(f"model.contrastive.score must be bilinear or cosine, got {kind!r}")
    return query @ key.T / temperature


# ---------------------------------------------------------------------------- augmentation


def random_crop(
    images: torch.Tensor,
    size: int,
    mode: str = "pad",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random crop per image: (..., H, W, C) -> same shape and dtype.

    mode ``pad``: replicate-pad every side by (size - H) // 2 (64 -> 72), crop H x W at a
    uniformly random offset (a random shift of up to 4 pixels, as DrQ / Dreaming).
    mode ``resize``: bilinearly resize H x W -> size x size (64 -> 72), crop back to H x W.
    mode ``none``: return the images unchanged. Integer dtypes are rounded back.
    """
    if mode == "none" or size <= images.shape[-3]:
        return images
    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    x = images.reshape(-1, h, w, c)  # (N, H, W, C)
    n = x.shape[0]
    if mode == "pad":  # the padding stays virtual: a row or column index clamped to the image
        pad_h, pad_w = (size - h) // 2, (size - w) // 2
        big_h, big_w = h + 2 * pad_h, w + 2 * pad_w
    elif mode == "resize":
        chw = x.permute(0, 3, 1, 2).float()
        big = F.interpolate(chw, size=(size, size), mode="bilinear", align_corners=False)
        big = big.permute(0, 2, 3, 1)
        if not images.dtype.is_floating_point:
            big = big.round().clamp(0, 255)
        x, pad_h, pad_w, big_h, big_w = big.to(images.dtype), 0, 0, size, size
    else:
        raise ValueError(f"model.contrastive.augment must be pad, resize or none, got {mode!r}")
    top = torch.randint(0, big_h - h + 1, (n,), device=x.device, generator=generator)
    left = torch.randint(0, big_w - w + 1, (n,), device=x.device, generator=generator)
    src_h, src_w = x.shape[1:3]
    rows = (top[:, None] - pad_h + torch.arange(h, device=x.device)).clamp(0, src_h - 1)  # (N, H)
    cols = (left[:, None] - pad_w + torch.arange(w, device=x.device)).clamp(0, src_w - 1)  # (N, W)
    first = torch.arange(n, device=x.device)[:, None, None] * (src_h * src_w)  # (N, 1, 1)
    pixel = first + rows[:, :, None] * src_w + cols[:, None, :]  # (N, H, W) into all pixels
    out = x.reshape(-1, c).index_select(0, pixel.reshape(-1))  # one copy of the crops' pixels
    return out.reshape(*lead, h, w, c)


def two_views(
    images: torch.Tensor, size: int, mode: str = "pad", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of the same images (Dreaming sec. 4.3)."""
    return random_crop(images, size, mode, generator), random_crop(images, size, mode, generator)


# ---------------------------------------------------------------------------- overshooting


def overshoot_mask(is_first: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) -> (B, T - k) bool: a k-step prediction from t to t+k crosses no episode start."""
    starts = torch.cumsum(is_first.float(), 1)  # (B, T)
    return (starts[:, k:] - starts[:, : starts.shape[1] - k]) == 0


class LinearDynamics(nn.Module):
    """Dreaming's independent linear forward model p~(z_t | z_{t-1}, a_{t-1}) on features.

    z~_t = A z~_{t-1} + B a_{t-1}, written as z~_{t-1} + W [z~_{t-1}; a_{t-1}] (A = I + W_z)
    so it starts near the identity. Only the NCE overshooting terms use it.
    """

    def __init__(self, feat: int, action: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feat + action, feat)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return feat + self.linear(torch.cat([feat, action], -1)).float()


def linear_overshoot(
    feat: torch.Tensor, prev_action: torch.Tensor, dynamics: nn.Module, steps: int
) -> list[torch.Tensor]:
    """k-step predictions of the linear model for k = 0..K from every posterior feature.

    feat (B, T, F), prev_action (B, T, A). Returns [pred_0 (B, T, F), pred_1 (B, T-1, F), ...]
    with pred_k[:, t] the prediction of time t+k started at t (pred_0 = feat).
    """
    preds = [feat]
    for k in range(1, steps + 1):
        prev = preds[-1][:, : feat.shape[1] - k]  # (B, T-k, F)
        preds.append(dynamics(prev, prev_action[:, k:]))
    return preds


def rssm_overshoot(rssm, prior: dict, prev_action: torch.Tensor, steps: int) -> list[dict]:
    """Open-loop RSSM priors for latent overshooting: [prior_2 (B, T-2), ..., prior_{K+1}].

    prior_j[:, t] is p(z_{t+j} | z_t from the posterior, a_t .. a_{t+j-1}). The chain starts
    from ``prior`` (B, T, ...), the one-step priors that ``observe`` returned: prior_1[:, t] =
    prior[:, t + 1] is h_{t+1} = f(h_t, z_t, a_t) from the posterior at t, so it is not
    computed a second time (where an episode starts at t + 1, ``observe`` reset the state
    instead; ``overshoot_mask`` leaves those chains out of every KL_k with k >= 1).
    Entry k-1 of the result pairs with the posterior at times k+1 .. T-1 (the KL_k term).
    """
    out = []
    state = {key: value[:, 1:] for key, value in prior.items()}  # prior_1, starts t = 0 .. T-2
    for j in range(2, steps + 2):
        length = prior["deter"].shape[1] - j
        state = {key: value[:, :length] for key, value in state.items()}
        state = rssm.img_step(state, prev_action[:, j:])  # predicts t + j
        out.append(state)
    return out


def dreaming_objective(
    nce_terms: list[torch.Tensor], kl_terms: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dreaming's overshooting objective (Okada & Taniguchi 2021, eq. 10), as a loss:

        L = sum_{k=0..K} (L_k^NCE + L_k^KL),   L_k = -J_k

    nce_terms[k], kl_terms[k]: scalar losses of the k-step terms. With K = 0 this is the
    one-step objective L_0^NCE + L_0^KL. Returns the total and the named parts.
    """
    if len(nce_terms) != len(kl_terms):
        raise ValueError("need one NCE and one KL term per overshooting distance k = 0..K")
    parts = {}
    for k, (nce, kl) in enumerate(zip(nce_terms, kl_terms, strict=True)):
        parts[f"nce_{k}"], parts[f"kl_{k}"] = nce, kl
    return sum(parts.values()), parts  # type: ignore[return-value]


# ---------------------------------------------------------------------------- heads


class StateModel(nn.Module):
    """Dreamer's contrastive state model q(s_t | o_t): a diagonal Gaussian over features."""

    def __init__(self, embed: int, feat: int, units: int, min_std: float, act: str, norm: str):
        super().__init__()
        self.net = MLP(embed, 2 * feat, 1, units, act, norm)
        self.min_std = min_std

    def forward(self, embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.net(embed).chunk(2, -1)
        return mean, F.softplus(std) + self.min_std


class ContrastiveHead(nn.Module):
    """Dreaming's projections: g(z) for latents (MLP) and W e(x) for observation embeddings."""

    def __init__(self, feat: int, embed: int, units: int, act: str, norm: str):
        super().__init__()
        self.latent = MLP(feat, units, 1, units, act, norm)
        self.obs = nn.Linear(embed, units)

    def forward(self, feat: torch.Tensor, embed: torch.Tensor):
        return self.latent(feat), self.obs(embed).float()
