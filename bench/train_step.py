"""Seconds per training update (world model + behaviour) and peak memory, per configuration.

    python bench/train_step.py                      # all configurations below
    python bench/train_step.py --only dreamerv2     # one of them
    python bench/train_step.py --threads 2 --updates 5
    python bench/train_step.py --only dreamer dreaming dreaming-novis dreamer-nce   # + ratios
    python bench/train_step.py --ratios     # Dreaming / Dreamer, DreamingV2 / DreamerV2, floors
    python bench/train_step.py --only dreamerv2-small --profile       # time per phase of an update
    python bench/train_step.py --only dreamerv2-small --versus train.precision=bfloat16
    python bench/train_step.py --only daydreamer-small-vectors --length 32 --threads 1 \
        --versus train.compile=true train.precision=bfloat16
    python bench/train_step.py --only dreamerv2-small --baseline 4f9c252  # an older commit
    python bench/train_step.py --only dreamerv2-small --set train.precision=bfloat16 \
        --baseline HEAD --baseline-set train.precision=bfloat16   # uncommitted change vs HEAD
    python bench/train_step.py --set device=cuda train.precision=bfloat16   # any config override
    python bench/train_step.py --only dreamerv2 --set device=cuda --versus train.compile=true \
        --versus train.compile=true train.compile_mode=reduce-overhead  # eager, compiled, graphs

``--versus KEY=VALUE ...`` times every configuration again with those overrides and prints the
ratio (repeated, each set alone: eager vs compiled vs CUDA graphs in one run); ``--baseline
REV`` times it with the code of git revision REV (a temporary worktree, its own bench script,
with ``--baseline-set`` overrides only) and prints old / new: "today vs new" in one run, on the
same machine.

Each configuration runs in its own process so that its peak memory (max RSS on CPU,
max allocated on CUDA) is its own. Observations: one 64x64x3 image and a 16-dim
vector; 6-dim continuous actions; batch 16 x length 64 unless a configuration says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # the other bench scripts

from revisions import worktree  # noqa: E402

SMALL = [
    "model.rssm.deter=128",
    "model.rssm.hidden=128",
    "model.encoder.cnn_depth=16",
    "model.decoder.cnn_depth=16",
    "model.encoder.mlp_units=128",
    "model.decoder.mlp_units=128",
    "model.encoder.mlp_layers=2",
    "model.decoder.mlp_layers=2",
    "model.reward_head.units=128",
    "model.cont_head.units=128",
    "model.reward_head.layers=2",
    "model.cont_head.layers=2",
    "behavior.actor.units=128",
    "behavior.critic.units=128",
    "behavior.actor.layers=2",
    "behavior.critic.layers=2",
]

# name -> (algo preset, overrides)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "dreamerv2": ("dreamerv2", []),
    "dreamer": ("dreamer", []),
    "dreamerv2-small": ("dreamerv2", SMALL),
    # the size presets the robots learn with (configs/size/small.yaml: a 2-core CPU laptop),
    # from the 16-d vector alone (as the README's reach from vectors) and with the image too
    "daydreamer-small-vectors": ("daydreamer", ["size=small", "model.cnn_keys=^$"]),
    "daydreamer-small": ("daydreamer", ["size=small"]),
    # reconstruction-free objectives (issue 4), same model sizes as their reconstruction twins;
    # "-novis" drops the visualisation decoder (trained on detached latents, only for reports)
    "dreamer-nce": ("dreamer", ["model.repr=nce"]),
    "dreaming": ("dreaming", []),
    "dreaming-novis": ("dreaming", ["model.vis_decoder=false"]),
    "dreaming-visall": ("dreaming", ["model.vis_every=1"]),  # the decoder every update (before)
    "dreamingv2": ("dreamingv2", []),
    "dreamingv2-novis": ("dreamingv2", ["model.vis_decoder=false"]),
    "dreamingv2-visall": ("dreamingv2", ["model.vis_every=1"]),
}
# reconstruction-free configuration -> the reconstruction one it is timed against
RATIOS: dict[str, str] = {
    "dreamer-nce": "dreamer",
    "dreaming": "dreamer",
    "dreaming-novis": "dreamer",
    "dreaming-visall": "dreamer",
    "dreamingv2": "dreamerv2",
    "dreamingv2-novis": "dreamerv2",
    "dreamingv2-visall": "dreamerv2",
}
# --ratios: each reconstruction-free preset (visualisation decoder every model.vis_every updates,
# and every update) beside its reconstruction twin, at the same size
RATIO_RUN = ["dreamer", "dreaming", "dreaming-visall", "dreamerv2", "dreamingv2",
             "dreamingv2-visall"]  # fmt: skip


def measure(
    name: str, updates: int, threads: int, batch: int, length: int, extra: list[str] = (),
    profile: bool = False,
) -> dict:

    import numpy as np
    import torch

    from daydream.agent.agent import Agent
    from daydream.core.config import load_config
    from daydream.core.heap import keep_freed_memory
    from daydream.core.spaces import Space, step_spaces

    torch.set_num_threads(threads)
    algo, overrides = CONFIGS[name]
    config = load_config(None, algo, [*overrides, *extra])
    if config.train.keep_freed_memory:  # as the learner's process does
        keep_freed_memory()
    obs_space = {"image": Space((64, 64, 3), np.uint8), "state": Space((16,)), **step_spaces()}
    act_space = {"action": Space((6,), np.float32, -1.0, 1.0)}
    agent = Agent(obs_space, act_space, config)
    if config.train.compile:
        agent.compile_update()  # the warm-up update below compiles
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(0, 255, (batch, length, 64, 64, 3), dtype=np.uint8),
        "state": rng.normal(size=(batch, length, 16)).astype(np.float32),
        "action": rng.uniform(-1, 1, (batch, length, 6)).astype(np.float32),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": np.zeros((batch, length), bool),
        "is_last": np.zeros((batch, length), bool),
        "is_terminal": np.zeros((batch, length), bool),
    }
    data["is_first"][:, 0] = True
    agent.train(data)  # warm-up (update 0: the visualisation decoder trains)
    if config.train.compile:
        agent.train(data)  # and an update without it: both are compiled before timing
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(updates):
        start, cpu_start = time.perf_counter(), time.process_time()
        agent.train(data)
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    # the world-model update alone (representation objective + its optimiser step)
    from daydream.agent.world_model import preprocess, to_torch

    wm_times, wm_cpu_times = [], []
    for i in range(1, updates + 1):  # the visualisation decoder on updates N, 2N, ... as in train
        start, cpu_start = time.perf_counter(), time.process_time()
        batch_t = preprocess(to_torch(data, agent.device), agent.wm.images)
        vis = agent.vis_opt is not None and i % config.model.vis_every == 0
        agent.train_world_model(batch_t, vis)  # as in an update: train.precision included
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        wm_times.append(time.perf_counter() - start)
        wm_cpu_times.append(time.process_time() - cpu_start)
    # the representation's networks alone, forward and backward: the encoder over as many
    # views as the objective encodes (Dreaming's two crops, one otherwise) and the decoder of a
    # reconstruction objective (from features, its gradient to them included); --ratios bounds
    # what a cheaper objective could reach with them (``floor``)
    views = 2 if config.model.repr == "dreaming" else 1
    decoder = agent.wm.heads["decoder"] if "decoder" in agent.wm.heads else None
    passes: dict[str, list[tuple[float, float]]] = {"encoder": [], "decoder": []}

    def timed(part: str, forward, inputs) -> None:  # forward(inputs) and its backward, timed
        start, cpu_start = time.perf_counter(), time.process_time()
        with agent.autocast():
            out = forward(inputs)
        sum(x.float().sum() for x in out).backward()
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        passes[part].append((time.perf_counter() - start, time.process_time() - cpu_start))

    for _ in range(updates):
        batch_t = preprocess(to_torch(data, agent.device), agent.wm.images)
        timed("encoder", lambda x: [agent.wm.encoder(x) for _ in range(views)], batch_t)
        if decoder is not None:
            feat = torch.zeros(batch, length, agent.wm.rssm.feat_size, device=agent.device,
                               requires_grad=True)  # fmt: skip
            timed("decoder", lambda x: [dist.mean for dist in decoder(x).values()], feat)
    agent.wm.zero_grad(set_to_none=True)
    if profile:
        print_phases(agent, data)
    params = sum(p.numel() for p in agent.wm.parameters()) + sum(
        p.numel() for p in agent.behavior.parameters()
    )
    if agent.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "name": name,
        "device": str(agent.device),
        "threads": threads,
        "sec_per_update": float(np.median(times)),
        "sec_per_wm_update": float(np.median(wm_times)),
        # CPU seconds of this process: robust to other processes sharing the cores
        "cpu_sec_per_update": float(np.median(cpu_times)),
        "cpu_sec_per_wm_update": float(np.median(wm_cpu_times)),
        # means over the timed updates: with a multiple of model.vis_every of them, they carry
        # the visualisation decoder's share (a median would leave it out)
        "mean_sec_per_update": float(np.mean(times)),
        "mean_sec_per_wm_update": float(np.mean(wm_times)),
        "mean_cpu_sec_per_update": float(np.mean(cpu_times)),
        "mean_cpu_sec_per_wm_update": float(np.mean(wm_cpu_times)),
        # the representation's networks alone (0 where a model has no decoder)
        **{f"mean_{kind}_per_{part}": float(np.mean([t[i] for t in times])) if times else 0.0
           for part, times in passes.items() for i, kind in enumerate(("sec", "cpu_sec"))},
        "encoder_views": views,
        "vis_every": int(config.model.vis_every),
        "peak_mb": peak_mb,
        "params_m": params / 1e6,
        "batch": f"{batch}x{length}",
    }


def print_phases(agent, data: dict) -> None:
    """One update under torch.profiler: the CPU time of each labelled phase (agent.py and
    world_model.py label them with ``phase``), and what the labels leave out."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if agent.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        agent.train(data)
        total = time.perf_counter() - start
    rows = [e for e in prof.key_averages() if e.key.startswith(("wm:", "behaviour:"))]
    device = "cuda" if agent.device.type == "cuda" else "cpu"
    print(f"\nphases of one update (profiled: {total * 1e3:.0f} ms wall, {device})")
    for e in sorted(rows, key=lambda e: -e.cpu_time_total):
        cuda = getattr(e, "device_time_total", 0.0) if device == "cuda" else 0.0
        print(f"  {e.key:<48} {e.cpu_time_total / 1e3:9.1f} ms cpu"
              + (f" {cuda / 1e3:9.1f} ms cuda" if device == "cuda" else "")
              + f"  {100 * e.cpu_time_total / 1e6 / total:5.1f}%")  # fmt: skip
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    print("  busiest operators (self cpu): " + ", ".join(
        f"{e.key} {e.self_cpu_time_total / 1e3:.0f} ms" for e in top))  # fmt: skip


def run_child(script: str, name: str, args, extra: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, script, "--child", name, "--updates", str(args.updates),
           "--threads", str(args.threads), "--batch", str(args.batch), "--length", str(args.length)]
    if extra:
        cmd += ["--set", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--updates", type=int, default=None,
                        help="timed updates (default 3; --ratios: model.vis_every)")  # fmt: skip
    parser.add_argument("--ratios", action="store_true", help=f"run {' '.join(RATIO_RUN)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every configuration")  # fmt: skip
    parser.add_argument("--versus", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="time again with these overrides (repeatable)")  # fmt: skip
    parser.add_argument("--baseline", metavar="REV", help="time again with git revision REV")
    parser.add_argument("--baseline-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for the --baseline run (its own keys)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="time per phase of an update")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ratios:
        from daydream.core.config import load_config

        args.only = RATIO_RUN
        args.updates = args.updates or int(load_config(None, "dreaming").model.vis_every)
    args.updates = args.updates or 3
    if args.child:
        result = measure(args.child, args.updates, args.threads, args.batch, args.length,
                         args.overrides)  # fmt: skip
        print(json.dumps(result))
        return
    if args.profile:
        for name in args.only:
            print(f"{name}: {' '.join(args.overrides)}")
            measure(name, 1, args.threads, args.batch, args.length, args.overrides, profile=True)
        return
    print(
        f"{'config':<18} {'device':<7} {'thr':>3} {'batch':>6} {'params':>8} "
        f"{'s/update':>9} {'s/wm upd':>9} {'cpu s/upd':>9} {'cpu s/wm':>9} {'peak MB':>8}"
    )
    results: dict[str, dict] = {}
    others: dict[str, dict[str, dict]] = {}  # alternative's label -> configuration -> result
    old_tree = worktree(args.baseline) if args.baseline else None
    at_baseline = f"revision {args.baseline}"  # the --baseline run's label among the others
    for name in args.only:
        results[name] = run_child(__file__, name, args, args.overrides)
        print_row(name, results[name])
        for versus in args.versus:
            label = " ".join(versus)
            others.setdefault(label, {})[name] = run_child(
                __file__, name, args, [*args.overrides, *versus]
            )
            print_row(f"  {label}", others[label][name])
        if old_tree is not None:
            env = {**os.environ, "PYTHONPATH": str(old_tree)}
            others.setdefault(at_baseline, {})[name] = run_child(
                str(old_tree / "bench/train_step.py"), name, args, args.baseline_set, env
            )
            print_row(f"  at {args.baseline}", others[at_baseline][name])
    key = "sec" if any(r["device"] != "cpu" for r in results.values()) else "cpu_sec"
    for what, runs in others.items():
        print(f"\nthis code / {what}, {key.replace('_', ' ')} per update (median):")
        for name, other in runs.items():
            ratio = other[f"{key}_per_update"] / results[name][f"{key}_per_update"]
            if what == at_baseline:
                print(f"  {name:<18} this code is {ratio:.2f}x faster than {args.baseline}")
            else:  # the override is the new thing: how much faster it makes it
                print(f"  {name:<18} {what} is {1 / ratio:.2f}x faster")
    pairs = [(a, b) for a, b in RATIOS.items() if a in results and b in results]
    if pairs:
        # On a CPU shared with other work, wall time is noisy; process CPU time is not (with
        # one thread it is the work done). On CUDA only wall time means anything.
        key = "sec" if any(r["device"] != "cpu" for r in results.values()) else "cpu_sec"
        key = f"mean_{key}"  # means over the timed updates: the decoder's share included
        print(
            f"\nreconstruction-free / reconstruction, same model size ({key.replace('_', ' ')}, "
            f"{args.updates} updates; a multiple of model.vis_every amortises the decoder):"
            f"\n{'':<31} {'update':>7} {'wm only':>7} {'floor':>7}"
        )
        for free, recon in pairs:
            a, b = results[free], results[recon]
            full = a[f"{key}_per_update"] / b[f"{key}_per_update"]
            wm = a[f"{key}_per_wm_update"] / b[f"{key}_per_wm_update"]
            print(f"{free:<18} / {recon:<10} {full:>7.2f} {wm:>7.2f} {floor(a, b, key):>7.2f}")
        print("floor: the reconstruction update without its decoder, with the second view's "
              "encoder pass: the ratio if NCE and overshooting cost nothing (an estimate from "
              "the networks timed alone, as noisy as the rest)")  # fmt: skip


def floor(free: dict, recon: dict, key: str) -> float:
    """The lowest update-time ratio free / recon that the reconstruction-free objective could
    reach with its own terms (NCE, overshooting) free: the reconstruction update with its
    decoder taken out and the free model's extra encoder views put in. ``key``: mean_sec
    (wall) or mean_cpu_sec (this process's CPU time)."""
    per_view = free[f"{key}_per_encoder"] / free["encoder_views"]
    extra_views = per_view * (free["encoder_views"] - 1)
    whole = recon[f"{key}_per_update"]
    return (whole - recon[f"{key}_per_decoder"] + extra_views) / whole


def print_row(name: str, r: dict) -> None:
    print(
        f"{name:<18} {r['device']:<7} {r['threads']:>3} {r['batch']:>6} "
        f"{r['params_m']:>7.2f}M {r['sec_per_update']:>9.3f} {r['sec_per_wm_update']:>9.3f} "
        f"{r['cpu_sec_per_update']:>9.3f} {r['cpu_sec_per_wm_update']:>9.3f} "
        f"{r['peak_mb']:>8.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
