"""The robot's outbox: every chunk stays here until the gateway acknowledges it.

    produce ──put──▶ [memory: up to max_memory chunks] ──pump──▶ TransportClient ──▶ gateway
                          │ full (link down)      ▲ room again                       │
                          ▼                       │                                  │
                     [disk: spill files, up to max_disk_bytes]        ack ◀──────────┘

- A chunk is sent once, and again every ``resend_after`` seconds until acknowledged (the
  gateway may have died before the replay held it; the replay drops duplicates).
- Memory is bounded; while the link is down new chunks spill to disk in order, and come
  back into memory as acknowledgements make room. Beyond ``max_disk_bytes`` the oldest
  spilled chunks are dropped with a warning (the only way data is ever lost here).
- ``allocate_seq`` hands out sequence numbers that stay unique across restarts of the
  actor (a reservation is written to the directory every ``SEQ_BLOCK`` numbers), because
  the replay treats a repeated (actor id, seq) as a duplicate. A restarted actor goes on
  at most SEQ_BLOCK + 1 past its last number; the replay refuses numbers implausibly far
  ahead (``replay.store.MAX_SEQ_AHEAD``, 1000 blocks).
- A ``nack`` is final: the chunks it names are dropped (memory and disk), never sent again,
  counted by reason (``stats()["nack_reasons"]``) and said in a warning that tells what to
  do about that reason (the first of each reason, then every ``NACK_WARN_EVERY``-th).

Plain class, single-threaded (call it from the thread that owns the TransportClient).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from daydream.core.files import atomic_write

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000
_SUFFIX = ".msg"
NACK_WARN_EVERY = 100  # nacked chunks between two warnings of one reason
# What a person can do about each reason the gateway refuses a chunk for (docs/PROTOCOL.md).
NACK_ADVICE = {
    "bad_chunk": "check that the robot's spaces match the learner's config",
    "non_finite": "the robot's data holds NaN or infinity: check its sensors and driver",
    "not_boolean": "an episode flag or intervention is not 0/1: check the driver",
    "out_of_bounds": "an executed action lies outside the action space: check the limits",
    "bad_one_hot": "a discrete action is not one-hot: check the driver",
    "stream_owned": "another robot's key owns this stream: give this robot its own --id",
    "bad_seq": "a sequence number is negative or too large: check the outbox directory",
    "seq_ahead": "a sequence number jumped far ahead: check the outbox directory",
}


class Outbox:
    """Owns unacknowledged chunks (encoded messages) of one actor, in memory and spilled."""

    def __init__(
        self,
        directory: str | Path | None = None,
        max_memory: int = 256,
        max_disk_bytes: int = 4 << 30,
        resend_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_memory < 1:
            raise ValueError(f"outbox max_memory must be >= 1 chunk, got {max_memory}")
        self.directory = Path(directory) if directory is not None else None
        self.max_memory = int(max_memory)
        self.max_disk_bytes = int(max_disk_bytes)
        self.resend_after = float(resend_after)
        self._clock = clock
        self._memory: dict[int, list] = {}  # seq -> [data, last_sent or None], in put order
        self._spilled: dict[int, int] = {}  # seq -> bytes on disk, oldest first
        self._disk_bytes = 0
        self._next_seq = 0
        self._reserved = 0
        self.counts = {"sent": 0, "resent": 0, "acked": 0, "spilled": 0, "dropped": 0, "nacked": 0}
        self.nack_reasons: Counter = Counter()  # nacked chunks by the gateway's reason
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._reload()

    # ------------------------------------------------------------ producer side

    def allocate_seq(self) -> int:
        """The next sequence number for this actor (unique across restarts with a directory)."""
        seq = self._next_seq
        self._next_seq += 1
        if self.directory is not None and self._next_seq > self._reserved:
            self._reserved = self._next_seq + SEQ_BLOCK
            atomic_write(self.directory / "next_seq", str(self._reserved).encode())
        return seq

    def put(self, seq: int, data: bytes) -> None:
        """Keep an encoded chunk message until ``ack`` removes it."""
        if len(self._memory) < self.max_memory and not self._spilled:
            self._memory[seq] = [data, None]
        elif self.directory is None:
            self._drop_oldest_memory()
            self._memory[seq] = [data, None]
        else:
            self._spill(seq, data)

    # ------------------------------------------------------------ link side

    def due(self) -> list[tuple[int, bytes]]:
        """Chunks to send now: never sent, or sent ``resend_after`` seconds ago without ack."""
        now = self._clock()
        return [
            (seq, entry[0])
            for seq, entry in self._memory.items()
            if entry[1] is None or now - entry[1] >= self.resend_after
        ]

    def mark_sent(self, seq: int) -> None:
        entry = self._memory.get(seq)
        if entry is not None:
            self.counts["resent" if entry[1] is not None else "sent"] += 1
            entry[1] = self._clock()

    def pump(self, send: Callable[[bytes], bool]) -> int:
        """Send what is due with ``send`` (e.g. TransportClient.send) until it says no."""
        n = 0
        for seq, data in self.due():
            if not send(data):
                break
            self.mark_sent(seq)
            n += 1
        return n

    def ack(self, seqs: list[int]) -> None:
        """The gateway's replay holds these: forget them, and refill memory from disk."""
        for seq in seqs:
            if self._memory.pop(seq, None) is not None:
                self.counts["acked"] += 1
            elif seq in self._spilled:
                self._unspill(seq)
                self.counts["acked"] += 1
        self._refill()

    def nack(self, seqs: list[int], reason: str) -> None:
        """The gateway refused these for good (e.g. NaN in a reward, wrong observation space):
        drop them, count them by reason, say so."""
        dropped = []
        for seq in seqs:
            if self._memory.pop(seq, None) is not None:
                dropped.append(seq)
            elif seq in self._spilled:
                self._unspill(seq)
                dropped.append(seq)
        self._refill()
        if not dropped:
            return  # already acknowledged or dropped: nothing held, nothing to say
        code = reason.split(":", 1)[0]
        before = self.nack_reasons[code]
        self.counts["nacked"] += len(dropped)
        self.nack_reasons[code] += len(dropped)
        if before == 0 or before // NACK_WARN_EVERY != self.nack_reasons[code] // NACK_WARN_EVERY:
            log.warning(
                "the gateway refused chunks %s for good (%s); they are dropped, %d refused for "
                "%s so far: %s", dropped[:5], reason, self.nack_reasons[code], code,
                NACK_ADVICE.get(code, "see docs/PROTOCOL.md"),
            )  # fmt: skip

    def handle(self, msg: dict) -> bool:
        """Apply an ack/nack message from ``TransportClient.poll``; True if it was one."""
        if msg.get("type") == "ack":
            self.ack(msg["seqs"])
            return True
        if msg.get("type") == "nack":
            self.nack(msg["seqs"], msg["reason"])
            return True
        return False

    # ------------------------------------------------------------ state

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    def stats(self) -> dict:
        return {
            "pending": len(self),
            "in_memory": len(self._memory),
            "on_disk": len(self._spilled),
            "disk_bytes": self._disk_bytes,
            **self.counts,
            "nack_reasons": dict(self.nack_reasons),
        }

    # ------------------------------------------------------------ disk

    def _path(self, seq: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{seq:016d}{_SUFFIX}"

    def _spill(self, seq: int, data: bytes) -> None:
        while self._spilled and self._disk_bytes + len(data) > self.max_disk_bytes:
            oldest = next(iter(self._spilled))
            self._unspill(oldest)
            self.counts["dropped"] += 1
            if self.counts["dropped"] == 1 or self.counts["dropped"] % 100 == 0:
                log.warning(
                    "outbox: the link has been down too long; spilled chunks exceed %d MB, "
                    "dropping the oldest (%d dropped so far). Raise transport.outbox_disk_mb or "
                    "fix the link", self.max_disk_bytes >> 20, self.counts["dropped"]
                )  # fmt: skip
        if len(data) > self.max_disk_bytes:
            self.counts["dropped"] += 1
            log.warning("outbox: a %d-byte chunk exceeds the whole disk bound; dropped", len(data))
            return
        atomic_write(self._path(seq), data)
        self._spilled[seq] = len(data)
        self._disk_bytes += len(data)
        self.counts["spilled"] += 1

    def _unspill(self, seq: int) -> bytes | None:
        size = self._spilled.pop(seq)
        self._disk_bytes -= size
        path = self._path(seq)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        path.unlink(missing_ok=True)
        return data

    def _refill(self) -> None:
        while self._spilled and len(self._memory) < self.max_memory:
            seq = next(iter(self._spilled))
            data = self._unspill(seq)
            if data is not None:
                self._memory[seq] = [data, None]

    def _drop_oldest_memory(self) -> None:
        oldest = next(iter(self._memory))
        del self._memory[oldest]
        self.counts["dropped"] += 1
        log.warning("outbox: memory full and no spill directory; dropped chunk %d", oldest)

    def _reload(self) -> None:
        assert self.directory is not None
        for tmp in self.directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        seq_file = self.directory / "next_seq"
        if seq_file.is_file():
            try:
                self._next_seq = self._reserved = int(seq_file.read_text())
            except ValueError:
                log.warning(
                    "outbox: unreadable %s; sequence numbers restart after spilled ones", seq_file
                )
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            size = path.stat().st_size
            self._spilled[seq] = size
            self._disk_bytes += size
            self._next_seq = max(self._next_seq, seq + 1)
        self._reserved = max(self._reserved, self._next_seq)
        if self._spilled:
            log.info(
                "outbox: %d unacknowledged chunks from a previous run will be sent",
                len(self._spilled),
            )
        self._refill()

