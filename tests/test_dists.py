"""The actor's truncated Normal against scipy.stats.truncnorm, and its reparameterised samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from daydream.agent.dists import TruncNormal

MEANS = [-0.95, -0.3, 0.0, 0.6, 0.99]
STDS = [0.1, 0.5, 1.1, 2.1]


def _scipy(mean: float, std: float):
    return stats.truncnorm((-1 - mean) / std, (1 - mean) / std, loc=mean, scale=std)


@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("std", STDS)
def test_log_prob_and_entropy_are_the_truncated_normals(mean, std):
    dist = TruncNormal(torch.tensor([[mean]]), torch.tensor([[std]]))
    ref = _scipy(mean, std)
    for a in (-0.9, -0.2, 0.4, 0.95):
        assert float(dist.log_prob(torch.tensor([[a]]))) == pytest.approx(ref.logpdf(a), abs=1e-4)
    assert float(dist.entropy()) == pytest.approx(ref.entropy(), abs=1e-4)


@pytest.mark.parametrize("mean, std", [(-0.95, 0.1), (0.0, 1.1), (0.6, 0.5), (0.99, 2.1)])
def test_samples_follow_the_truncated_normal_inside_the_bounds(mean, std):
    torch.manual_seed(0)
    n = 20000
    dist = TruncNormal(torch.full((n, 1), mean), torch.full((n, 1), std))
    draws = dist.sample().numpy()[:, 0]
    assert draws.min() > -1 and draws.max() < 1
    assert stats.kstest(draws, _scipy(mean, std).cdf).pvalue > 1e-3


def test_the_reparameterised_gradient_is_the_gradient_of_the_truncated_mean():
    torch.manual_seed(0)
    mean = torch.tensor([0.4], requires_grad=True)
    std = torch.tensor([0.5], requires_grad=True)
    n = 200000
    draws = TruncNormal(mean.expand(n, 1), std.expand(n, 1)).rsample()
    g_mean, g_std = torch.autograd.grad(draws.mean(), (mean, std))
    h = 1e-4  # d E[a] / d mean and d E[a] / d std of the truncated normal, by finite differences
    want_mean = (_scipy(0.4 + h, 0.5).mean() - _scipy(0.4 - h, 0.5).mean()) / (2 * h)
    want_std = (_scipy(0.4, 0.5 + h).mean() - _scipy(0.4, 0.5 - h).mean()) / (2 * h)
    assert float(g_mean) == pytest.approx(want_mean, abs=0.01)
    assert float(g_std) == pytest.approx(want_std, abs=0.01)


def test_the_mode_is_the_mean_and_a_sample_near_a_bound_still_moves_with_the_mean():
    mean = torch.tensor([[0.999]], requires_grad=True)
    dist = TruncNormal(mean, torch.tensor([[0.1]]))
    assert float(dist.mode().detach()) == pytest.approx(0.999)
    torch.manual_seed(0)
    (grad,) = torch.autograd.grad(dist.rsample().sum(), mean)
    assert float(grad) > 0.1  # a tanh-Normal saturated this far passes almost no gradient
    assert np.isfinite(float(dist.log_prob(dist.sample()).detach()))
