"""Recurrent state-space model (Hafner et al. 2019; DreamerV2 2021).

    deterministic  h_t = f(h_{t-1}, z_{t-1}, a_{t-1})          (GRU)
    prior          p(z_t | h_t)
    posterior      q(z_t | h_t, e_t)        e_t: fused embedding of all sensors

The latent z_t is either a diagonal Gaussian (Dreamer) or S categoricals with K
classes each, sampled straight-through (DreamerV2). A state is a dict of tensors:
    deter (..., D)   stoch (..., S) or (..., S, K)   and the distribution's
    parameters: mean/std (..., S) or logits (..., S, K).

How data lines up in time (record t holds the observation o_t and the action a_t
chosen after seeing it; the model consumes the previous action):

    t           0        1        2        3
    obs         o_0      o_1      o_2      o_3
    action      a_0      a_1      a_2      a_3      (a_t taken at o_t)
    prev_action 0        a_0      a_1      a_2      (input to h_t)
    is_first    1        0        0        1        (state and prev_action masked to 0)

Episode starts are handled by masking the carried state, not by branches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from daydream.agent.dists import OneHotST, categorical_kl, gaussian_kl
from daydream.agent.nets import NormGRUCell, activation

State = dict[str, torch.Tensor]


class RSSM(nn.Module):
    """Owns the transition (GRU + prior) and representation (posterior) networks."""

    def __init__(self, embed: int, action: int, cfg, act: str = "elu") -> None:
        super().__init__()
        self.latent = cfg.latent
        self.deter, self.hidden, self.stoch = cfg.deter, cfg.hidden, cfg.stoch
        self.classes = cfg.classes if self.latent == "categorical" else 0
        self.unimix, self.min_std = cfg.unimix, cfg.min_std
        if self.latent not in ("categorical", "gaussian"):
            raise ValueError(
                f"model.rssm.latent must be categorical or gaussian, got {self.latent}"
            )
        act = activation(act)
        stoch_flat = self.stoch * self.classes if self.classes else self.stoch
        stats = self.stoch * self.classes if self.classes else 2 * self.stoch
        self.img_in = nn.Sequential(
            nn.Linear(stoch_flat + action, self.hidden, bias=False),
            nn.LayerNorm(self.hidden),
            act(),
        )
        self.cell = NormGRUCell(self.hidden, self.deter)
        self.img_out = nn.Sequential(
            nn.Linear(self.deter, self.hidden, bias=False),
            nn.LayerNorm(self.hidden),
            act(),
            nn.Linear(self.hidden, stats),
        )
        self.obs_out = nn.Sequential(
            nn.Linear(self.deter + embed, self.hidden, bias=False),
            nn.LayerNorm(self.hidden),
            act(),
            nn.Linear(self.hidden, stats),
        )
        self.feat_size = self.deter + stoch_flat

    # ------------------------------------------------------------------ state helpers
    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        zeros = lambda *s: torch.zeros(batch, *s, device=device)  # noqa: E731
        state = {"deter": zeros(self.deter)}
        if self.classes:
            state["stoch"] = zeros(self.stoch, self.classes)
            state["logits"] = zeros(self.stoch, self.classes)
        else:
            state["stoch"] = zeros(self.stoch)
            state["mean"] = zeros(self.stoch)
            state["std"] = torch.ones(batch, self.stoch, device=device)
        return state

    def feat(self, state: State) -> torch.Tensor:
        """(..., D + S*K): the features every head and the actor read."""
        stoch = state["stoch"]
        if self.classes:
            stoch = stoch.reshape(*stoch.shape[:-2], -1)
        return torch.cat([state["deter"], stoch], -1)

    def dist(self, state: State):
        if self.classes:
            return OneHotST(state["logits"], 0.0)  # logits already include unimix
        return torch.distributions.Independent(
            torch.distributions.Normal(state["mean"], state["std"]), 1
        )

    def _stats(self, x: torch.Tensor) -> State:
        x = x.float()  # distribution parameters in full precision, also under autocast
        if self.classes:
            logits = x.reshape(*x.shape[:-1], self.stoch, self.classes)
            return {"logits": OneHotST(logits, self.unimix).logits}
        mean, std = x.chunk(2, -1)
        return {"mean": mean, "std": nn.functional.softplus(std) + self.min_std}

    def _sample(self, stats: State, sample: bool = True) -> torch.Tensor:
        if self.classes:
            d = OneHotST(stats["logits"], 0.0)
            return d.sample() if sample else d.mode()
        if not sample:
            return stats["mean"]
        return stats["mean"] + stats["std"] * torch.randn_like(stats["std"])

    # ------------------------------------------------------------------ one step
    def img_step(self, prev: State, prev_action: torch.Tensor, sample: bool = True) -> State:
        """Prior step: h_t = f(h_{t-1}, z_{t-1}, a_{t-1}); z_t ~ p(z_t | h_t)."""
        stoch = prev["stoch"]
        if self.classes:
            stoch = stoch.reshape(*stoch.shape[:-2], -1)
        x = self.img_in(torch.cat([stoch, prev_action], -1))
        deter = self.cell(x, prev["deter"])
        stats = self._stats(self.img_out(deter))
        return {"deter": deter, "stoch": self._sample(stats, sample), **stats}

    def obs_step(
        self,
        prev: State,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
        sample: bool = True,
    ) -> tuple[State, State]:
        """Posterior step; resets state and previous action where ``is_first`` is set."""
        keep = 1.0 - is_first.float()  # (B,)
        init = self.initial(prev_action.shape[0], prev_action.device)

        def mask(value: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
            k = keep.reshape(-1, *[1] * (value.dim() - 1))
            return value * k + initial * (1 - k)

        prev = {key: mask(value, init[key]) for key, value in prev.items()}
        prev_action = mask(prev_action, torch.zeros_like(prev_action))
        prior = self.img_step(prev, prev_action, sample)
        stats = self._stats(self.obs_out(torch.cat([prior["deter"], embed], -1)))
        post = {"deter": prior["deter"], "stoch": self._sample(stats, sample), **stats}
        return post, prior

    # ------------------------------------------------------------------ sequences
    def observe(
        self,
        embed: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: State | None = None,
    ) -> tuple[State, State]:
        """embed (B, T, E), prev_action (B, T, A), is_first (B, T) -> post, prior (B, T, ...)."""
        if state is None:
            state = self.initial(embed.shape[0], embed.device)
        posts, priors = [], []
        for t in range(embed.shape[1]):
            state, prior = self.obs_step(state, prev_action[:, t], embed[:, t], is_first[:, t])
            posts.append(state)
            priors.append(prior)
        stack = lambda xs: {k: torch.stack([x[k] for x in xs], 1) for k in xs[0]}  # noqa: E731
        return stack(posts), stack(priors)

    def imagine(
        self, policy: Callable[[State], torch.Tensor], start: State, horizon: int
    ) -> tuple[State, torch.Tensor]:
        """Roll the prior forward from ``start`` (N, ...) for ``horizon`` steps.

        Returns states (H+1, N, ...) with the start at index 0, and actions (H, N, A) where
        action[i] is taken in state[i] (none is drawn in the last state: nothing uses it).
        """
        states, actions = [start], []
        state = start
        for _ in range(horizon):
            action = policy(state)
            actions.append(action)
            state = self.img_step(state, action)
            states.append(state)
        return {k: torch.stack([s[k] for s in states]) for k in start}, torch.stack(actions)

    # ------------------------------------------------------------------ loss
    def kl_loss(
        self, post: State, prior: State, balance: float, free: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """KL balancing (DreamerV2, eq. 2 of Hafner et al. 2021):

            L = alpha * max(free, KL(sg(post) || prior))
              + (1 - alpha) * max(free, KL(post || sg(prior)))

        with free nats applied to the batch mean. Returns the two balanced parts
        (prior term already scaled by alpha, posterior term by 1 - alpha) and the raw KL (B, T).

        alpha = 0.5 is Dreamer's plain L = max(free, KL(post || prior)), whose gradient reaches
        prior and posterior in full (the balanced form would give each half of it); DreamerV2
        special-cases 0.5 the same way. Both parts are then half of that plain loss.
        """
        sg = lambda s: {k: v.detach() for k, v in s.items()}  # noqa: E731
        if balance == 0.5:
            plain = self._kl(post, prior)
            half = 0.5 * torch.clamp(plain.mean(), min=free)
            return half, half, plain.detach()
        kl_prior = self._kl(sg(post), prior)  # trains the prior
        kl_post = self._kl(post, sg(prior))  # trains the posterior
        prior_part = balance * torch.clamp(kl_prior.mean(), min=free)
        post_part = (1 - balance) * torch.clamp(kl_post.mean(), min=free)
        return prior_part, post_part, kl_prior.detach()

    def _kl(self, lhs: State, rhs: State) -> torch.Tensor:
        if self.classes:
            return categorical_kl(lhs["logits"], rhs["logits"])
        return gaussian_kl(lhs["mean"], lhs["std"], rhs["mean"], rhs["std"])
