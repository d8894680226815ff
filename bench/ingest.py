"""Ingest benchmark: transitions/s from actor processes through ZeroMQ and the gateway into the
replay (chunk files fsynced), for each place the gateway can run (``learner.gateway``), beside
the raw ZeroMQ rate for the same payloads with the same encryption, in one run.

Each step is a 64x64x3 uint8 image + 32 float32 (+ reward, is_first, is_last, is_terminal);
steps travel in chunks of ``--chunk`` steps.

    raw     N processes PUSH the chunk's arrays as raw frames (CURVE) -> one PULL that discards
    thread  N processes: codec -> Outbox -> TransportClient (CURVE) -> Gateway (a thread beside
            the driver) -> Ray call -> ReplayActor (chunk files fsynced) -> ack -> Outbox
    ray     the same with the Gateway as its own Ray actor
    replay  the Gateway inside the replay actor's process: socket -> ReplayService, no Ray call
            on the way (the default since issue 13)
    disk    one batch of chunks written and fsynced as the replay writes it, in a loop: what the
            disk allows (transitions/s), whatever the software does
    reload  after each round with a disk: the time a restarted learner's replay takes to read
            back what the round stored (records read, CRCs checked)

    python bench/ingest.py [--actors 2] [--seconds 6] [--chunk 32] [--modes thread,ray,replay]
                           [--no-curve] [--no-disk] [--capacity STEPS] [--sample-hz HZ]
                           [--baseline REV]

``--baseline REV`` runs every round twice, with this code and with the code of git revision REV
(a temporary worktree, this bench), each round in a process of its own, taking turns at going
first, and prints this / REV per mode: before and after in one run, on the same machine and
disk (whose rate drifts between runs minutes apart).

A mode named twice runs twice (``--modes replay,thread,replay,thread``: alternating rounds);
ratios use the median of its rounds. Each round also prints the CPU milliseconds per 1,000
transitions of every process on the way (actors, gateway, replay), which a busy machine
disturbs far less than the rate. Each actor keeps what a robot's outbox keeps unacknowledged
(256 chunks); ``--sample-hz`` adds a learner sampling the replay meanwhile and prints how long
its calls take.

Targets: issue 13, the replay mode at >= 50,000 transitions/s with CURVE and fsync; issue 6,
at least half the raw rate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the daydream it measures: this tree's, or (a --baseline round) the tree named here
TREE = Path(os.environ.get("DAYDREAM_BENCH_TREE") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(TREE))
sys.path.append(str(Path(__file__).resolve().parent))  # the other bench scripts

from revisions import worktree  # noqa: E402

MODES = ("thread", "ray", "replay")  # learner.gateway
STEP_BYTES = 64 * 64 * 3 + 32 * 4 + 4 + 3
TARGET = 50_000  # transitions/s, issue 13
GROWING = 2_000_000  # replay capacity in steps without --capacity: more than a round stores


def make_chunks(n: int, steps: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.integers(0, 255, (steps, 64, 64, 3), dtype=np.uint8),
            "vector": rng.standard_normal((steps, 32)).astype(np.float32),
            "reward": rng.standard_normal(steps).astype(np.float32),
            "is_first": np.zeros(steps, bool),
            "is_last": np.zeros(steps, bool),
            "is_terminal": np.zeros(steps, bool),
        }
        for _ in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- raw PUSH/PULL


def raw_sender(endpoint: str, key_dir: str | None, steps: int, seconds: float, seed: int) -> None:
    import zmq

    from daydream.wire import curve

    chunks = make_chunks(4, steps, seed)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 64)
    if key_dir is not None:
        public, secret = curve.load_keypair(Path(key_dir) / "actor.key_secret")
        server = curve.load_keypair(Path(key_dir) / "gateway.key")[0]
        curve.make_curve_client(sock, public, secret, server)
    sock.connect(endpoint)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        c = chunks[i % len(chunks)]
        try:
            sock.send_multipart([memoryview(c[k]) for k in c], copy=False, flags=zmq.NOBLOCK)
            i += 1
        except zmq.Again:
            time.sleep(0.0005)
    sock.close(0)
    ctx.term()


def bench_raw(args, key_dir: Path | None) -> tuple[float, dict[str, float]]:
    """Transitions/s one PULL socket receives from ``args.actors`` PUSH processes, and the CPU
    milliseconds per 1,000 transitions of the senders and of the receiver."""
    import zmq

    from daydream.wire import curve

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if key_dir is not None:
        curve.make_curve_server(sock, curve.load_keypair(key_dir / "gateway.key_secret")[1])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(endpoint)
    spawn = mp.get_context("spawn")
    run_for = args.warmup + args.seconds + 5
    kd = str(key_dir) if key_dir else None
    procs = [spawn.Process(target=raw_sender, args=(endpoint, kd, args.chunk, run_for, i))
             for i in range(args.actors)]  # fmt: skip
    for p in procs:
        p.start()
    sock.poll(60_000)  # first message: senders are up
    t_warm = time.monotonic() + args.warmup
    count, t0 = 0, None
    pids = {"senders": [p.pid for p in procs], "receiver": [os.getpid()]}
    cpu0: dict[str, float] = {}
    while True:
        if not sock.poll(1000):
            break
        sock.recv_multipart(copy=False)
        now = time.monotonic()
        if t0 is None and now >= t_warm:
            t0, count = now, 0
            cpu0 = {name: sum(map(cpu_seconds, ps)) for name, ps in pids.items()}
        elif t0 is not None:
            count += 1
            if now - t0 >= args.seconds:
                break
    rate = count * args.chunk / (time.monotonic() - t0)
    steps = max(count * args.chunk, 1)
    cpu = {name: 1e6 * (sum(map(cpu_seconds, ps)) - cpu0[name]) / steps
           for name, ps in pids.items()}  # fmt: skip
    for p in procs:
        p.terminate()
        p.join()
    sock.close(0)
    ctx.term()
    return rate, cpu


# ---------------------------------------------------------------- disk


def bench_disk(args, directory: Path) -> float:
    """Transitions/s the replay's file writes (one file of max_batch chunks, fsynced, renamed,
    directory fsynced) reach on this disk, with nothing else in the way."""
    from daydream.replay.store import Replay

    batch = [("disk", seq, c) for seq, c in enumerate(make_chunks(args.max_batch, args.chunk, 0))]
    replay = Replay(capacity=2 * args.max_batch * args.chunk, directory=directory)
    steps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < min(args.seconds, 3.0):
        batch = [(s, seq + len(batch), c) for s, seq, c in batch]  # new chunks each round
        replay.add_batch(batch)
        steps += len(batch) * args.chunk
    rate = steps / (time.monotonic() - t0)
    shutil.rmtree(directory, ignore_errors=True)
    return rate


def bench_reload(directory: Path, capacity: int) -> str:
    """How long a restarted learner's replay takes to reload what a round stored (every record
    read and its CRC checked), as a line to print."""
    from daydream.replay.store import Replay

    size = sum(p.stat().st_size for p in directory.glob("*.chunk"))
    t0 = time.monotonic()
    replay = Replay(capacity=capacity, directory=directory, read_only=True)
    took = time.monotonic() - t0
    return (f"    reload (a learner's restart): {replay.num_steps:,} steps of {size / 1e6:,.0f} MB "
            f"in {took:.2f} s ({replay.num_steps / took:,.0f} steps/s)")  # fmt: skip


# ---------------------------------------------------------------- daydream pipeline


def daydream_actor(
    endpoint: str, actor: str, key_dir: str | None, steps: int, seconds: float, seed: int
) -> None:
    from daydream.wire.outbox import Outbox
    from daydream.wire.transport import TransportClient

    chunks = make_chunks(4, steps, seed)
    curve = key_dir is not None
    kd = Path(key_dir) if curve else None
    client = TransportClient(
        endpoint,
        actor,
        curve=curve,
        key_file=kd / "actor.key_secret" if curve else None,
        server_key_file=kd / "gateway.key" if curve else None,
    )
    box = Outbox(None, resend_after=30.0)  # a robot's outbox: up to 256 chunks unacknowledged
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(box) < box.max_memory:
            seq = box.allocate_seq()
            box.put(seq, client.encode_chunk(seq, chunks[seq % len(chunks)]))
        box.pump(client.send)
        for msg in client.poll(2):
            box.handle(msg)
    client.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def code_of(handle) -> str:
    """The tree whose daydream a Ray actor runs (``--baseline``: checked to be the one meant)."""
    import ray

    where = ray.get(handle.__ray_call__.remote(lambda self: sys.modules[type(self).__module__]
                                               .__file__))  # fmt: skip
    return str(Path(where).resolve().parents[2])


def actor_pid(handle) -> int:
    """The process of a Ray actor."""
    import ray

    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))


def bench_daydream(args, mode: str, key_dir: Path | None, directory: Path) -> tuple[float, dict]:
    """Transitions/s stored by the replay with the gateway where ``mode`` puts it, and the CPU
    milliseconds per 1,000 transitions of each process on the way."""
    from daydream.replay.remote import RemoteReplay
    from daydream.runtime.learner import GatewayRunner

    replay = RemoteReplay.start(
        capacity=args.capacity or (10**9 if args.no_disk else GROWING),
        directory=None if args.no_disk else str(directory),
    )
    gateway = GatewayRunner(mode, replay, f"tcp://127.0.0.1:{free_port()}",
                            curve=key_dir is not None, key_dir=key_dir,
                            max_batch=args.max_batch, poll_ms=20)  # fmt: skip
    spawn = mp.get_context("spawn")
    kd = str(key_dir) if key_dir else None
    run_for = args.warmup + args.seconds + 30
    procs = [spawn.Process(target=daydream_actor,
                           args=(gateway.endpoint, f"actor-{i}", kd, args.chunk, run_for, i))
             for i in range(args.actors)]  # fmt: skip
    for p in procs:
        p.start()
    where = {"actors": [p.pid for p in procs], "replay": [actor_pid(replay.handle)]}
    if mode == "thread":
        where["gateway (driver)"] = [os.getpid()]
    elif mode == "ray":
        where["gateway"] = [actor_pid(gateway.gateway)]
    else:
        where["gateway + replay"] = where.pop("replay")
    deadline = time.monotonic() + 120
    while replay.stats()["inserted_steps"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(args.warmup)
    cpu0 = {name: sum(map(cpu_seconds, pids)) for name, pids in where.items()}
    sampler = LearnerSampling(replay, args.sample_hz)
    s0, t0 = replay.stats()["inserted_steps"], time.monotonic()
    time.sleep(args.seconds)
    s1, t1 = replay.stats()["inserted_steps"], time.monotonic()
    cpu = {name: sum(map(cpu_seconds, pids)) - cpu0[name] for name, pids in where.items()}
    sampling = sampler.stop()
    for p in procs:
        p.terminate()
        p.join()
    stats = gateway.stats()
    gateway.stop()
    replay_stats = replay.stats()
    code = code_of(replay.handle)
    replay.close()
    reload = "" if args.no_disk else bench_reload(directory, args.capacity or GROWING)
    shutil.rmtree(directory, ignore_errors=True)  # its page cache goes too: rounds start alike
    per_k = {name: 1e6 * c / max(s1 - s0, 1) for name, c in cpu.items()}  # ms / 1,000 steps
    return (s1 - s0) / (t1 - t0), {**stats, **{f"replay_{k}": v for k, v in replay_stats.items()},
                                   "cpu_ms_per_1000": per_k, "reload": reload,
                                   "sampling": sampling, "code": code}  # fmt: skip


class LearnerSampling:
    """A learner's ``replay.sample`` calls (16 x 50 steps, through Ray) at ``hz`` beside the
    ingest, each call timed: how long the learner waits while robots stream (0 Hz: none)."""

    def __init__(self, replay, hz: float) -> None:
        import threading

        self.replay, self.hz, self.times = replay, hz, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if hz > 0:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0 / self.hz):
            start = time.perf_counter()
            self.replay.sample(16, 50, counted=False)
            self.times.append(time.perf_counter() - start)

    def stop(self) -> str:
        if self.hz <= 0:
            return ""
        self._stop.set()
        self._thread.join()
        ms = np.asarray(self.times) * 1e3
        return (f"    the learner's sample calls (16 x 50 steps at {self.hz:g} Hz): p50 "
                f"{np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max "
                f"{ms.max():.1f} ms ({len(ms)} calls)")


def cpu_line(cpu: dict[str, float]) -> str:
    return f"    CPU ms per 1,000 transitions: {sum(cpu.values()):.0f} = " + ", ".join(
        f"{name} {ms:.0f}" for name, ms in cpu.items()
    )


def line(name: str, rate: float, raw: float | None = None) -> str:
    text = f"{name:<28}: {rate:10,.0f} transitions/s  ({rate * STEP_BYTES / 1e6:6,.0f} MB/s)"
    return text + (f"  {rate / raw:5.2f} of raw" if raw else "")


def print_stats(stats: dict) -> None:
    print(cpu_line(stats["cpu_ms_per_1000"]), flush=True)
    for extra in ("sampling", "reload"):
        if stats[extra]:
            print(stats[extra], flush=True)
    keep = ("chunks_received", "chunks_added", "chunks_duplicate", "chunks_being_written",
            "acks_sent", "replay_errors", "dropped_sends")  # fmt: skip
    print("    ", {k: stats[k] for k in keep if k in stats},
          {k: v for k, v in stats.items() if k.startswith("rejected_")}, flush=True)


def child_round(
    args, mode: str, key_dir: Path | None, directory: Path, tree: Path | None
) -> tuple[float, dict]:
    """One round in a process of its own (its own Ray), measuring the daydream of ``tree``
    (None: this one) with this bench: ``--baseline``'s rounds."""
    cmd = [sys.executable, __file__, "--child-round", mode, "--child-dir", str(directory),
           "--actors", str(args.actors), "--seconds", str(args.seconds),
           "--warmup", str(args.warmup), "--chunk", str(args.chunk),
           "--max-batch", str(args.max_batch), "--capacity", str(args.capacity),
           "--sample-hz", str(args.sample_hz)]  # fmt: skip
    cmd += ["--no-disk"] if args.no_disk else []
    cmd += ["--child-keys", str(key_dir)] if key_dir is not None else []
    env = dict(os.environ)
    if tree is not None:
        env.update(DAYDREAM_BENCH_TREE=str(tree), PYTHONPATH=str(tree))  # Ray's workers too
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or TREE)
    if out.returncode != 0:
        raise SystemExit(f"a round at {tree or TREE} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["stats"]["code"] != str((tree or TREE).resolve()):
        raise SystemExit(f"a round meant for {tree or TREE} ran {result['stats']['code']}'s code")
    return result["rate"], result["stats"]


def run_child_round(args) -> int:
    from daydream.replay.remote import start_ray, stop_ray

    start_ray(num_cpus=2)
    try:
        key_dir = Path(args.child_keys) if args.child_keys else None
        rate, stats = bench_daydream(args, args.child_round, key_dir, Path(args.child_dir))
    finally:
        stop_ray()
    print(json.dumps({"rate": rate, "stats": stats}, default=str))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--chunk", type=int, default=32, help="steps per chunk")
    parser.add_argument("--max-batch", type=int, default=32, help="gateway.max_batch")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"where the gateway runs, in order (of {', '.join(MODES)})")
    parser.add_argument("--no-curve", action="store_true", help="plain TCP, no CURVE")
    parser.add_argument("--no-disk", action="store_true", help="replay in memory, no fsync")
    parser.add_argument("--capacity", type=int, default=0,
                        help="replay capacity in steps (default: more than a round stores, "
                             "so it only grows; a small one evicts, as a full one)")  # fmt: skip
    parser.add_argument("--sample-hz", type=float, default=0.0,
                        help="a learner's sample calls per second beside the ingest, timed")
    parser.add_argument("--baseline", metavar="REV",
                        help="alternate every round with the code of git revision REV")
    parser.add_argument("--child-round", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    parser.add_argument("--child-keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_round:
        return run_child_round(args)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: a comma-separated list of {', '.join(MODES)}")
    from daydream.replay.remote import start_ray, stop_ray
    from daydream.wire import curve

    tmp = Path(tempfile.mkdtemp(prefix="daydream-ingest-"))
    key_dir = None if args.no_curve else tmp / "keys"
    if key_dir is not None:
        curve.create_keys(key_dir, ["actor"])
    load = os.getloadavg()[0]
    print(f"ingest: {args.actors} actor processes, {args.chunk} steps/chunk "
          f"({STEP_BYTES * args.chunk / 1e6:.2f} MB), {os.cpu_count()} CPUs (load {load:.1f}), "
          f"curve={'off' if args.no_curve else 'on'}, disk={'off' if args.no_disk else 'fsync'}, "
          f"gateway.max_batch={args.max_batch}, {args.seconds:g} s each", flush=True)  # fmt: skip
    raw, cpu = bench_raw(args, key_dir)
    print(line(f"raw ZeroMQ ({'plain' if args.no_curve else 'CURVE'})", raw), flush=True)
    print(cpu_line(cpu), flush=True)
    if not args.no_disk:
        print(line("disk (write + fsync only)", bench_disk(args, tmp / "disk")), flush=True)
    codes: list[tuple[str, Path | None]] = [("this", None)]
    if args.baseline:
        codes.append((args.baseline, worktree(args.baseline)))
    rates: dict[tuple[str, str], list[float]] = {}
    if not args.baseline:
        start_ray(num_cpus=2)
    try:
        for i, mode in enumerate(modes):
            for j, (code, tree) in enumerate(codes if i % 2 == 0 else codes[::-1]):  # in turn
                directory = tmp / f"replay-{i}-{mode}-{j}"
                if args.baseline:  # every round in its own process tree, this code's too
                    rate, stats = child_round(args, mode, key_dir, directory, tree)
                else:
                    rate, stats = bench_daydream(args, mode, key_dir, directory)
                rates.setdefault((code, mode), []).append(rate)
                at = f" at {code}" if tree is not None else ""
                print(line(f"daydream{at}, gateway: {mode}", rate, raw), flush=True)
                print_stats(stats)
    finally:
        if not args.baseline:
            stop_ray()
        shutil.rmtree(tmp, ignore_errors=True)
    median = {key: float(np.median(values)) for key, values in rates.items()}
    this = {mode: median[("this", mode)] for mode in dict.fromkeys(modes)}  # this code's
    for mode in this if args.baseline else ():
        ratio = this[mode] / max(median[(args.baseline, mode)], 1e-9)
        print(f"this / {args.baseline}, {mode:<14}: {ratio:10.2f}  (medians of the rounds)")
    if "replay" in this:
        new = this["replay"]
        for old in (m for m in this if m != "replay"):
            print(f"replay / {old:<21}: {new / max(this[old], 1e-9):10.2f}"
                  "  (medians of the rounds)")
        ok = new >= TARGET and not args.no_curve and not args.no_disk
        print(f"target (issue 13)           : replay >= {TARGET:,} transitions/s with CURVE and "
              f"fsync: {'PASS' if ok else 'BELOW TARGET'}; >= 0.5 of raw: "
              f"{'PASS' if new >= 0.5 * raw else 'BELOW'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
