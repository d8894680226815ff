"""Reports of a training run: open-loop prediction videos and learning-curve plots.

Open-loop prediction (Dreamer/Dreaming figures): the world model observes the first
``context`` frames of a stored sequence, then imagines the rest from the recorded actions
alone. The decoder draws both; reconstruction-free models draw with their visualisation
decoder, trained on detached latents. One video per image sensor, frames laid out as

    row 0   ground truth           one column per sequence
    row 1   prediction             green border: context (posterior), red: imagination (prior)
    row 2   |error|                abs(truth - prediction), amplified

Learning curves come from LOGDIR/metrics.jsonl: one PNG per group of metrics (episode
return, world model, actor/critic, throughput), drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

GREEN, RED = np.array([0, 200, 0], np.uint8), np.array([220, 0, 0], np.uint8)
GROUPS = {  # file stem -> metric name prefixes, in drawing order
    "returns": ("episode_return", "episode_length"),
    "world_model": ("wm/",),
    "behavior": ("actor/", "critic/"),
    "throughput": ("fps", "updates", "replay_steps"),
}


# ---------------------------------------------------------------------------- open loop


def decoder_of(world_model):
    """The head that draws observations: the reconstruction decoder, else the visualisation one."""
    for name in ("decoder", "vis_decoder"):
        if name in world_model.heads:
            return world_model.heads[name]
    return None


@torch.no_grad()
def open_loop(agent, batch: dict[str, np.ndarray], context: int) -> dict[str, np.ndarray]:
    """Predict every sensor of ``batch`` (B, T, ...): ``context`` steps observed, then imagined
    from the recorded actions. Returns {key: prediction}: uint8 (B, T, H, W, C) for images,
    float32 (B, T, N) in the sensor's own units for vectors."""
    from daydream.agent.world_model import preprocess, previous_actions, to_torch

    wm = agent.wm
    decoder = decoder_of(wm)
    data = preprocess(to_torch(batch, agent.device), wm.images)
    embed = wm.encoder({k: data[k] for k in wm.images + wm.vectors})  # (B, T, E)
    prev_action = previous_actions(data["action"])
    seen = slice(0, context)
    post, _ = wm.rssm.observe(embed[:, seen], prev_action[:, seen], data["is_first"][:, seen])
    states = [{k: v[:, t] for k, v in post.items()} for t in range(context)]
    state = states[-1]
    for t in range(context, embed.shape[1]):
        state = wm.rssm.img_step(state, prev_action[:, t], sample=False)  # prior only
        states.append(state)
    feat = torch.stack([wm.rssm.feat(s) for s in states], 1)  # (B, T, F)
    dists = decoder(feat)
    out = {}
    for key in wm.images:
        image = (dists[key].mode() + 0.5).clamp(0, 1) * 255
        out[key] = image.round().to(torch.uint8).cpu().numpy()
    if wm.vectors:  # the decoder predicts them standardised when model.vector_norm is on
        pred = torch.cat([dists[k].mode() for k in wm.vectors], -1)
        norm = wm.encoder.norm
        if norm is not None:
            pred = pred * norm.var.sqrt().clamp(min=norm.min_std) + norm.mean
        sizes = [batch[k].shape[-1] for k in wm.vectors]
        for key, part in zip(wm.vectors, pred.split(sizes, -1), strict=True):
            out[key] = part.cpu().numpy()
    return out


def plot_vectors(
    batch: dict[str, np.ndarray], preds: dict[str, np.ndarray], keys: list[str], context: int,
    path: Path,
) -> Path:  # fmt: skip
    """Open-loop prediction of the vector sensors of the first sequence: one panel per key,
    truth solid and prediction dashed per dimension, the context shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=True):
        truth, pred = batch[key][0], preds[key][0]  # (T, N)
        for i in range(min(truth.shape[-1], 6)):
            line = ax.plot(truth[:, i], lw=1.2)[0]
            ax.plot(pred[:, i], lw=1.2, ls="--", color=line.get_color())
        ax.axvspan(0, context - 1, color="green", alpha=0.1)
        ax.set_title(f"{key}: truth (solid), open-loop prediction (dashed)", fontsize=8)
        ax.set_xlabel("step (green: observed, then imagined)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def video_frames(truth: np.ndarray, pred: np.ndarray, context: int) -> np.ndarray:
    """truth, pred uint8 (B, T, H, W, C) -> frames uint8 (T, 3H, BW, 3).

    Rows: truth / prediction / error; columns: sequences."""
    batch, length, h, w, c = truth.shape
    error = np.abs(truth.astype(np.int16) - pred.astype(np.int16))
    error = np.clip(error * 2, 0, 255).astype(np.uint8)  # amplified to be visible
    pred = pred.copy()
    for t in range(length):  # a 1-pixel border: green while observing, red while imagining
        colour = GREEN if t < context else RED
        if c == 3:
            pred[:, t, [0, -1], :] = colour
            pred[:, t, :, [0, -1]] = colour
    rows = [truth, pred, error]  # each (B, T, H, W, C)
    grid = np.stack(rows, 0)  # (3, B, T, H, W, C)
    grid = grid.transpose(2, 0, 3, 1, 4, 5).reshape(length, 3 * h, batch * w, c)
    if c == 1:
        grid = np.repeat(grid, 3, -1)
    return np.ascontiguousarray(grid[..., :3])


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """GIF (Pillow through imageio, always available) or MP4 (needs imageio-ffmpeg)."""
    import imageio.v2 as imageio

    if path.suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, list(frames), fps=fps)
    return path


def pick_sequences(replay, count: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` stored sequences of ``length`` steps, preferring ones without a reset inside."""
    candidates = replay.sample(max(8 * count, 32), length)
    inside = candidates["is_first"][:, 1:].any(1)  # (N,)
    order = np.argsort(inside, kind="stable")[:count]  # clean sequences first
    return {k: v[order] for k, v in candidates.items()}


# ---------------------------------------------------------------------------- curves


def read_metrics(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metrics.jsonl -> {name: (steps, values)}; lines that do not parse are skipped."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written while we read
        step = row.pop("step", None)
        if step is None:
            continue
        for key, value in row.items():
            if isinstance(value, (int, float)):
                series[key].append((float(step), float(value)))
    return {k: (np.array(v)[:, 0], np.array(v)[:, 1]) for k, v in series.items()}


def plot_curves(metrics: dict[str, tuple[np.ndarray, np.ndarray]], outdir: Path) -> list[Path]:
    """One PNG per metric group that has data; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for stem, prefixes in GROUPS.items():
        names = [n for n in sorted(metrics) if n.startswith(prefixes) and len(metrics[n][0])]
        if not names:
            continue
        cols = min(4, len(names))
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names, strict=False):
            steps, values = metrics[name]
            ax.plot(steps, values, lw=1)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("env steps", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.tight_layout()
        path = outdir / f"{stem}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------- the report


def write_report(
    logdir: str | Path,
    outdir: str | Path | None = None,
    sequences: int = 4,
    length: int = 50,
    context: int = 5,
    video_format: str = "gif",
) -> tuple[list[Path], list[str]]:
    """Videos and plots for the run in ``logdir``. Returns (paths written, notes for the user)."""
    from daydream.agent import checkpoint
    from daydream.replay.store import Replay

    logdir = Path(logdir)
    outdir = Path(outdir) if outdir else logdir / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []

    metrics_file = logdir / "metrics.jsonl"
    if metrics_file.is_file():
        written += plot_curves(read_metrics(metrics_file), outdir)
    else:
        notes.append(f"no {metrics_file}: no learning curves")

    if checkpoint.find(logdir) is None:
        notes.append(f"no checkpoint in {logdir}: no prediction videos")
        return written, notes
    agent, config = checkpoint.load_agent(logdir, device="cpu")
    agent.wm.eval()
    if decoder_of(agent.wm) is None:
        notes.append(
            f"model.repr={config.model.repr} was trained without a visualisation decoder "
            "(model.vis_decoder=false): no prediction videos"
        )
        return written, notes
    replay_dir = logdir / config.replay.directory if config.replay.directory else None
    if replay_dir is None or not replay_dir.is_dir():
        notes.append(f"no replay directory {replay_dir}: no prediction videos")
        return written, notes
    replay = Replay(config.replay.capacity, replay_dir, 0.0, seed=0, read_only=True)  # may be live
    while length > context + 1 and not replay.ready(length):
        length //= 2
    if not replay.ready(length) or length <= context:
        notes.append(f"the replay in {replay_dir} holds no sequence longer than {context} steps")
        return written, notes
    batch = pick_sequences(replay, sequences, length)
    preds = open_loop(agent, batch, context)
    for key in agent.wm.images:
        frames = video_frames(batch[key], preds[key], context)
        path = outdir / f"openloop_{key.replace('/', '_')}.{video_format}"
        written.append(write_video(path, frames))
    if agent.wm.images:
        notes.append(
            f"videos: {len(batch['is_first'])} sequences of {length} steps, rows truth / "
            f"prediction / error, {context} context frames (green) then imagination (red), "
            f"updates {agent.updates}"
        )
    if agent.wm.vectors:
        written.append(plot_vectors(batch, preds, agent.wm.vectors, context,
                                    outdir / "openloop_vectors.png"))  # fmt: skip
    return written, notes
