"""Distributions used by the world model and the actor, as small plain classes.

Shape glossary used across daydream:
    B batch, T time, H imagination horizon, S stochastic variables,
    K classes per variable, D deterministic (GRU) size, E embedding, A action size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class OneHotST:
    """Categorical over the last axis, sampled as one-hot with straight-through gradients.

    ``unimix`` mixes that fraction of a uniform distribution into the probabilities
    (DreamerV3), so no class ever has probability below ``unimix / K``.
    Straight-through estimator (Bengio et al. 2013, used by DreamerV2):
        sample = onehot + probs - sg(probs)
    so the forward value is one-hot and the gradient is that of ``probs``.
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0):
        probs = F.softmax(logits.float(), -1)
        if unimix > 0:
            probs = (1 - unimix) * probs + unimix / probs.shape[-1]
        self.probs = probs  # (..., K)
        self.logits = torch.log(probs.clamp_min(1e-12))

    def sample(self) -> torch.Tensor:
        # Inverse-CDF sampling: one uniform draw per variable (much cheaper than multinomial).
        probs = self.probs.detach()
        u = torch.rand(*probs.shape[:-1], 1, device=probs.device, dtype=probs.dtype)
        index = (probs.cumsum(-1) < u).sum(-1).clamp(max=probs.shape[-1] - 1)
        onehot = F.one_hot(index, probs.shape[-1])
        return onehot.to(self.probs.dtype) + self.probs - self.probs.detach()

    rsample = sample

    def mode(self) -> torch.Tensor:
        onehot = F.one_hot(self.probs.argmax(-1), self.probs.shape[-1]).to(self.probs.dtype)
        return onehot + self.probs - self.probs.detach()

    def log_prob(self, onehot: torch.Tensor) -> torch.Tensor:
        return (onehot * self.logits).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logits).sum(-1)


def categorical_kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """KL(lhs || rhs) between categoricals given log-probabilities (..., S, K); sums S and K."""
    lhs_probs = lhs_logits.exp()
    return (lhs_probs * (lhs_logits - rhs_logits)).sum((-2, -1))


def gaussian_kl(
    lhs_mean: torch.Tensor, lhs_std: torch.Tensor, rhs_mean: torch.Tensor, rhs_std: torch.Tensor
) -> torch.Tensor:
    """KL(N(lhs) || N(rhs)) for diagonal Gaussians (..., S); sums S."""
    var_ratio = (lhs_std / rhs_std) ** 2
    t1 = ((lhs_mean - rhs_mean) / rhs_std) ** 2
    return 0.5 * (var_ratio + t1 - 1 - torch.log(var_ratio)).sum(-1)


class TanhNormal:
    """Diagonal Gaussian squashed by tanh into (-1, 1): Dreamer's continuous actor.

    Samples are reparameterised (gradients flow into mean and std), which the
    ``dynamics`` actor gradient needs. The entropy has no closed form; it is
    estimated by -log pi(a) of a reparameterised sample.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std
        self.base = torch.distributions.Normal(mean, std)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _log_det(u: torch.Tensor) -> torch.Tensor:
        # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|
        return 2 * (math.log(2) - u - F.softplus(-2 * u))

    def rsample(self) -> torch.Tensor:
        u = self.base.rsample()
        a = torch.tanh(u)
        self._last = (a, u)
        return a

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample()

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.mean)

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is a:
            u = self._last[1]
        else:
            u = torch.atanh(a.clamp(-0.999999, 0.999999))
        return (self.base.log_prob(u) - self._log_det(u)).sum(-1)

    def entropy(self) -> torch.Tensor:
        u = self.base.rsample()
        return -(self.base.log_prob(u) - self._log_det(u)).sum(-1)


class TruncNormal:
    """A diagonal Normal(mean, std) truncated to [low, high]: DreamerV2's continuous actor
    (common/dists.py TruncNormalDist; ``actor.dist: auto`` is trunc_normal there and in
    DayDreamer). Sums log-probabilities and entropies over the last axis (actions).

    Samples are reparameterised by the inverse CDF,

        a = mean + std * Phi^-1(Phi(alpha) + u (Phi(beta) - Phi(alpha))),  u ~ U(0, 1),
        alpha = (low - mean) / std,  beta = (high - mean) / std,

    so the ``dynamics`` actor gradient reaches mean and std, and are then kept ``clip`` inside
    the bounds with a straight-through estimator, as DreamerV2 does. Unlike the tanh-Normal,
    a sample near a bound still moves with the mean: the policy cannot saturate into a region
    where its gradient vanishes.
    """

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, low: float = -1.0, high: float = 1.0,
        clip: float = 1e-6,
    ) -> None:  # fmt: skip
        self.mean, self.std, self.low, self.high, self.clip = mean, std, low, high, clip
        self._bounds: tuple[torch.Tensor, ...] | None = None  # computed when first needed

    def _truncation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha, beta, Phi(alpha) and the mass Z = Phi(beta) - Phi(alpha) inside the bounds."""
        if self._bounds is None:
            alpha = (self.low - self.mean) / self.std
            beta = (self.high - self.mean) / self.std
            cdf_alpha = torch.special.ndtr(alpha)
            mass = (torch.special.ndtr(beta) - cdf_alpha).clamp_min(1e-12)
            self._bounds = (alpha, beta, cdf_alpha, mass)
        return self._bounds  # type: ignore[return-value]

    def rsample(self) -> torch.Tensor:
        _, _, cdf_alpha, mass = self._truncation()
        u = torch.rand_like(self.mean)
        p = (cdf_alpha + u * mass).clamp(1e-7, 1 - 1e-7)
        a = self.mean + self.std * torch.special.ndtri(p)
        inside = a.clamp(self.low + self.clip, self.high - self.clip)
        return a - a.detach() + inside.detach()

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample()

    def mode(self) -> torch.Tensor:
        return self.mean.clamp(self.low, self.high)

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        z = (a - self.mean) / self.std
        log_pdf = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - torch.log(self.std)
        return (log_pdf - torch.log(self._truncation()[3])).sum(-1)

    def entropy(self) -> torch.Tensor:
        """H = log(sqrt(2 pi e) std Z) + (alpha phi(alpha) - beta phi(beta)) / (2 Z)."""
        phi = lambda x: torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)  # noqa: E731
        a, b, _, z = self._truncation()
        h = 0.5 * math.log(2 * math.pi * math.e) + torch.log(self.std * z)
        h = h + (a * phi(a) - b * phi(b)) / (2 * z)
        return h.sum(-1)


class MSEDist:
    """Unit-variance Gaussian with the constant dropped: -log_prob = 0.5 * squared error."""

    def __init__(self, mean: torch.Tensor, dims: int):
        self.mean, self.dims = mean, dims  # dims: trailing event dimensions summed over

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        err = -0.5 * (self.mean - value) ** 2
        return err.sum(tuple(range(-self.dims, 0))) if self.dims else err


class Bernoulli:
    """Bernoulli from logits; ``mean`` is the probability of 1."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.mean = torch.sigmoid(logits)

    def mode(self) -> torch.Tensor:
        return (self.mean > 0.5).float()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, value, reduction="none")
