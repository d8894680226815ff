"""Replay: steps stored in chunks per actor stream, sampled as fixed-length sequences.

The picture (one stream, chunks numbered by the actor's sequence number)::

    stream "ur5-0":  [seq 4: T=32][seq 5: T=32][seq 6: T=7]   [seq 9: T=32] ...
                     \\______________ segment ______________/   \\_ segment _/
                                                         gap ^ (seq 7, 8 missing)

A *segment* is a maximal run of chunks with consecutive sequence numbers. A sampled
sequence of length L lies inside one segment: it may span chunk boundaries and episode
boundaries (``is_first`` inside it marks a reset, and the world model masks its state
there; short episodes are never dropped), but never a gap in sequence numbers.

- Sampling is uniform over all valid start steps (``recency > 0`` weights a start by
  ``1 / (age_rank + 1) ** recency`` where age_rank 0 is the newest chunk).
- Capacity is counted in steps; the oldest chunks (in insertion order) are evicted whole.
- ``(stream, seq)`` identifies a chunk; adding one that is held is a no-op returning False.
- With a ``directory`` every call to ``add`` / ``add_batch`` writes one file holding its
  chunks (temp name, fsync, rename, fsync of the directory: one group commit per batch;
  written past the page cache where the file system allows, ``core/files.py``) before it
  returns, and the directory is reloaded on start. A file is deleted once all its
  chunks are evicted. ``ReplayService`` writes the files outside its lock (``reserve``,
  ``write``, ``commit``): sampling goes on meanwhile, several batches are written at once, and
  they enter memory in the order they were reserved; a chunk is sampled only once on disk.
  Records are our own raw format, each with a CRC32 trailer, never pickle (zlib's CRC32,
  computed with zlib-ng); a torn or corrupt record ends the reading of its file (the records
  before it count).
- A file starts with a header that carries its record count and a CRC32 of its records'
  checksums, so a file cut exactly at a record boundary (or missing records) is reported on
  reload, with the records found and expected; the records it still holds are kept. Files
  written before the header existed load as before (reported once per reload: nothing can
  tell whether they are complete). Every warning of the last reload is in ``warnings``.
- ``read_only=True`` opens another process's replay directory to read it while that process
  may be writing (a report, a probe): the directory is left exactly as it is (no temp file
  of a write in flight deleted, no file set aside or deleted, eviction in memory only), and
  nothing can be added.

File layout (all integers little-endian)::

    file    := header record*
    header  := "DDFILE02" | u32 record count | u32 CRC32 of the records' CRCs | u32 CRC32 of
               the 16 bytes before it
    record  := "DDCHUNK1" | u32 H | H bytes of JSON (stream, seq, index, arrays: name,
               dtype, shape, nbytes) | array bytes | u32 CRC32 of the record before it

What ``add_batch`` refuses, each with its reason (the text before the first colon of the
item's result, which the gateway counts and sends back in its ``nack``):

    stream_owned  the chunk comes from a robot key other than the one that owns its stream
                  (``owners.py``: the bindings, ``streams.json`` in the directory)
    bad_seq       a negative sequence number, or one beyond 2**63 - 1
    seq_ahead     a sequence number more than ``MAX_SEQ_AHEAD`` beyond the newest one its
                  stream has stored (see there)
    bad_chunk     arrays without one shared time axis, or keys, dtypes or shapes that differ
                  from the chunks stored before

This module is a plain class (no Ray, no torch): ``remote.py`` wraps it for Ray.
"""

from __future__ import annotations

import bisect
import json
import logging
import struct
from collections import deque
from pathlib import Path

import numpy as np
from zlib_ng.zlib_ng import crc32  # zlib's CRC32 (same values), 5-10x faster

from daydream.core.chunks import chunk_length
from daydream.core.files import TMP_PREFIX, TMP_SUFFIX, atomic_write
from daydream.replay.owners import StreamOwners

log = logging.getLogger(__name__)

Key = tuple[str, int]

_MAGIC = b"DDCHUNK1"  # each record
_FILE_MAGIC = b"DDFILE02"  # the file header (files without one were written before it)
_FILE_HEADER = struct.Struct("<8sIII")  # magic, record count, CRC of record CRCs, own CRC
_SUFFIX = ".chunk"

MAX_SEQ = 2**63 - 1  # sequence numbers are 0 .. 2**63 - 1 (a signed 64-bit integer in any language)
# How far a chunk's sequence number may lie beyond the newest its stream has stored. The
# robot's outbox (wire/outbox.py) numbers chunks consecutively and, so that a restart never
# reuses a number, reserves SEQ_BLOCK = 1000 numbers ahead on disk: a restarted actor goes
# on at most SEQ_BLOCK + 1 past its last number. 1000 blocks allow 1000 restarts without one
# chunk getting through, or 10**6 chunks the outbox dropped beyond its disk bound in an
# outage (3.7 days of a 50 Hz robot at 16 steps per chunk); anything further ahead is a bug
# or garbage (2**62, 2**64 - 1) that would open a gap no resend ever fills.
MAX_SEQ_AHEAD = 1000 * 1000
REFUSALS = ("stream_owned", "bad_seq", "seq_ahead", "bad_chunk")


# ---------------------------------------------------------------- chunk files


def _encode_chunk_file(stream: str, seq: int, index: int, chunk: dict[str, np.ndarray]) -> list:
    arrays = [(k, np.ascontiguousarray(v)) for k, v in chunk.items()]
    header = {
        "stream": stream,
        "seq": int(seq),
        "index": int(index),
        "arrays": [[k, v.dtype.str, list(v.shape), int(v.nbytes)] for k, v in arrays],
    }
    head = json.dumps(header).encode()
    parts = [_MAGIC, struct.pack("<I", len(head)), head] + [
        memoryview(v).cast("B") for _, v in arrays
    ]
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    parts.append(struct.pack("<I", crc))
    return parts


def _file_header(records: list[list]) -> bytes:
    """The header of a file holding ``records`` (each as ``_encode_chunk_file`` returns it)."""
    digest = crc32(b"".join(parts[-1] for parts in records))
    head = struct.pack("<8sII", _FILE_MAGIC, len(records), digest)
    return head + struct.pack("<I", crc32(head))


def _read_file_header(data: bytes) -> tuple[int, int]:
    """(record count, CRC of the record CRCs) from the header of a file that starts with
    ``_FILE_MAGIC``; raises ValueError for a torn or corrupt header."""
    if len(data) < _FILE_HEADER.size:
        raise ValueError("file header cut short")
    _, count, digest, crc = _FILE_HEADER.unpack_from(data)
    if crc32(data[: _FILE_HEADER.size - 4]) != crc:
        raise ValueError("file header checksum mismatch")
    return count, digest


def _decode_chunk_record(data: bytes, start: int) -> tuple[str, int, int, dict, int]:
    """Parse the record at ``start``; returns (stream, seq, index, chunk, end offset).

    Raises ValueError on anything torn, corrupt or unexpected."""
    pos = start + len(_MAGIC)
    if len(data) < pos + 8 or data[start:pos] != _MAGIC:
        raise ValueError("bad magic or too short")
    (head_len,) = struct.unpack_from("<I", data, pos)
    pos += 4
    header = json.loads(data[pos : pos + head_len])
    pos += head_len
    arrays = []
    for name, dtype_str, shape, nbytes in header["arrays"]:
        dtype = np.dtype(dtype_str)
        if dtype.hasobject or int(np.prod(shape)) * dtype.itemsize != nbytes:
            raise ValueError(f"bad array header {name!r}")
        arrays.append((name, dtype, shape, pos))
        pos += nbytes
    if pos + 4 > len(data):
        raise ValueError("record runs past the end of the file (torn)")
    (crc,) = struct.unpack_from("<I", data, pos)
    if crc32(memoryview(data)[start:pos]) != crc:
        raise ValueError("checksum mismatch (torn or corrupt record)")
    chunk = {
        name: np.frombuffer(data, dtype, int(np.prod(shape)), off).reshape(shape).copy()
        for name, dtype, shape, off in arrays
    }
    return str(header["stream"]), int(header["seq"]), int(header["index"]), chunk, pos + 4


# ---------------------------------------------------------------- segments


class _Segment:
    """Consecutive chunks of one stream: seqs first_seq .. first_seq + len - 1 (live from head)."""

    __slots__ = ("stream", "first_seq", "head", "lengths", "offsets", "end")

    def __init__(self, stream: str, first_seq: int):
        self.stream = stream
        self.first_seq = first_seq  # seq of lengths[0] (entries before head are evicted)
        self.head = 0
        self.lengths: list[int] = []
        self.offsets: list[int] = []  # absolute step offset of each chunk's first step
        self.end = 0  # absolute offset one past the last step

    def append(self, length: int) -> None:
        self.offsets.append(self.end)
        self.lengths.append(length)
        self.end += length

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.lengths) - 1

    @property
    def head_seq(self) -> int:
        return self.first_seq + self.head

    @property
    def num_chunks(self) -> int:
        return len(self.lengths) - self.head

    @property
    def num_steps(self) -> int:
        return self.end - self.offsets[self.head] if self.num_chunks else 0

    def pop_head(self) -> None:
        self.head += 1
        if self.head > 64 and self.head * 2 > len(self.lengths):  # compact now and then
            self.first_seq += self.head
            self.lengths = self.lengths[self.head :]
            self.offsets = self.offsets[self.head :]
            self.head = 0

    def locate(self, step: int) -> tuple[int, int]:
        """(seq, offset inside that chunk) of the step ``step`` counted from the segment start."""
        absolute = self.offsets[self.head] + step
        i = bisect.bisect_right(self.offsets, absolute, lo=self.head) - 1
        return self.first_seq + i, absolute - self.offsets[i]


class Batch:
    """Chunks ``Replay.reserve`` accepted and numbered (insertion indices ``first`` ..,
    ``first`` is also its file's id), on their way to disk: (key, arrays, steps) each."""

    __slots__ = ("first", "chunks")

    def __init__(self, first: int, chunks: list[tuple[Key, dict[str, np.ndarray], int]]):
        self.first = first
        self.chunks = chunks


class Replay:
    """Owns the stored experience: chunks per stream, their files on disk, sampling and eviction.

    Not thread-safe: ``ReplayService`` serialises the calls, except ``write``, which it makes
    outside its lock (a batch's file). See the module docstring.
    """

    def __init__(
        self,
        capacity: int,
        directory: str | Path | None = None,
        recency: float = 0.0,
        seed: int = 0,
        read_only: bool = False,
    ):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 step, got {capacity}")
        if recency < 0:
            raise ValueError(f"replay recency must be >= 0 (0 is uniform), got {recency}")
        self.capacity = int(capacity)
        self.recency = float(recency)
        self.directory = Path(directory) if directory is not None else None
        self.read_only = read_only
        if read_only and self.directory is not None and not self.directory.is_dir():
            raise FileNotFoundError(f"no replay directory {self.directory} to read")
        self._rng = np.random.default_rng(seed)
        self._chunks: dict[Key, dict[str, np.ndarray]] = {}
        self._index: dict[Key, int] = {}  # insertion index (global, increasing)
        self._file_of: dict[Key, int] = {}  # chunk -> id of the file holding it
        self._file_refs: dict[int, int] = {}  # file id -> chunks still held from it
        self._order: deque[Key] = deque()  # insertion order, oldest first
        self._segments: dict[str, list[_Segment]] = {}  # per stream, sorted by seq
        self._spec: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None
        self._next_index = 0  # one past the newest insertion index in memory
        self._next_reserved = 0  # the next index ``reserve`` gives out (files being written)
        self._reserved: deque[Batch] = deque()  # reserved, not yet committed, oldest first
        self._num_steps = 0
        self._newest_seq: dict[str, int] = {}  # per stream, the highest seq stored so far
        self.owners = StreamOwners(self.directory, read_only=read_only)
        self._counts = {
            "added": 0,
            "duplicates": 0,
            "evicted": 0,
            "reloaded": 0,
            "corrupt": 0,
            "incomplete": 0,
        }
        self.warnings: list[str] = []  # what the last reload found wrong, for the learner's log
        if self.directory is not None:
            if not read_only:
                self.directory.mkdir(parents=True, exist_ok=True)
            self._reload()

    # ------------------------------------------------------------ public API

    @property
    def num_steps(self) -> int:
        return self._num_steps

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    def __contains__(self, key: Key) -> bool:
        return key in self._chunks

    def keys(self) -> list[Key]:
        """(stream, seq) of every chunk held, oldest first."""
        return list(self._order)

    def add(self, stream: str, seq: int, chunk: dict[str, np.ndarray]) -> bool:
        """Store one chunk (arrays shaped (T, ...)); False if (stream, seq) is already held.

        With a directory, the chunk is on disk (fsynced) when this returns True.
        """
        result = self.add_batch([(stream, seq, chunk)], raise_errors=True)[0]
        return bool(result)

    def add_batch(
        self, items: list[tuple], raise_errors: bool = False, copy: bool = True
    ) -> list[bool | str | None]:
        """Add several chunks with one disk commit. Each item is ``(stream, seq, chunk)`` or
        ``(stream, seq, chunk, key)`` with the sender's robot key (None: not checked). Per
        item True (added), False (duplicate), or ``"<reason>: <detail>"`` for a chunk that
        was refused, the reason one of REFUSALS (raised as ValueError if raise_errors).

        ``copy=False``: the caller gives its read-only arrays away (views of a received
        message that nothing else holds or writes, one chunk per message), and the replay
        keeps them instead of a copy; writeable or strided arrays are copied all the same.
        Views of Ray's object store must be copied (the default): kept, they pin its memory.

        The three steps, for a caller that writes outside its lock (``ReplayService``):
        ``reserve`` (checks and numbers the chunks), ``write`` (their file, touching nothing
        shared), ``commit`` (into memory; in the order reserved) or ``abort`` if the write
        failed."""
        results, batch = self.reserve(items, raise_errors, copy)
        if batch is not None:
            try:
                self.write(batch)
            except BaseException:
                self.abort(batch)
                raise
            self.commit(batch)
        return results

    def reserve(
        self, items: list[tuple], raise_errors: bool = False, copy: bool = True
    ) -> tuple[list[bool | str | None], Batch | None]:
        """Check and number a batch (``add_batch``'s items and arguments): the per-item results
        and the accepted chunks as a :class:`Batch` to ``write`` and ``commit`` (None when
        nothing was accepted). A chunk that an earlier batch, reserved and not yet committed,
        holds gets None: neither stored nor refused (that batch's answer covers it; if its
        write fails, the robot sends it again)."""
        if self.read_only:
            raise RuntimeError(f"replay {self.directory} is opened read-only: nothing is added")
        results: list[bool | str | None] = []
        accepted: list[tuple[Key, dict[str, np.ndarray], int]] = []
        batch_keys: set[Key] = set()
        writing = {key for b in self._reserved for key, _, _ in b.chunks}
        newest = dict(self._newest_seq)
        for stream, seq in writing:  # the seq check counts chunks on their way to disk too
            newest[stream] = max(seq, newest.get(stream, seq))
        for stream, seq, chunk, *sender in items:
            key, owner = (str(stream), int(seq)), (sender[0] if sender else None)
            refusal = self.owners.check(key[0], owner) or _seq_refusal(key, newest.get(key[0]))
            if not refusal and (key in self._chunks or key in batch_keys):
                self._counts["duplicates"] += 1
                results.append(False)
                continue
            if not refusal and key in writing:
                results.append(None)
                continue
            if not refusal:
                try:
                    chunk = {k: _owned(v, copy) for k, v in chunk.items()}
                    length = chunk_length(chunk)
                    self._check_spec(chunk)
                except ValueError as e:
                    refusal = f"bad_chunk: {e}"
            if refusal:
                if raise_errors:
                    self.owners.discard()
                    raise ValueError(refusal)
                results.append(refusal)
                continue
            batch_keys.add(key)
            self.owners.claim(key[0], owner)
            newest[key[0]] = max(key[1], newest.get(key[0], key[1]))
            accepted.append((key, chunk, length))
            results.append(True)
        if not accepted:
            self.owners.discard()  # a stream is bound by its first stored chunk
            return results, None
        self.owners.commit()  # the binding is on disk before the chunks that made it
        self._next_reserved = max(self._next_reserved, self._next_index)
        batch = Batch(self._next_reserved, accepted)
        self._next_reserved += len(accepted)
        self._reserved.append(batch)
        return results, batch

    def write(self, batch: Batch) -> None:
        """Put a reserved batch's file on disk (nothing when the replay has no directory).
        Reads only the batch: safe beside any other call, other batches' ``write`` too."""
        if self.directory is None:
            return
        encoded = [
            _encode_chunk_file(stream, seq, batch.first + i, chunk)
            for i, ((stream, seq), chunk, _) in enumerate(batch.chunks)
        ]

        def write(f) -> None:
            for part in [_file_header(encoded)] + [part for parts in encoded for part in parts]:
                f.write(part)

        atomic_write(self.directory / f"{batch.first:012d}{_SUFFIX}", write, direct=True)

    def next_to_commit(self, batch: Batch) -> bool:
        """Whether every batch reserved before ``batch`` is committed or aborted."""
        return bool(self._reserved) and self._reserved[0] is batch

    def commit(self, batch: Batch) -> None:
        """Take a written batch into memory (sampled from now on) and evict what it displaces;
        batches commit in the order they were reserved (``next_to_commit``)."""
        if not self.next_to_commit(batch):
            raise RuntimeError("replay batches commit in the order they were reserved")
        self._reserved.popleft()
        file_id = batch.first if self.directory is not None else -1
        for i, (key, chunk, length) in enumerate(batch.chunks):
            self._insert(key, batch.first + i, chunk, length, file_id)
            self._counts["added"] += 1
        self._evict()

    def abort(self, batch: Batch) -> None:
        """Drop a reserved batch whose write failed: its chunks are not held (resends are
        taken), its number is not used again. Nothing for a batch no longer reserved."""
        if batch in self._reserved:
            self._reserved.remove(batch)

    def rebind(self, stream: str, key: str) -> str | None:
        """Give ``stream`` to the robot key ``key`` on purpose (a replaced robot computer);
        returns the key that owned it (None: nobody). Written to disk before it returns."""
        return self.owners.rebind(str(stream), key)

    def ready(self, length: int) -> bool:
        """True when at least one sequence of ``length`` steps can be sampled."""
        return any(s.num_steps >= length for segs in self._segments.values() for s in segs)

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """``batch_size`` sequences of ``length`` consecutive steps, as (B, L, ...) arrays."""
        if not self.ready(length):
            raise ValueError(
                f"replay cannot sample sequences of {length} steps yet (holds {self._num_steps} "
                f"steps, no gap-free run that long); check ready() or wait for more data"
            )
        assert self._spec is not None
        out = {
            k: np.empty((batch_size, length) + shape, dtype)
            for k, (dtype, shape) in self._spec.items()
        }
        for b, (seg, start) in enumerate(self._sample_starts(batch_size, length)):
            seq, offset = seg.locate(start)
            filled = 0
            while filled < length:
                chunk = self._chunks[(seg.stream, seq)]
                take = min(length - filled, chunk_length(chunk) - offset)
                for k, arr in chunk.items():
                    out[k][b, filled : filled + take] = arr[offset : offset + take]
                filled += take
                seq, offset = seq + 1, 0
        return out

    def stats(self) -> dict:
        return {
            "steps": self._num_steps,
            "chunks": len(self._chunks),
            "streams": len(self._segments),
            "segments": sum(len(s) for s in self._segments.values()),
            "capacity": self.capacity,
            "bound_streams": len(self.owners),
            **self._counts,
        }

    # ------------------------------------------------------------ sampling

    def _sample_starts(self, batch_size: int, length: int) -> list[tuple[_Segment, int]]:
        segs = [s for ss in self._segments.values() for s in ss if s.num_steps >= length]
        if self.recency <= 0:
            counts = np.array([s.num_steps - length + 1 for s in segs], np.float64)
            picks = self._rng.choice(len(segs), size=batch_size, p=counts / counts.sum())
            starts = self._rng.random(batch_size) * counts[picks]
            return [(segs[i], int(st)) for i, st in zip(picks, starts, strict=True)]
        # Recency: weight every valid start by the age rank of the chunk it lies in.
        seg_ids, chunk_starts, chunk_counts, ages = [], [], [], []
        newest = self._next_index - 1
        for si, seg in enumerate(segs):
            valid = seg.num_steps - length + 1  # starts 0 .. valid-1 (relative to the segment)
            base = seg.offsets[seg.head]
            for i in range(seg.head, len(seg.lengths)):
                lo = seg.offsets[i] - base
                if lo >= valid:
                    break
                seg_ids.append(si)
                chunk_starts.append(lo)
                chunk_counts.append(min(seg.lengths[i], valid - lo))
                ages.append(newest - self._index[(seg.stream, seg.first_seq + i)])
        counts = np.asarray(chunk_counts, np.float64)
        weights = counts / (np.asarray(ages, np.float64) + 1.0) ** self.recency
        picks = self._rng.choice(len(counts), size=batch_size, p=weights / weights.sum())
        within = (self._rng.random(batch_size) * counts[picks]).astype(np.int64)
        return [
            (segs[seg_ids[p]], chunk_starts[p] + int(w)) for p, w in zip(picks, within, strict=True)
        ]

    # ------------------------------------------------------------ storage

    def _check_spec(self, chunk: dict[str, np.ndarray]) -> None:
        spec = {k: (v.dtype, v.shape[1:]) for k, v in chunk.items()}
        for k, (dtype, _) in spec.items():
            if dtype.hasobject:
                raise ValueError(
                    f"chunk array {k!r} has object dtype; only numeric arrays are stored"
                )
        if self._spec is None:
            self._spec = spec
        elif spec != self._spec:
            raise ValueError(
                f"chunk keys/dtypes/shapes {_fmt(spec)} differ from the replay's "
                f"{_fmt(self._spec)}; all actors of one replay must share observation and "
                "action spaces"
            )

    def _insert(
        self, key: Key, index: int, chunk: dict[str, np.ndarray], length: int, file_id: int
    ) -> None:
        stream, seq = key
        self._chunks[key] = chunk
        self._index[key] = index
        if file_id >= 0:
            self._file_of[key] = file_id
            self._file_refs[file_id] = self._file_refs.get(file_id, 0) + 1
        self._order.append(key)
        self._newest_seq[stream] = max(seq, self._newest_seq.get(stream, seq))
        self._next_index = max(self._next_index, index + 1)
        self._num_steps += length
        segs = self._segments.setdefault(stream, [])
        if segs and segs[-1].last_seq == seq - 1:
            segs[-1].append(length)  # the common case: the next chunk of the newest segment
        elif not segs or segs[-1].last_seq < seq - 1:
            seg = _Segment(stream, seq)
            seg.append(length)
            segs.append(seg)
        else:
            self._rebuild_segments(stream)  # out of order (a resend after an outage)

    def _rebuild_segments(self, stream: str) -> None:
        seqs = sorted(seq for (s, seq) in self._chunks if s == stream)
        segs: list[_Segment] = []
        for seq in seqs:
            if not segs or segs[-1].last_seq != seq - 1:
                segs.append(_Segment(stream, seq))
            segs[-1].append(chunk_length(self._chunks[(stream, seq)]))
        if segs:
            self._segments[stream] = segs
        else:
            self._segments.pop(stream, None)

    def _evict(self) -> None:
        while self._num_steps > self.capacity and len(self._order) > 1:
            key = self._order.popleft()
            stream, seq = key
            chunk = self._chunks.pop(key)
            self._index.pop(key)
            self._num_steps -= chunk_length(chunk)
            self._counts["evicted"] += 1
            segs = self._segments[stream]
            if segs[0].head_seq == seq:
                segs[0].pop_head()
                if segs[0].num_chunks == 0:
                    segs.pop(0)
                    if not segs:
                        del self._segments[stream]
            else:
                self._rebuild_segments(stream)
            file_id = self._file_of.pop(key, -1)
            if file_id >= 0:
                self._file_refs[file_id] -= 1
                if self._file_refs[file_id] == 0:
                    del self._file_refs[file_id]
                    assert self.directory is not None
                    if not self.read_only:
                        (self.directory / f"{file_id:012d}{_SUFFIX}").unlink(missing_ok=True)

    def _warn(self, message: str) -> None:
        log.warning("replay: %s", message)
        self.warnings.append(message)

    def _reload(self) -> None:
        assert self.directory is not None
        self.warnings = []
        for message in self.owners.warnings:
            self._warn(message)
        if not self.read_only:  # read-only, these may be a live writer's files in flight
            for tmp in self.directory.glob(f"{TMP_PREFIX}*{_SUFFIX}*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)  # a write that never reached its rename
        headerless = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                file_id = int(path.stem)
                data = path.read_bytes()
            except (ValueError, OSError) as e:
                self._warn(f"skipping {path} ({e})")
                continue
            if not self._reload_file(path, file_id, data):
                headerless.append(path.name)
            self._next_index = max(self._next_index, file_id + 1)
        if headerless:
            self._warn(
                f"{len(headerless)} chunk files in {self.directory} have no header with their "
                f"record count (written before it existed: {', '.join(headerless[:3])}"
                f"{', ...' if len(headerless) > 3 else ''}); cannot tell if they are complete"
            )
        self._evict()
        if self._chunks:
            log.info(
                "replay: reloaded %d chunks (%d steps) from %s",
                len(self._chunks), self._num_steps, self.directory,
            )  # fmt: skip

    def _reload_file(self, path: Path, file_id: int, data: bytes) -> bool:
        """Load the records of one file; False if it was written before files had a header.
        Warns about a short, torn or corrupt file; sets aside one that yields nothing."""
        promised, pos, broken = None, 0, not data
        if broken:
            self._counts["corrupt"] += 1
            self._warn(f"{path} is empty; ignored")
        elif data.startswith(_FILE_MAGIC):
            pos = _FILE_HEADER.size
            try:
                promised = _read_file_header(data)
            except ValueError as e:  # the records carry their own checksums: read them
                self._counts["corrupt"] += 1
                self._warn(f"{path}: {e}; its records are read, their number is unknown")
        of = f" of {promised[0]}" if promised is not None else ""
        found, loaded, crcs = 0, 0, []
        while pos < len(data):
            try:
                stream, seq, index, chunk, pos = _decode_chunk_record(data, pos)
                length = chunk_length(chunk)
                self._check_spec(chunk)
            except (ValueError, KeyError, TypeError, struct.error) as e:
                self._counts["corrupt"] += 1
                self._warn(
                    f"{path} is torn or corrupt after {found}{of} records ({e}); the rest of "
                    "the file is ignored"
                )
                broken = True
                break
            found += 1
            crcs.append(data[pos - 4 : pos])
            if (stream, seq) in self._chunks:
                continue
            self._insert((stream, seq), index, chunk, length, file_id)
            self._counts["reloaded"] += 1
            loaded += 1
        if promised is not None and not broken:
            self._check_complete(path, promised, found, crcs)
        if not loaded and not self.read_only:
            if broken or not found:
                path.rename(path.with_name(path.name + ".corrupt"))  # for a person to look at
            else:
                path.unlink()  # only duplicates of chunks held elsewhere
        return not data or data.startswith(_FILE_MAGIC)

    def _check_complete(
        self, path: Path, promised: tuple[int, int], found: int, crcs: list[bytes]
    ) -> None:
        count, digest = promised
        if found != count:
            self._counts["incomplete"] += 1
            self._warn(
                f"{path} holds {found} records, its header expected {count} (cut at a record "
                f"boundary or records missing); the {found} found are kept"
            )
        elif crc32(b"".join(crcs)) != digest:
            self._counts["incomplete"] += 1
            self._warn(
                f"{path} holds {found} records as expected but not the ones its header names "
                "(replaced or reordered); they are kept"
            )


def _seq_refusal(key: Key, newest: int | None) -> str:
    """'' if the sequence number of ``key`` is plausible after ``newest`` (the highest its
    stream has stored; None: a new stream), else the refusal (bad_seq, seq_ahead)."""
    stream, seq = key
    if seq < 0:
        return f"bad_seq: seq {seq} of stream {stream!r} is negative (they count from 0)"
    if seq > MAX_SEQ:
        return f"bad_seq: seq {seq} of stream {stream!r} is beyond 2**63 - 1"
    if newest is not None and seq - newest > MAX_SEQ_AHEAD:
        return (
            f"seq_ahead: seq {seq} of stream {stream!r} is {seq - newest} past its newest "
            f"stored chunk {newest} (at most {MAX_SEQ_AHEAD}: chunks are numbered "
            f"consecutively, see docs/PROTOCOL.md)"
        )
    return ""


def _owned(value, copy: bool = True) -> np.ndarray:
    """An array the replay may keep: views of network or object-store buffers are copied,
    unless ``copy`` is False and the view is read-only and contiguous (``add_batch``)."""
    arr = np.asarray(value)
    if not arr.flags.c_contiguous:
        return np.array(arr, copy=True, order="C")
    if not copy and not arr.flags.writeable:
        return arr  # given away: nobody can write to it through this array, nor may anyone else
    if not arr.flags.writeable or arr.base is not None:
        arr = np.array(arr, copy=True, order="C")
    return arr


def _fmt(spec: dict) -> str:
    return "{" + ", ".join(f"{k}: {d.str}{tuple(s)}" for k, (d, s) in sorted(spec.items())) + "}"
