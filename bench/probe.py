"""What does a trained reach model know? Where the target and the gripper are, read from the
model's own vectors by a small probe, on its training replay and on new episodes.

    python bench/probe.py LOGDIR                          # sim_ur5 reach, from pixels or vectors
    python bench/probe.py LOGDIR --episodes 100 --sequences 400 --mode random

LOGDIR is a ``daydream run`` / ``bench/learn.py`` logdir of a ``sim_ur5`` reach task: its
checkpoint.pt and its replay directory. A probe (one hidden layer of 256, fitted by Adam) learns
to read the target's and the TCP's position (x, y, z, metres) from one of the model's vectors:

- ``embedding``: the encoder's output (the camera image and the proprioception it reads);
- ``state, step 0``: the posterior state after the first image of a sequence (zero state
  before it, as at an episode's start: what one image tells the model);
- ``state, steps 8+``: the posterior state after 8 or more steps (what the policy acts on).

It is fitted on 80% of ``--sequences`` sampled replay sequences (the targets the model trained
on) and scored (RMSE per axis, cm) on the other 20% and on ``--episodes`` new episodes from
seeds the robots never had (``bench/evaluate.py``'s, the checkpoint's policy acting in
``--mode``). Read against the standard deviation (a probe that knows nothing scores about
that). A model that reads the target from the image scores alike on both; one that remembers
its training targets scores well on the replay only; one whose state scores worse than its
embedding drops what the image shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

LATE = 8  # steps of a sequence after which the state has had time to gather what it shows
QUANTITIES = ("target", "tcp")


def probe_rmse(
    x_fit: np.ndarray, y_fit: np.ndarray, tests: list[tuple[np.ndarray, np.ndarray]],
    iterations: int = 2000, seed: int = 0,
) -> list[np.ndarray]:  # fmt: skip
    """Fit a one-hidden-layer probe from ``x_fit`` (N, D) to ``y_fit`` (N, K); its RMSE per
    output on each (x, y) of ``tests``. Inputs and outputs are standardised on the fit set."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    y_mean, y_std = y_fit.mean(0), y_fit.std(0) + 1e-9
    as_x = lambda x: torch.as_tensor((x - mean) / std, dtype=torch.float32)  # noqa: E731
    x, y = as_x(x_fit), torch.as_tensor((y_fit - y_mean) / y_std, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, y.shape[1]))  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1, generator=gen).mul_(1 / np.sqrt(p.shape[-1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(iterations):
        idx = torch.randint(0, len(x), (256,), generator=gen)
        loss = (net(x[idx]) - y[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = []
    with torch.no_grad():
        for x_test, y_test in tests:
            pred = net(as_x(x_test)).numpy() * y_std + y_mean
            out.append(np.sqrt(((pred - y_test) ** 2).mean(0)))
    return out


def replay_vectors(agent, replay, sequences: int, length: int) -> dict[str, np.ndarray]:
    """Embedding and posterior state (N, T, .) of sampled replay sequences, each observed from a
    zero state, with the target and TCP positions (N, T, 3)."""
    batch = replay.sample(sequences, length)
    batch["is_first"] = batch["is_first"].copy()
    batch["is_first"][:, 0] = True
    embed, feat = [], []
    for i in range(0, sequences, 50):
        part = {k: v[i : i + 50] for k, v in batch.items()}
        e, f = _observe(agent, part)
        embed.append(e)
        feat.append(f)
    return {"embedding": np.concatenate(embed), "state": np.concatenate(feat),
            "target": batch["target"], "tcp": batch["tcp_pose"][..., :3]}  # fmt: skip


def _observe(agent, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from daydream.agent.world_model import preprocess, previous_actions, to_torch

    keys = [*agent._sensor_keys, "is_first", "action"]
    data = preprocess(to_torch({k: batch[k] for k in keys}, agent.device), agent.wm.images)
    with torch.no_grad():
        embed = agent.wm.encoder(data)
        post, _ = agent.wm.rssm.observe(embed, previous_actions(data["action"]), data["is_first"])
        feat = agent.wm.rssm.feat(post)
    return embed.cpu().numpy(), feat.cpu().numpy()


def episode_vectors(agent, env, episodes: int, seed: int, mode: str) -> dict[str, np.ndarray]:
    """The same for new episodes, the policy acting in ``mode`` as ``daydream actor`` does (its
    state carries the executed action); (episodes, steps, .)."""
    import torch

    from daydream.agent.world_model import preprocess, to_torch

    out: dict[str, list] = {k: [] for k in ("embedding", "state", "target", "tcp")}
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        state, first, rows = None, True, {k: [] for k in out}
        while True:
            act, state = agent.policy({**obs, "is_first": np.asarray(first)}, state, mode=mode)
            data = {k: np.asarray(obs[k])[None] for k in agent._sensor_keys}
            with torch.no_grad():
                embed = agent.wm.encoder(preprocess(to_torch(data, agent.device), agent.wm.images))
                rows["state"].append(agent.wm.rssm.feat(state[0])[0].cpu().numpy())
            rows["embedding"].append(embed[0].cpu().numpy())
            rows["target"].append(np.asarray(obs["target"], np.float64))
            rows["tcp"].append(np.asarray(obs["tcp_pose"], np.float64)[:3])
            obs, _, terminated, truncated, info = env.step(act["action"])
            state = agent.executed(state, info["executed"])
            first = False
            if terminated or truncated:
                break
        for k, v in rows.items():
            out[k].append(np.stack(v))
    steps = min(len(v) for v in out["state"])
    return {k: np.stack([v[:steps] for v in vs]) for k, vs in out.items()}


def rows(fit: dict, held: dict, new: dict) -> list[tuple[str, str, list[np.ndarray]]]:
    """(vector, quantity, [held-out RMSE, new RMSE]) for every row of the table."""
    views = {
        "embedding": ("embedding", slice(None)),
        "state, step 0": ("state", slice(0, 1)),
        f"state, steps {LATE}+": ("state", slice(LATE, None)),
    }
    flat = lambda d, k, s: d[k][:, s].reshape(-1, d[k].shape[-1])  # noqa: E731
    out = []
    for name, (key, steps) in views.items():
        for q in QUANTITIES:
            rmse = probe_rmse(flat(fit, key, steps), flat(fit, q, steps),
                              [(flat(held, key, steps), flat(held, q, steps)),
                               (flat(new, key, steps), flat(new, q, steps))])  # fmt: skip
            out.append((name, q, rmse))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from daydream.agent.checkpoint import load_agent
    from daydream.replay.store import Replay
    from robots.gymnasium_env import RobotEnv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a sim_ur5 reach logdir (checkpoint.pt and replay/)")
    parser.add_argument("--sequences", type=int, default=400, help="replay sequences sampled")
    parser.add_argument("--length", type=int, default=32, help="steps per replay sequence")
    parser.add_argument("--episodes", type=int, default=100, help="new episodes")
    parser.add_argument("--seed", type=int, default=10_000,
                        help="new episode i starts from reset(seed=SEED + i)")  # fmt: skip
    parser.add_argument("--mode", choices=("eval", "explore", "random"), default="eval",
                        help="the policy's mode in the new episodes (random: uniform)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.sequences < 10 or args.episodes < 1 or args.length <= LATE:
        parser.error(f"need --sequences >= 10, --episodes >= 1, --length > {LATE}")
    logdir = Path(args.logdir)
    if not (logdir / "checkpoint.pt").is_file():
        parser.error(f"no checkpoint at {logdir / 'checkpoint.pt'}")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the policy's samples (explore, random)
    agent, config = load_agent(logdir / "checkpoint.pt", device="cpu")
    if config.robot.name != "sim_ur5" or config.ur5.task != "reach":
        parser.error(f"probes sim_ur5 reach; {logdir} is {config.robot.name} {config.ur5.task}")
    directory = logdir / config.replay.directory if config.replay.directory else None
    if directory is None or not directory.is_dir():
        parser.error(f"no replay directory at {directory} (the probe is fitted on the replay)")
    start = time.time()
    replay = Replay(config.replay.capacity, directory, seed=args.seed, read_only=True)
    print(f"probe: {logdir} ({agent.updates} updates), replay of {replay.num_steps} steps; "
          f"{args.sequences} sequences of {args.length}, {args.episodes} new episodes "
          f"({args.mode})", flush=True)  # fmt: skip
    sampled = replay_vectors(agent, replay, args.sequences, args.length)
    cut = int(0.8 * args.sequences)
    fit = {k: v[:cut] for k, v in sampled.items()}
    held = {k: v[cut:] for k, v in sampled.items()}
    env = RobotEnv(config)
    try:
        new = episode_vectors(agent, env, args.episodes, args.seed, args.mode)
    finally:
        env.close()
    cm = lambda v: " / ".join(f"{100 * x:5.1f}" for x in v)  # noqa: E731
    print(f"{'vector':<16} {'reads':<7} {'held-out replay x/y/z cm':>25} "
          f"{'new episodes x/y/z cm':>24} {'std (new) cm':>21}")  # fmt: skip
    for name, q, (r_held, r_new) in rows(fit, held, new):
        std = new[q].reshape(-1, 3).std(0)
        print(f"{name:<16} {q:<7} {cm(r_held):>25} {cm(r_new):>24} {cm(std):>21}", flush=True)
    print(f"probe: {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
