"""Behaviour learning in imagination: actor, critic with a slow target, lambda-returns.

From every posterior state of the training batch the actor imagines H steps with
the world model's prior. Time indexing inside the imagined trajectory:

    i          0      1      2    ...   H
    state      s_0    s_1    s_2  ...   s_H      (s_0: a posterior state from data)
    action     a_0    a_1    a_2  ...  (a_H unused)
    reward            r_1    r_2  ...   r_H      r_i = reward_head(s_i): reward for arriving in s_i
    cont       c_0    c_1    c_2  ...   c_H      c_i = P(s_i is not terminal); c_0 = 1 - is_terminal
    weight     w_0    w_1    w_2  ...   w_H      w_i = gamma^i c_0 c_1 ... c_i (losses at s_i)

lambda-return (Dreamer eq. 6, in recursive form as in DreamerV2/V3):

    R_i = r_{i+1} + gamma * c_{i+1} * ((1 - lambda) * v(s_{i+1}) + lambda * R_{i+1}),   R_H = v(s_H)
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from daydream.agent.dists import OneHotST, TanhNormal, TruncNormal
from daydream.agent.nets import MLP
from daydream.agent.rssm import State
from daydream.core.config import actor_dist


def lambda_return(
    reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, lambda_: float
) -> torch.Tensor:
    """reward, discount: (H, N) for steps 1..H; value: (H+1, N) for steps 0..H. Returns (H, N).

    discount already includes gamma times the continuation probability.
    """
    horizon = reward.shape[0]
    returns = [value[-1]]
    for i in reversed(range(horizon)):
        nxt = (1 - lambda_) * value[i + 1] + lambda_ * returns[-1]
        returns.append(reward[i] + discount[i] * nxt)
    return torch.stack(returns[1:][::-1])


class ActorNetwork(nn.Module):
    """The policy pi(a | s): one-hot categorical (discrete actions), or for continuous ones a
    Normal truncated to [-1, 1] (DreamerV2, DayDreamer) or a tanh-squashed Normal (Dreamer)."""

    def __init__(self, feat: int, action: int, discrete: bool, cfg, act: str, norm: str):
        super().__init__()
        self.discrete = discrete
        self.kind = actor_dist(str(cfg.dist), discrete)
        self.min_std, self.init_std = cfg.min_std, cfg.init_std
        top = cfg.min_std + 2 if self.kind == "trunc_normal" else math.inf  # 2 sigmoid + min_std
        if not discrete and not cfg.min_std < cfg.init_std < top:
            raise ValueError(
                f"behavior.actor.init_std ({cfg.init_std}) must lie between min_std "
                f"({cfg.min_std}) and {top} for {self.kind}"
            )
        out = action if discrete else 2 * action
        self.net = MLP(feat, out, cfg.layers, cfg.units, act, norm)

    def forward(self, feat: torch.Tensor) -> OneHotST | TanhNormal | TruncNormal:
        return self.dist(self.net(feat))

    def dist(self, x: torch.Tensor) -> OneHotST | TanhNormal | TruncNormal:
        """The action distribution from the network's raw output ``x`` (..., out)."""
        if self.discrete:
            return OneHotST(x, unimix=0.0)
        mean, std = x.chunk(2, -1)
        if self.kind == "trunc_normal":
            # DreamerV2: mean = tanh(mean); std = 2 sigmoid((std + offset) / 2) + min_std, the
            # offset chosen so that the std starts at init_std (DreamerV2's offset 0: 1.1)
            lo, init = self.min_std, self.init_std
            offset = 2 * math.log((init - lo) / (2 + lo - init))
            std = 2 * torch.sigmoid((std + offset) / 2) + lo
            return TruncNormal(torch.tanh(mean), std)
        # Dreamer: mean = 5 tanh(mean / 5); std = softplus(std + softplus^-1(init_std)) + min_std
        raw_init = math.log(math.expm1(self.init_std))
        mean = 5 * torch.tanh(mean / 5)
        std = nn.functional.softplus(std + raw_init) + self.min_std
        return TanhNormal(mean, std)


class Behavior(nn.Module):
    """Owns the actor, the critic and its slowly updated copy, and their losses."""

    def __init__(self, feat: int, action: int, discrete: bool, cfg, act: str, norm: str):
        super().__init__()
        self.cfg = cfg
        self.discrete = discrete
        self.actor = ActorNetwork(feat, action, discrete, cfg.actor, act, norm)
        self.critic = MLP(feat, 1, cfg.critic.layers, cfg.critic.units, act, norm)
        self.slow_critic = copy.deepcopy(self.critic)
        self.slow_critic.requires_grad_(False)
        grad = cfg.actor_grad
        if grad == "auto":
            grad = "reinforce" if discrete else "dynamics"
        if grad not in ("dynamics", "reinforce"):
            raise ValueError(
                f"behavior.actor_grad must be dynamics, reinforce or auto, got {grad!r}"
            )
        self.actor_grad = grad
        self.updates = 0

    def update_slow_critic(self) -> None:
        """Every ``update_every`` calls, move the slow critic toward the critic by ``fraction``."""
        if self.updates % self.cfg.slow_critic.update_every == 0:
            mix = self.cfg.slow_critic.fraction
            with torch.no_grad():
                for s, d in zip(
                    self.slow_critic.parameters(), self.critic.parameters(), strict=True
                ):
                    s.mul_(1 - mix).add_(mix * d)
        self.updates += 1

    def imagine(
        self, world_model, start: State
    ) -> tuple[State, torch.Tensor, torch.Tensor, OneHotST | TanhNormal | None]:
        """Imagine H steps from each start state (N, ...).

        Returns states and feats (H+1, N, F), actions (H, N, A), and in ``dynamics`` mode the
        policy's distributions at s_0 .. s_{H-1} as one (H, N) distribution that still carries
        the actor's gradient (``actor_loss`` reuses it instead of running the actor again);
        None in ``reinforce`` mode, where imagination runs without gradients.
        """
        rssm = world_model.rssm
        raw: list[torch.Tensor] = []

        def policy(state: State) -> torch.Tensor:
            # The policy sees detached features, as in every reference: in dynamics mode the
            # actor's gradient reaches it through a_i -> s_{i+1} -> reward and value, never
            # through d a_{i+1} / d s_{i+1}.
            raw.append(self.actor.net(rssm.feat(state).detach()))
            dist = self.actor.dist(raw[-1])
            return dist.rsample() if self.actor_grad == "dynamics" else dist.sample().detach()

        if self.actor_grad == "reinforce":
            with torch.no_grad():
                states, actions = rssm.imagine(policy, start, self.cfg.horizon)
            return states, rssm.feat(states), actions, None
        states, actions = rssm.imagine(policy, start, self.cfg.horizon)
        return states, rssm.feat(states), actions, self.actor.dist(torch.stack(raw))

    def targets(self, world_model, feat: torch.Tensor, start_cont: torch.Tensor):
        """Rewards, discounts, lambda-returns and trajectory weights of an imagined rollout."""
        cfg = self.cfg
        reward = world_model.reward(feat[1:])  # (H, N)
        cont = world_model.cont(feat[1:])
        cont = cont.mean if cont is not None else torch.ones_like(reward)
        discount = cfg.discount * cont  # (H, N)
        value = self.slow_critic(feat).squeeze(-1)  # (H+1, N)
        ret = lambda_return(reward, value, discount, cfg.return_lambda)  # (H, N)
        # Weight of step i, the cumulative discount gamma^i prod_{j<=i} c_j (c_0 from the data):
        # the probability that the trajectory is still alive at s_i, discounted as the return
        # is (DayDreamer: cumprod(discount * cont) / discount; DreamerV2 and Dreamer alike).
        alive = torch.cat([start_cont[None], cont], 0)  # (H+1, N)
        weight = (torch.cumprod(cfg.discount * alive, 0) / cfg.discount).detach()
        return ret, weight, value

    def actor_loss(
        self,
        feat: torch.Tensor,
        actions: torch.Tensor,
        ret: torch.Tensor,
        value: torch.Tensor,
        weight: torch.Tensor,
        dist: OneHotST | TanhNormal | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Actor objective (DreamerV2 eq. 6):

            L = -sum_i w_i [rho ln pi(a_i|s_i) sg(R_i - v(s_i)) + (1 - rho) R_i + eta H[pi(.|s_i)]]

        with rho = 1 for ``reinforce`` and rho = 0 for ``dynamics`` (R_i differentiated through
        the learned dynamics), eta = ``actor_ent``. ``dist``: the policy at s_0 .. s_{H-1} from
        ``imagine`` (dynamics mode); without it the actor runs again on sg(feat). The metrics
        are detached 0-d tensors (read them with ``float``; ``train.compile`` compiles this).
        """
        if dist is None:
            dist = self.actor(feat[:-1].detach())
        if self.actor_grad == "dynamics":
            objective = ret
        else:
            advantage = (ret - value[:-1]).detach()
            objective = dist.log_prob(actions.detach()) * advantage
        entropy = dist.entropy()
        loss = -(weight[:-1] * (objective + self.cfg.actor_ent * entropy)).mean()
        return loss, {"actor/entropy": entropy.mean().detach(), "actor/return": ret.mean().detach()}

    def critic_loss(self, feat: torch.Tensor, ret: torch.Tensor, weight: torch.Tensor):
        """Critic regression to lambda-returns: L = sum_i w_i * 0.5 * (v(s_i) - sg(R_i))^2.

        The metric is a detached 0-d tensor, as ``actor_loss``'s."""
        value = self.critic(feat[:-1].detach()).squeeze(-1)
        loss = (weight[:-1] * 0.5 * (value - ret.detach()) ** 2).mean()
        return loss, {"critic/value": value.mean().detach()}
