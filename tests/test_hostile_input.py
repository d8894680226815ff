"""Robust against its own robots and its own disk: memory bombs from an allowed key, chunk
values that are not plausible, chunk files that lost records at a record boundary."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass

import msgpack
import numpy as np
import pytest

from daydream.replay.store import Replay
from daydream.wire import codec
from daydream.wire.codec import MAGIC, CodecError, check_chunk_values, decode, encode

# ---------------------------------------------------------------- memory bombs

HUGE = 60_000_000  # one element per byte: a 60 MB message, under the 64 MiB message limit


def framed(header: bytes) -> bytes:
    return MAGIC + struct.pack("<I", len(header)) + header


def header_with(kind: str, field: str, raw: bytes, **fields) -> bytes:
    """A schema-2 message whose header is {v, type, actor, **fields, field: <raw msgpack>}."""
    base = {"v": codec.SCHEMA_VERSION, "type": kind, "actor": "robot-0", **fields}
    pairs = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in base.items())
    return framed(bytes([0x80 | (len(base) + 1)]) + pairs + msgpack.packb(field) + raw)


def array_of(n: int, element: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + element * n


def empty_array_description() -> bytes:
    return msgpack.packb(msgpack.ExtType(codec.ARRAY_EXT, struct.pack("<B3sBQ", 3, b"|u1", 1, 0)))


def tree(fanout: int, depth: int) -> bytes:
    """Lists nested ``depth`` deep (within MAX_DEPTH), ``fanout`` wide: fanout**depth leaves."""
    raw = b"\x90"
    for _ in range(depth - 1):
        raw = bytes([0x90 | fanout]) + raw * fanout
    return raw


def many_keys(n: int) -> bytes:
    return b"\xdf" + struct.pack(">I", n) + b"".join(b"\xa8k%07d\x00" % i for i in range(n))


# name: (reason, builder); the first six are refused before anything is unpacked
BOMBS = {
    # the incident: a heartbeat whose episodes are 60 million empty maps (was 51 s, 4.1 GB)
    "60M_empty_maps": ("oversized", lambda: header_with("heartbeat", "episodes",
                                                        array_of(HUGE, b"\x80"))),
    "60MB_str": ("oversized", lambda: header_with("heartbeat", "note", b"\xdb"
                                                  + struct.pack(">I", HUGE) + b"a" * HUGE)),
    "60M_nested_lists": ("oversized", lambda: header_with("heartbeat", "note",
                                                          b"\x91" * HUGE + b"\xc0")),
    "10M_lists_8_deep": ("oversized", lambda: header_with("heartbeat", "note", tree(10, 8))),
    "4M_keys_map": ("oversized", lambda: header_with("heartbeat", "note", many_keys(4_000_000))),
    "3.5M_array_descriptions": ("oversized", lambda: header_with(
        "chunk", "extra", array_of(3_500_000, empty_array_description()), seq=0, data={})),
    # within the global header cap, beyond what their type or one container may hold
    "heartbeat_60KB_header": ("oversized", lambda: header_with(
        "heartbeat", "episodes", array_of(60_000, b"\x80"))),
    "heartbeat_15000_maps": ("oversized", lambda: header_with(
        "heartbeat", "episodes", array_of(15_000, b"\x80"))),
    "heartbeat_15KB_str": ("oversized", lambda: header_with(
        "heartbeat", "note", msgpack.packb("a" * 15_000))),
    "heartbeat_10000_deep": ("malformed", lambda: header_with(
        "heartbeat", "note", b"\x91" * 10_000 + b"\xc0")),
    "weights_9000_keys": ("oversized", lambda: header_with(
        "weights", "note", b"\xde" + struct.pack(">H", 9000)
        + b"".join(b"\xa5%05d\x00" % i for i in range(9000)), version=1, params={})),
}  # fmt: skip


def measure_decode(name: str) -> dict:
    """Build bomb ``name``, then decode it with its time and the peak of memory allocated."""
    data = BOMBS[name][1]()
    try:  # a regression fails fast with MemoryError instead of taking the machine down
        import resource

        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        limit = vm * 1024 + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, StopIteration, ValueError):
        pass  # not Linux: no limit
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        decode(data)
        outcome = "accepted"
    except CodecError as e:
        outcome = e.reason
    except MemoryError:
        outcome = "MemoryError"
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bytes": len(data), "outcome": outcome, "seconds": seconds, "peak": peak}


CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("hostile", sys.argv[1])
module = sys.modules["hostile"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.measure_decode(sys.argv[2])))
"""


def decode_in_child(name: str) -> dict:
    """``measure_decode(name)`` in a fresh process (memory capped at +1 GB where possible)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, __file__, name],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_memory_bomb_from_an_allowed_key_is_refused_fast_without_allocating(name):
    result = decode_in_child(name)
    assert result["outcome"] == BOMBS[name][0], result
    assert result["seconds"] < 0.5, result
    assert result["peak"] < 4 * 1024 * 1024, result  # bytes; a few MB at most


def test_the_largest_header_a_peer_may_send_costs_a_few_megabytes_at_most():
    # a weights header (the largest budget) filled with 15 lists of 4096 empty maps: every
    # limit is met, so this is about the most a peer can make decode build
    lists = 15
    raw = bytes([0x90 | lists]) + array_of(codec.MAX_CONTAINER_LEN, b"\x80") * lists
    data = header_with("weights", "x", raw, version=1, params={})
    assert len(data) - 8 <= codec.WEIGHTS_HEADER_BYTES
    t0 = time.perf_counter()
    msg = decode(data)
    seconds = time.perf_counter() - t0
    tracemalloc.start()  # measured apart: tracing slows every allocation down
    decode(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(msg["x"]) == lists and seconds < 0.5 and peak < 8 * 1024 * 1024, (seconds, peak)


def test_a_header_is_checked_against_the_budget_of_its_type():
    big_ack = {"type": "ack", "actor": "a", "seqs": list(range(2**32, 2**32 + 3000))}
    with pytest.raises(CodecError, match="oversized"):
        encode(big_ack)  # the sender learns of the limit first
    forged = framed(msgpack.packb({"v": codec.SCHEMA_VERSION, **big_ack}))
    with pytest.raises(CodecError) as e:
        decode(forged)
    assert e.value.reason == "oversized" and "ack" in str(e.value)
    # the same bytes of header are fine for weights, whose budget is larger
    weights = {"type": "weights", "version": 1, "params": {}, "seqs": big_ack["seqs"]}
    assert decode(encode(weights))["seqs"] == big_ack["seqs"]


def test_two_type_fields_are_refused():
    pairs = [("v", codec.SCHEMA_VERSION), ("type", "weights"), ("version", 1), ("params", {}),
             ("actor", "a"), ("type", "heartbeat")]  # fmt: skip
    header = bytes([0x80 | len(pairs)]) + b"".join(
        msgpack.packb(k) + msgpack.packb(v) for k, v in pairs
    )
    with pytest.raises(CodecError) as e:
        decode(framed(header))
    assert e.value.reason == "malformed" and "two type" in str(e.value)


def test_chunks_weights_and_every_message_type_still_round_trip():
    rng = np.random.default_rng(0)
    steps = 32
    chunk = {
        "image": rng.integers(0, 255, (steps, 64, 64, 3), dtype=np.uint8),
        "joints": rng.standard_normal((steps, 6)).astype(np.float32),
        "reward": rng.standard_normal(steps).astype(np.float32),
        "is_first": np.arange(steps) == 0,
        "action": np.eye(7, dtype=np.float32)[rng.integers(0, 7, steps)],
    }
    params = {
        f"actor.layer{i}.weight": rng.standard_normal(180_000).astype(np.float32) for i in range(50)
    }  # fmt: skip  36 MB, as the UR5 policy
    messages = [
        {"type": "chunk", "actor": "ur5-0", "seq": 12, "data": chunk},
        {"type": "weights", "version": 9, "params": params},
        {"type": "hello", "actor": "ur5-0"},
        {
            "type": "heartbeat",
            "actor": "ur5-0",
            "episodes": [[-12.5, 200, {"final_distance": 0.013, "placements": 2.0}]] * 64,
            "policy_version": 9,
        },  # fmt: skip
        {"type": "ack", "actor": "ur5-0", "seqs": list(range(2**40, 2**40 + 1000))},
        {"type": "nack", "seqs": [1, 2], "reason": "é" * 200},
        {"type": "weights_info", "version": -1},
        {"type": "weights_request", "version": 3},
        {"type": "error", "reason": "oversized"},
    ]
    assert {m["type"] for m in messages} == set(codec.MESSAGE_FIELDS)
    for msg in messages:
        out = decode(encode(msg, max_bytes=1 << 30), max_bytes=1 << 30)
        for key, value in msg.items():
            if isinstance(value, dict):
                assert out[key].keys() == value.keys()
                for k, arr in value.items():
                    np.testing.assert_array_equal(out[key][k], arr)
            else:
                assert out[key] == value, (msg["type"], key)


# ---------------------------------------------------------------- chunk values


@dataclass(frozen=True)
class Space:  # the attributes check_chunk_values reads, as robots.base.Space has them
    shape: tuple[int, ...]
    dtype: np.dtype = np.dtype(np.float32)
    low: float | np.ndarray | None = None
    high: float | np.ndarray | None = None
    discrete: bool = False


T = 32
SPACES = {
    "image": Space((64, 64, 3), np.dtype(np.uint8)),
    "joints": Space((3,), low=np.array([-0.8, -1.05, -2.7]), high=np.array([0.8, 4.19, -0.92])),
    "reward": Space(()),
    "is_first": Space((), np.dtype(bool)),
    "is_last": Space((), np.dtype(bool)),
    "is_terminal": Space((), np.dtype(bool)),
    "action": Space((3,), low=np.array([-1.0, -0.1, 0.0]), high=np.array([1.0, 0.1, 0.5])),
    "intervention": Space(()),
}


def clean_chunk() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    chunk = {k: np.zeros((T, *s.shape), s.dtype) for k, s in SPACES.items()}
    chunk["image"] = rng.integers(0, 255, chunk["image"].shape, dtype=np.uint8)
    chunk["joints"][:] = 5.0  # observations may leave their declared bounds (sensor noise)
    chunk["reward"] = rng.standard_normal(T).astype(np.float32)
    chunk["is_first"][0] = True
    chunk["intervention"][5:9] = 1.0
    low, high = SPACES["action"].low, SPACES["action"].high
    chunk["action"] = rng.uniform(low, high, (T, 3)).astype(np.float32)
    chunk["action"][3] = np.clip(np.float32(high) + 1, low, high).astype(np.float32)  # clamped
    return chunk


def test_a_clean_chunk_passes_the_value_checks_quickly():
    chunk = clean_chunk()
    assert chunk["action"][3, 1] > SPACES["action"].high[1]  # float32 rounding of the clamp
    assert check_chunk_values(chunk, SPACES) == ""
    t0 = time.perf_counter()
    for _ in range(100):
        check_chunk_values(chunk, SPACES)
    assert (time.perf_counter() - t0) / 100 < 0.005  # seconds; ~0.1 ms here


@pytest.mark.parametrize(
    "key, step, value, reason",
    [
        ("reward", 4, np.nan, "non_finite"),
        ("joints", 7, np.inf, "non_finite"),
        ("action", 2, -np.inf, "non_finite"),
        ("intervention", 1, 0.5, "not_boolean"),
        ("action", 9, [1.01, 0.0, 0.0], "out_of_bounds"),
        ("action", 9, [0.0, -0.1001, 0.0], "out_of_bounds"),
        ("action", 30, [0.0, 0.0, -0.001], "out_of_bounds"),
    ],
)
def test_implausible_values_are_refused_with_their_reason(key, step, value, reason):
    chunk = clean_chunk()
    chunk[key][step] = value
    problem = check_chunk_values(chunk, SPACES)
    assert problem.split(":")[0] == reason and key in problem, problem
    assert reason in codec.VALUE_REASONS


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8])
@pytest.mark.parametrize("key", ["is_first", "is_last", "is_terminal"])
def test_episode_flags_of_any_dtype_must_be_zero_or_one(key, dtype):
    spaces = {**SPACES, key: Space((), np.dtype(dtype))}
    chunk = clean_chunk()
    chunk[key] = chunk[key].astype(dtype)
    assert check_chunk_values(chunk, spaces) == ""
    chunk[key][3] = 2
    assert check_chunk_values(chunk, spaces).startswith(f"not_boolean: {key}")


def test_a_discrete_action_must_be_exactly_one_hot_except_where_nothing_was_executed():
    spaces = {**SPACES, "action": Space((4,), discrete=True)}
    chunk = clean_chunk()
    chunk["action"] = np.eye(4, dtype=np.float32)[np.arange(T) % 4]
    chunk["is_last"][-1] = True
    chunk["action"][-1] = 0.0  # the actor stores zeros on the last step: nothing executed
    assert check_chunk_values(chunk, spaces) == ""
    for bad in ([1, 1, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0], [2, 0, 0, -1], [0, 0.999, 0, 0]):
        chunk2 = {**chunk, "action": chunk["action"].copy()}
        chunk2["action"][6] = bad
        assert check_chunk_values(chunk2, spaces) == "bad_one_hot: action at step 6 is not one-hot"


# ---------------------------------------------------------------- replay files


def make_chunk(seq: int) -> dict[str, np.ndarray]:
    return {"step": np.arange(4, dtype=np.int64) + 10 * seq, "image": np.zeros((4, 4, 4, 3),
            np.uint8), "is_first": np.zeros(4, bool)}  # fmt: skip


def record_starts(data: bytes) -> list[int]:
    return [m.start() for m in re.finditer(b"DDCHUNK1", data)]


def batch_file(tmp_path, seqs) -> tuple:
    replay = Replay(capacity=1000, directory=tmp_path)
    replay.add_batch([("a", s, make_chunk(s)) for s in seqs])
    (path,) = tmp_path.glob("*.chunk")
    return path, path.read_bytes()


def test_a_file_cut_at_a_record_boundary_is_reported_and_its_records_kept(tmp_path, caplog):
    path, data = batch_file(tmp_path, range(3))
    path.write_bytes(data[: record_starts(data)[2]])  # the third record is gone, cleanly
    with caplog.at_level(logging.WARNING, logger="daydream.replay.store"):
        again = Replay(capacity=1000, directory=tmp_path)
    assert sorted(again.keys()) == [("a", 0), ("a", 1)]
    (message,) = again.warnings
    assert str(path) in message and "holds 2 records, its header expected 3" in message
    assert message in caplog.text
    assert again.stats()["incomplete"] == 1 and again.stats()["corrupt"] == 0


def test_a_file_missing_a_record_in_the_middle_is_reported(tmp_path):
    path, data = batch_file(tmp_path, range(3))
    starts = record_starts(data)
    path.write_bytes(data[: starts[1]] + data[starts[2] :])
    again = Replay(capacity=1000, directory=tmp_path)
    assert sorted(again.keys()) == [("a", 0), ("a", 2)]
    assert any("holds 2 records, its header expected 3" in w for w in again.warnings)


def test_a_file_that_lost_every_record_is_set_aside(tmp_path):
    path, data = batch_file(tmp_path, range(2))
    path.write_bytes(data[: record_starts(data)[0]])  # only the file header is left
    again = Replay(capacity=1000, directory=tmp_path)
    assert again.num_chunks == 0 and (tmp_path / (path.name + ".corrupt")).exists()
    assert "holds 0 records, its header expected 2" in again.warnings[0]


def test_files_without_a_header_still_load_and_are_reported_once(tmp_path, caplog):
    for first in (0, 10):  # two files as the previous release wrote them (no header)
        sub = tmp_path / str(first)
        path, data = batch_file(sub, range(first, first + 2))
        (tmp_path / f"{first:012d}.chunk").write_bytes(data[record_starts(data)[0] :])
    with caplog.at_level(logging.WARNING, logger="daydream.replay.store"):
        again = Replay(capacity=1000, directory=tmp_path)
    assert sorted(again.keys()) == [("a", s) for s in (0, 1, 10, 11)]
    (message,) = again.warnings
    assert "2 chunk files" in message and "cannot tell if they are complete" in message
    assert caplog.text.count("cannot tell") == 1


def test_a_torn_record_is_still_quarantined_and_named_in_the_warnings(tmp_path):
    path, data = batch_file(tmp_path, range(1))
    path.write_bytes(data[:-10])
    again = Replay(capacity=1000, directory=tmp_path)
    assert again.num_chunks == 0 and (tmp_path / (path.name + ".corrupt")).exists()
    assert "torn or corrupt after 0 of 1 records" in again.warnings[0]
    assert str(path) in again.warnings[0]


def test_a_clean_reload_has_no_warnings(tmp_path):
    batch_file(tmp_path, range(3))
    again = Replay(capacity=1000, directory=tmp_path)
    assert again.num_chunks == 3 and again.warnings == []
    assert Replay(capacity=10).warnings == []
