"""Replay: sequence sampling, gaps, eviction, duplicates, persistence, recency (no Ray)."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from daydream.core.chunks import ChunkBuilder
from daydream.replay.store import Replay


def make_chunk(
    stream_id: int, seq: int, length: int = 4, first: bool = False
) -> dict[str, np.ndarray]:
    """Steps whose ``step`` value encodes (stream, seq, position), so samples can be traced back."""
    pos = np.arange(length)
    is_first = np.zeros(length, bool)
    is_first[0] = first
    return {
        "step": (stream_id * 1_000_000 + seq * 1000 + pos).astype(np.int64),
        "image": np.full((length, 4, 4, 3), seq % 256, np.uint8),
        "is_first": is_first,
    }


def decode(value: int) -> tuple[int, int, int]:
    return value // 1_000_000, (value % 1_000_000) // 1000, value % 1000


def assert_contiguous(batch: dict[str, np.ndarray], chunk_len: int) -> None:
    for row in batch["step"]:
        stream0, seq0, pos0 = decode(int(row[0]))
        for t, value in enumerate(row):
            absolute = seq0 * chunk_len + pos0 + t
            assert decode(int(value)) == (stream0, absolute // chunk_len, absolute % chunk_len)


def test_sample_shapes_and_sequences_are_contiguous_across_chunks():
    replay = Replay(capacity=10_000)
    for s in range(2):
        for seq in range(10):
            assert replay.add(f"a{s}", seq, make_chunk(s, seq, first=(seq % 3 == 0)))
    batch = replay.sample(batch_size=64, length=10)
    assert batch["step"].shape == (64, 10)
    assert batch["image"].shape == (64, 10, 4, 4, 3) and batch["image"].dtype == np.uint8
    assert batch["is_first"].dtype == bool
    assert_contiguous(batch, 4)
    # sequences cross chunk boundaries and episode starts (is_first inside is kept, not dropped)
    assert batch["is_first"][:, 1:].any()


def test_sequences_never_span_a_gap_in_sequence_numbers():
    replay = Replay(capacity=10_000)
    for seq in [0, 1, 2, 5, 6, 7]:  # 3 and 4 missing: two runs of 12 steps
        replay.add("a", seq, make_chunk(0, seq))
    assert replay.ready(12) and not replay.ready(13)
    batch = replay.sample(batch_size=500, length=12)
    assert_contiguous(batch, 4)
    starts = {decode(int(v))[1:] for v in batch["step"][:, 0]}
    assert starts == {(0, 0), (5, 0)}  # only the two full runs fit
    with pytest.raises(ValueError, match="cannot sample"):
        replay.sample(1, 13)


def test_out_of_order_chunk_closes_the_gap():
    replay = Replay(capacity=10_000)
    for seq in [0, 2, 3]:
        replay.add("a", seq, make_chunk(0, seq))
    assert not replay.ready(13)
    replay.add("a", 1, make_chunk(0, 1))  # a resend arriving late
    assert replay.ready(16)
    assert_contiguous(replay.sample(8, 16), 4)


def test_sampling_is_uniform_over_start_positions():
    replay = Replay(capacity=10_000, seed=1)
    for seq in range(5):
        replay.add("a", seq, make_chunk(0, seq))  # 20 steps -> 17 starts of length 4
    batch = replay.sample(batch_size=17_000, length=4)
    starts = np.array([decode(int(v))[1] * 4 + decode(int(v))[2] for v in batch["step"][:, 0]])
    counts = np.bincount(starts, minlength=17)
    assert counts.shape == (17,) and counts.min() > 800 and counts.max() < 1200


def test_short_episodes_and_partial_chunks_are_kept():
    replay = Replay(capacity=10_000)
    builder = ChunkBuilder(4)
    chunks = []
    for t in range(10):
        out = builder.add({"x": np.array([t], np.float32), "is_first": np.array(t % 3 == 0)})
        if out is not None:
            chunks.append(out)
    chunks.append(builder.flush())
    assert [len(c["x"]) for c in chunks] == [4, 4, 2] and builder.flush() is None
    for seq, chunk in enumerate(chunks):
        replay.add("a", seq, chunk)
    assert replay.num_steps == 10 and replay.ready(10)
    np.testing.assert_array_equal(replay.sample(1, 10)["x"][0, :, 0], np.arange(10))


def test_duplicates_are_dropped_by_stream_and_seq():
    replay = Replay(capacity=10_000)
    assert replay.add("a", 0, make_chunk(0, 0))
    assert not replay.add("a", 0, make_chunk(0, 0))
    assert replay.add("b", 0, make_chunk(1, 0))
    assert replay.num_steps == 8 and replay.stats()["duplicates"] == 1


def read_only_views(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    views = {k: v.view() for k, v in chunk.items()}
    for v in views.values():
        v.flags.writeable = False
    return views


def test_read_only_arrays_given_away_are_kept_and_all_others_copied():
    """copy=False (the gateway in the replay's process): the replay keeps the read-only views
    it is given, as its memory; by default, and for writeable arrays always, it copies."""
    replay = Replay(capacity=10_000)
    given, default, writeable = make_chunk(0, 0), make_chunk(1, 0), make_chunk(2, 0)
    assert replay.add_batch([("given", 0, read_only_views(given))], copy=False) == [True]
    assert replay.add_batch([("default", 0, read_only_views(default))]) == [True]
    assert replay.add_batch([("writeable", 0, {k: v[:] for k, v in writeable.items()})],
                            copy=False) == [True]  # fmt: skip
    for chunk in (given, default, writeable):
        chunk["image"][:] = 255  # what the replay kept shows it, a copy does not
    images: dict[int, int] = {}  # stream -> brightest pixel sampled
    batch = replay.sample(64, 4)
    for steps, image in zip(batch["step"], batch["image"], strict=True):
        images[decode(int(steps[0]))[0]] = int(image.max())
    assert images == {0: 255, 1: 0, 2: 0}


def test_fifo_eviction_of_whole_oldest_chunks():
    replay = Replay(capacity=10)
    for seq in range(4):
        replay.add("a", seq, make_chunk(0, seq))
    assert replay.num_steps == 8  # 4 chunks of 4 would be 16 > 10: the two oldest went
    assert ("a", 0) not in replay and ("a", 1) not in replay and ("a", 3) in replay
    assert {decode(int(v))[1] for v in replay.sample(200, 1)["step"][:, 0]} == {2, 3}
    assert replay.stats()["evicted"] == 2


def test_mismatched_chunk_spec_is_refused_with_a_clear_error():
    replay = Replay(capacity=100)
    replay.add("a", 0, make_chunk(0, 0))
    bad = make_chunk(0, 1)
    bad["image"] = bad["image"].astype(np.float32)
    with pytest.raises(ValueError, match="share observation and action spaces"):
        replay.add("a", 1, bad)
    with pytest.raises(ValueError, match="leading time axis"):
        replay.add("a", 1, {"step": np.zeros(3), "image": np.zeros((2, 4, 4, 3), np.uint8)})


def test_persisted_chunks_are_reloaded_and_evicted_files_deleted(tmp_path):
    replay = Replay(capacity=12, directory=tmp_path)
    for seq in range(5):
        replay.add("a", seq, make_chunk(0, seq))
    replay.add("b", 0, make_chunk(1, 0))
    assert len(list(tmp_path.glob("*.chunk"))) == 3  # 12 steps of capacity: 3 chunks on disk
    held = sorted(replay._chunks)
    again = Replay(capacity=12, directory=tmp_path)
    assert sorted(again._chunks) == held and again.num_steps == 12
    for key in held:
        for k in again._chunks[key]:
            np.testing.assert_array_equal(again._chunks[key][k], replay._chunks[key][k])
    assert not again.add("a", 4, make_chunk(0, 4))  # duplicates are still recognised after reload
    assert again.add("a", 5, make_chunk(0, 5))
    assert_contiguous(again.sample(16, 8), 4)


def test_torn_and_corrupt_files_are_ignored_on_reload(tmp_path):
    replay = Replay(capacity=100, directory=tmp_path)
    for seq in range(3):
        replay.add("a", seq, make_chunk(0, seq))
    files = sorted(tmp_path.glob("*.chunk"))
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[: len(data) // 2])  # torn tail
    flipped = bytearray(files[0].read_bytes())
    flipped[100] ^= 0xFF
    files[0].write_bytes(bytes(flipped))  # bit rot
    (tmp_path / ".000000000099.chunk.tmp").write_bytes(b"partial")  # a write that never renamed
    (tmp_path / "000000000100.chunk").write_bytes(b"")  # empty file
    again = Replay(capacity=100, directory=tmp_path)
    assert sorted(again._chunks) == [("a", 1)]
    assert again.stats()["corrupt"] == 3
    assert not list(tmp_path.glob(".*.tmp"))
    assert again.add("a", 2, make_chunk(0, 2))  # the torn chunk can be resent
    assert Replay(capacity=100, directory=tmp_path).num_steps == 8
    assert len(list(tmp_path.glob("*.corrupt"))) == 3  # set aside, not deleted


def snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_replay_opened_read_only_leaves_a_live_replays_directory_as_it_is(tmp_path):
    """A report or a probe reads a learner's replay while it trains: it must not delete the
    learner's write in flight, set files aside, or delete files it would evict at its own
    capacity (the learner still holds their chunks, and its restart reloads them from there)."""
    replay = Replay(capacity=100, directory=tmp_path)
    for seq in range(4):
        replay.add("a", seq, make_chunk(0, seq))
    (tmp_path / ".000000000099.chunk.4242.tmp").write_bytes(b"partial")  # a write in flight
    (tmp_path / "000000000100.chunk").write_bytes(b"")  # renamed, not yet written through
    (tmp_path / "streams.json").write_text("{not json")
    before = snapshot(tmp_path)
    reader = Replay(capacity=8, directory=tmp_path, read_only=True)
    assert reader.num_steps == 8  # what its capacity holds, evicted in memory only
    assert_contiguous(reader.sample(4, 8), 4)
    assert snapshot(tmp_path) == before
    with pytest.raises(RuntimeError, match="read-only"):
        reader.add("a", 4, make_chunk(0, 4))
    assert snapshot(tmp_path) == before
    with pytest.raises(FileNotFoundError, match="no replay directory"):
        Replay(capacity=8, directory=tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_a_batch_is_one_commit_and_its_file_goes_when_all_its_chunks_are_evicted(tmp_path):
    replay = Replay(capacity=24, directory=tmp_path)
    results = replay.add_batch(
        [("a", 0, make_chunk(0, 0)), ("a", 1, make_chunk(0, 1)), ("a", 1, make_chunk(0, 1))]
        + [("a", 2, {"step": np.zeros(4)})]  # wrong keys: refused, the rest still stored
    )
    assert results[:3] == [True, True, False] and "differ" in results[3]
    assert len(list(tmp_path.glob("*.chunk"))) == 1
    replay.add_batch([("a", s, make_chunk(0, s)) for s in range(2, 6)])
    assert len(list(tmp_path.glob("*.chunk"))) == 2  # 16 steps: nothing evicted yet
    replay.add("a", 6, make_chunk(0, 6))  # 28 > 24: chunk 0 goes, its file still holds 1
    assert len(list(tmp_path.glob("*.chunk"))) == 3
    assert (tmp_path / "000000000000.chunk").exists()
    replay.add("a", 7, make_chunk(0, 7))  # chunk 1 goes too: the first file is deleted
    assert not (tmp_path / "000000000000.chunk").exists()
    assert len(list(tmp_path.glob("*.chunk"))) == 3
    assert sorted(Replay(capacity=24, directory=tmp_path).keys()) == sorted(replay.keys())


def test_a_torn_record_inside_a_batch_file_keeps_the_records_before_it(tmp_path):
    replay = Replay(capacity=100, directory=tmp_path)
    replay.add_batch([("a", s, make_chunk(0, s)) for s in range(3)])
    (path,) = tmp_path.glob("*.chunk")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])  # the last record is cut short
    again = Replay(capacity=100, directory=tmp_path)
    assert sorted(again.keys()) == [("a", 0), ("a", 1)] and again.stats()["corrupt"] == 1


def test_recency_favours_recent_chunks():
    uniform, recent = Replay(capacity=10_000, seed=0), Replay(capacity=10_000, recency=1.0, seed=0)
    for seq in range(50):
        for replay in (uniform, recent):
            replay.add("a", seq, make_chunk(0, seq))
    seqs_u = np.array([decode(int(v))[1] for v in uniform.sample(4000, 4)["step"][:, 0]])
    seqs_r = np.array([decode(int(v))[1] for v in recent.sample(4000, 4)["step"][:, 0]])
    assert seqs_r.mean() > seqs_u.mean() + 10
    assert (seqs_r >= 45).mean() > 0.3  # 5 newest chunks: ~half the mass (10% if uniform)
    assert_contiguous(recent.sample(64, 9), 4)


def test_samples_per_insert_throttles_the_sampler_never_the_inserter():
    from daydream.replay.service import ReplayService

    service = ReplayService(capacity=10_000, samples_per_insert=2.0, spi_tolerance=0, min_size=8)
    assert service.add("a", 0, make_chunk(0, 0))
    assert service.sample(1, 4) is None  # below min_size
    assert service.add("a", 1, make_chunk(0, 1))  # 8 steps inserted: may replay 16
    assert service.sample(2, 4) is not None and service.sample(2, 4) is not None
    assert service.sample(1, 4) is None  # 16 sampled: the learner is ahead
    for seq in range(2, 200):  # inserting is never refused or delayed
        assert service.add("a", seq, make_chunk(0, seq))
    assert service.sample(2, 4) is not None
    assert service.stats()["throttled"] == 2


def test_throttled_sample_waits_for_an_insert_from_another_thread():
    import threading

    from daydream.replay.service import ReplayService

    service = ReplayService(capacity=10_000, samples_per_insert=1.0, spi_tolerance=0, min_size=4)
    service.add("a", 0, make_chunk(0, 0))
    assert service.sample(1, 4) is not None  # 4 of 4 allowed steps used
    timer = threading.Timer(0.2, service.add, args=("a", 1, make_chunk(0, 1)))
    timer.start()
    batch = service.sample(1, 4, timeout=5.0)
    timer.join()
    assert batch is not None and batch["step"].shape == (1, 4)


def test_replay_actor_adds_batches_and_samples_through_ray(ray_session, tmp_path):
    from daydream.replay.remote import ReplayActor

    ray = ray_session
    replay = ReplayActor.remote(capacity=1000, directory=str(tmp_path), min_size=1)
    items = [("a", seq, make_chunk(0, seq)) for seq in range(4)] + [("a", 0, make_chunk(0, 0))]
    bad = make_chunk(0, 9)
    bad["image"] = bad["image"][:, :2]
    results = ray.get(replay.add_batch.remote(items + [("a", 9, bad)]))
    assert results[:5] == [True, True, True, True, False] and isinstance(results[5], str)
    assert ray.get(replay.ready.remote(16))
    assert_contiguous(ray.get(replay.sample.remote(8, 16)), 4)
    stats = ray.get(replay.stats.remote())
    assert stats["steps"] == 16 and stats["duplicates"] == 1 and stats["rejected"] == 1
    ray.kill(replay)


def test_a_local_ray_start_ignores_another_cluster_on_the_machine(tmp_path):
    """A stale or foreign cluster address (RAY_ADDRESS, or a killed learner's
    /tmp/ray/ray_current_cluster) must not turn 'start a local instance' into 'join it'."""
    import os
    import subprocess
    import sys

    script = (
        "from daydream.replay.remote import start_ray, stop_ray\n"
        "start_ray(num_cpus=1, object_store_mb=80)\n"
        "import ray; print('cpus', ray.cluster_resources().get('CPU'))\n"
        "stop_ray()\n"
    )
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cpus 1.0" in done.stdout


def test_starting_the_ratio_forgives_the_prefill_and_no_more():
    from daydream.replay.service import ReplayService

    service = ReplayService(10**6, min_size=100, samples_per_insert=8, spi_tolerance=0)
    for seq in range(45):  # 180 steps: robots overshot the 100-step prefill by 80
        service.add_batch([("a", seq, make_chunk(0, seq))])
    service.start_ratio()
    stats = service.stats()
    assert stats["inserted_steps"] == 180 and stats["sampled_steps"] == 8 * 100
    assert service.sample(4, 16, timeout=0.0) is not None  # the 80 extra steps are owed


def test_chunk_files_keep_zlibs_crc32_so_files_read_the_same_everywhere(tmp_path):
    """The checksums are computed with zlib-ng (faster); the values must stay zlib's CRC32,
    which files written before, and any other reader, use."""
    replay = Replay(capacity=100, directory=tmp_path)
    replay.add_batch([("a", s, make_chunk(0, s, length=300)) for s in range(2)])
    (path,) = tmp_path.glob("*.chunk")
    data = path.read_bytes()
    magic, count, digest, own = struct.unpack_from("<8sIII", data)
    assert own == zlib.crc32(data[:16]) and count == 2
    crcs, start = [], 20
    for _ in range(count):  # each record: magic, header length, header, arrays, CRC32
        (head_len,) = struct.unpack_from("<I", data, start + 8)
        nbytes = sum(a[3] for a in json.loads(data[start + 12 : start + 12 + head_len])["arrays"])
        end = start + 12 + head_len + nbytes
        assert struct.unpack_from("<I", data, end)[0] == zlib.crc32(data[start:end])
        crcs.append(data[end : end + 4])
        start = end + 4
    assert start == len(data) and digest == zlib.crc32(b"".join(crcs))
