"""bench/probe.py's pure part: the probe reads what a vector encodes, and only at the steps
where it encodes it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import probe  # noqa: E402  (bench/probe.py)


def test_the_probe_reads_a_nonlinear_code_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (3000, 3))
    code = np.concatenate([np.sin(2 * y), np.cos(2 * y), y**2, rng.normal(size=(3000, 7))], 1)
    noise = rng.normal(size=(3000, 16))
    fit, test = slice(0, 2400), slice(2400, None)
    (known,) = probe.probe_rmse(code[fit], y[fit], [(code[test], y[test])])
    (unknown,) = probe.probe_rmse(noise[fit], y[fit], [(noise[test], y[test])])
    std = y[test].std(0)
    assert np.all(known < 0.15 * std)
    assert np.all(unknown > 0.9 * std)


def test_rows_score_each_vector_at_its_own_steps():
    """A state that shows the target only from step LATE on: the step-0 row knows nothing, the
    late row reads it, on the held-out and the new set alike; the TCP is in the embedding."""
    rng = np.random.default_rng(1)

    def sequences(n: int, steps: int = 12) -> dict[str, np.ndarray]:
        target = np.repeat(rng.uniform(-0.2, 0.2, (n, 1, 3)), steps, 1)
        tcp = rng.uniform(-0.2, 0.2, (n, steps, 3))
        state = rng.normal(size=(n, steps, 6))
        state[:, probe.LATE :, :3] = 5 * target[:, probe.LATE :]
        embed = np.concatenate([tcp * 5, rng.normal(size=(n, steps, 3))], -1)
        return {"embedding": embed, "state": state, "target": target, "tcp": tcp}

    table = {(name, q): rmse for name, q, rmse in
             probe.rows(sequences(300), sequences(60), sequences(60))}  # fmt: skip
    std = 0.4 / np.sqrt(12)  # uniform over 0.4 m
    first = table[("state, step 0", "target")]
    late = table[(f"state, steps {probe.LATE}+", "target")]
    for held_or_new in (0, 1):
        assert np.all(first[held_or_new] > 0.8 * std)
        assert np.all(late[held_or_new] < 0.2 * std)
        assert np.all(table[("embedding", "tcp")][held_or_new] < 0.2 * std)
        assert np.all(table[("embedding", "target")][held_or_new] > 0.8 * std)
    assert len(table) == 6
