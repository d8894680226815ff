"""Ingest benchmark: transitions/s from actor processes through ZeroMQ and the gateway into
the Ray replay, beside the raw pyzmq PUSH/PULL rate for the same payloads, in the same run.

Each step is a 64x64x3 uint8 image + 32 float32 (+ reward, is_first, is_last, is_terminal);
steps travel in chunks of ``--chunk`` steps.

    raw       N processes PUSH the chunk's arrays as raw frames -> one PULL that discards them
    daydream  N processes: codec -> Outbox -> TransportClient (CURVE) -> Gateway (thread beside
              the driver, or --gateway ray) -> ReplayActor (Ray; chunk files fsynced unless
              --no-disk) -> ack -> Outbox

    python bench/ingest.py [--actors 2] [--seconds 6] [--chunk 32] [--no-curve] [--no-disk]

Target (issue 6): daydream >= half of raw and > 5,000 transitions/s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def raw_sender(endpoint: str, steps: int, seconds: float, seed: int) -> None:
    import zmq

    chunks = make_chunks(4, steps, seed)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 64)
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


def bench_raw(actors: int, steps: int, seconds: float, warmup: float) -> float:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(endpoint)
    spawn = mp.get_context("spawn")
    procs = [
        spawn.Process(target=raw_sender, args=(endpoint, steps, warmup + seconds + 5, i))
        for i in range(actors)
    ]
    for p in procs:
        p.start()
    sock.poll(60_000)  # first message: senders are up
    t_warm = time.monotonic() + warmup
    count, t0 = 0, None
    while True:
        if not sock.poll(1000):
            break
        sock.recv_multipart(copy=False)
        now = time.monotonic()
        if t0 is None and now >= t_warm:
            t0, count = now, 0
        elif t0 is not None:
            count += 1
            if now - t0 >= seconds:
                break
    rate = count * steps / (time.monotonic() - t0)
    for p in procs:
        p.terminate()
        p.join()
    sock.close(0)
    ctx.term()
    return rate


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
    window = 32  # unacknowledged chunks in flight
    box = Outbox(None, max_memory=window, resend_after=30.0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(box) < window:
            seq = box.allocate_seq()
            box.put(seq, client.encode_chunk(seq, chunks[seq % len(chunks)]))
        box.pump(client.send)
        for msg in client.poll(2):
            box.handle(msg)
    client.close()


def bench_daydream(args, steps: int, seconds: float, warmup: float) -> tuple[float, dict]:
    from daydream.replay.remote import RemoteReplay, call, remote_class, start_ray, stop_ray
    from daydream.wire import curve
    from daydream.wire.gateway import Gateway

    tmp = Path(tempfile.mkdtemp(prefix="daydream-ingest-"))
    key_dir = None
    if not args.no_curve:
        key_dir = tmp / "keys"
        curve.create_keys(key_dir, ["actor"])
    start_ray(num_cpus=2)
    replay = RemoteReplay.start(
        capacity=10**9 if args.no_disk else 2_000_000,  # noqa: PLR2004
        directory=None if args.no_disk else str(tmp / "replay"),
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    gw_kwargs = dict(curve=key_dir is not None, key_dir=key_dir, max_batch=32, poll_ms=20)
    if args.gateway == "ray":
        gateway = remote_class(Gateway).remote(replay, endpoint, **gw_kwargs)
        call(gateway, "start")
    else:
        gateway = Gateway(replay, endpoint, **gw_kwargs)
        gateway.start()
    spawn = mp.get_context("spawn")
    procs = [
        spawn.Process(
            target=daydream_actor,
            args=(endpoint, f"actor-{i}", str(key_dir) if key_dir else None, steps,
                  warmup + seconds + 30, i),
        )  # fmt: skip
        for i in range(args.actors)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while replay.stats()["inserted_steps"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(warmup)
    s0, t0 = replay.stats()["inserted_steps"], time.monotonic()
    time.sleep(seconds)
    s1, t1 = replay.stats()["inserted_steps"], time.monotonic()
    for p in procs:
        p.terminate()
        p.join()
    stats = call(gateway, "stats") if args.gateway == "ray" else gateway.stats()
    if args.gateway == "ray":
        call(gateway, "stop")
    else:
        gateway.stop()
    replay_stats = replay.stats()
    stop_ray()
    return (s1 - s0) / (t1 - t0), {**stats, **{f"replay_{k}": v for k, v in replay_stats.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--chunk", type=int, default=32, help="steps per chunk")
    parser.add_argument("--gateway", choices=["thread", "ray"], default="ray")
    parser.add_argument("--no-curve", action="store_true", help="plain TCP, no CURVE")
    parser.add_argument("--no-disk", action="store_true", help="replay in memory, no fsync")
    args = parser.parse_args()
    step_bytes = 64 * 64 * 3 + 32 * 4 + 4 + 3
    print(
        f"ingest: {args.actors} actor processes, {args.chunk} steps/chunk "
        f"({step_bytes * args.chunk / 1e6:.2f} MB), {os.cpu_count()} CPUs, "
        f"curve={'off' if args.no_curve else 'on'}, disk={'off' if args.no_disk else 'fsync'}, "
        f"gateway={args.gateway}",
        flush=True,
    )
    raw = bench_raw(args.actors, args.chunk, args.seconds, args.warmup)
    print(f"raw pyzmq PUSH/PULL : {raw:10,.0f} transitions/s  ({raw * step_bytes / 1e6:,.0f} MB/s)")
    rate, stats = bench_daydream(args, args.chunk, args.seconds, args.warmup)
    mbs = rate * step_bytes / 1e6
    print(f"daydream -> replay  : {rate:10,.0f} transitions/s  ({mbs:,.0f} MB/s)")
    print(f"ratio               : {rate / raw:10.2f} of raw (target >= 0.5, and > 5,000/s)")
    keep = ("chunks_received", "chunks_added", "chunks_duplicate", "acks_sent", "replay_errors")
    print("gateway/replay      :", {k: stats[k] for k in keep if k in stats},
          {k: v for k, v in stats.items() if k.startswith("rejected_")})  # fmt: skip
    ok = rate >= 0.5 * raw and rate > 5000
    print("PASS" if ok else "BELOW TARGET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
