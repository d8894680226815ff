"""Metrics: JSON lines in LOGDIR/metrics.jsonl, TensorBoard events, a terminal progress line."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path


class MetricsLogger:
    """Owns metrics.jsonl, the TensorBoard writer and the progress printed to the terminal."""

    def __init__(
        self,
        logdir: str | Path,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        stream=None,
    ) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.logdir / "metrics.jsonl", "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.logdir / "tensorboard"))
        self.total, self.stream = total_steps, stream or sys.stdout
        self._t0, self._step0 = time.time(), start_step
        self._means: dict[str, list[float]] = defaultdict(list)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One JSON line ``{"step": step, ...}`` and the same scalars to TensorBoard."""
        clean = {
            k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        }
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)

    def accumulate(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._means[key].append(float(value))

    def flush_means(self) -> dict[str, float]:
        means = {k: sum(v) / len(v) for k, v in self._means.items() if v}
        self._means.clear()
        return means

    def rate(self, step: int) -> float:
        return (step - self._step0) / max(time.time() - self._t0, 1e-9)

    def progress(self, step: int, shown: dict[str, float]) -> None:
        """Print one line: steps, the given figures, steps/s and time to go."""
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"step {step:>8d}/{self.total}"]
        parts += [f"{k} {v:.4g}" for k, v in shown.items() if v is not None]
        parts += [f"{rate:.1f} steps/s", f"ETA {_duration(eta)}"]
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
