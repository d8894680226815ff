"""Gateway: the workstation end of the transport. Chunks in, acks and weights out.

For every chunk a robot sends, the gateway
  1. decodes it (``codec``; a bad message is counted by reason and answered with ``error``),
  2. validates it against the declared record spaces when given (wrong keys, shapes or
     dtypes: ``bad_chunk``), then its values (``codec.check_chunk_values``: ``non_finite``,
     ``not_boolean``, ``out_of_bounds``, ``bad_one_hot``; without spaces only the first
     two, which need none),
  3. hands it to the replay with the sender's CURVE key (``daydream.replay.remote.RemoteReplay``,
     whose adds are pipelined, or an in-process ``ReplayService``); the replay refuses a
     stream owned by another key (``stream_owned``) and implausible sequence numbers
     (``bad_seq``, ``seq_ahead``),
  4. acknowledges it ONLY once the replay has answered True (stored, on disk) or False (a
     duplicate it already holds). If the replay call fails, nothing is acknowledged and
     the robot's outbox sends the chunk again.
A refused chunk is answered with a ``nack`` (permanent: the robot drops it) whose reason is
``"<reason>: <detail>"``, and counted as ``rejected_<reason>`` in ``stats()`` (the learner
shows these in its metrics and progress line).
Every ack and weights announcement also carries ``behind``: how many environment steps the
learner is behind its training ratio (``set_pace``), so that simulated robots can wait for
it (real robots never do).
It keeps every robot's newest heartbeat report (state, safety console, camera thumbnail) for
the fleet console: ``robots()`` and ``thumbnail(id)`` (``daydream/wire/fleet.py``).
It also serves the newest policy weights: ``publish_weights(params, version)`` (from the
learner) announces the version to every robot seen recently; a robot that asks
(``weights_request``) with an older version gets the weights.

Three ways to run it (``learner.gateway``; ``runtime/learner.py: GatewayRunner``)::

    endpoint = replay.host(Gateway, bind=...)  # replay: in the replay actor's process, built on
    replay.guest("stop")                       # its ReplayService (daydream.replay.remote)
    gateway = Gateway(replay, bind="tcp://*:5555", key_dir="keys"); gateway.start()  # a thread
    gateway = remote_class(Gateway).remote(replay, bind=...)                         # a Ray actor
    gateway.start.remote()                            # (daydream.replay.remote.remote_class)
    ...
    gateway.publish_weights(params, version); gateway.stop()

Replay calls are pipelined (several batches in flight) so robots never wait on disk
writes one batch at a time: a replay elsewhere (``RemoteReplay``) pipelines its Ray calls, a
replay in this process (``ReplayService``) is written by ``InlineSink``'s writer thread (the
batches queued when it comes round as one disk commit) while the loop goes on receiving. In
the replay's own process the arrays a chunk decodes to (read-only views of the received
message, one chunk per message) go straight to ``ReplayService.add_batch(copy=False)``, which
keeps them as its memory (no copy: about 2 ms of the replay's CPU per 1,000 image transitions,
``bench/ingest.py``) and writes them to its file.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections import Counter, defaultdict, deque
from pathlib import Path

import numpy as np

from daydream.wire.codec import check_chunk_values, encode
from daydream.wire.fleet import FleetRegistry
from daydream.wire.transport import TransportOptions, TransportServer

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4  # replay batches awaiting an answer (those queued go as one disk commit)
PEER_TIMEOUT_S = 60.0  # robots not heard from for this long get no weight announcements
PACE_FRESH_S = 5.0  # a pace figure older than this is not passed on (the learner is gone)
MAX_REPORTS = 4096  # heartbeat reports kept until the learner pops them
MAX_REPORTED_EPISODES = 64  # episodes read from one heartbeat
MAX_EPISODE_FIGURES = 8  # task figures kept per reported episode (final_distance, ...)
FIGURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # a figure's name: it becomes a metrics key
RESERVED_NAMES = {"step", "episode_return", "episode_length", "episodes"}  # the learner's own


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_episode(entry) -> tuple[float, int, dict[str, float]] | None:
    """One reported episode, ``[return, length]`` or ``[return, length, {figure: value}]``;
    None when malformed. Figures with a bad name or a non-finite value are left out."""
    if not isinstance(entry, list) or len(entry) not in (2, 3):
        return None
    if not (_number(entry[0]) and _number(entry[1])):
        return None
    figures = entry[2] if len(entry) == 3 else {}
    if not isinstance(figures, dict):
        return None
    info = {
        name: float(value)
        for name, value in list(figures.items())[:MAX_EPISODE_FIGURES]
        if isinstance(name, str) and FIGURE_NAME.fullmatch(name) and _number(value)
        and name not in RESERVED_NAMES
    }  # fmt: skip
    return float(entry[0]), int(entry[1]), info


class Gateway:
    """Owns the server socket, chunk validation, ack bookkeeping and the newest weights."""

    def __init__(
        self,
        replay,
        bind: str = "tcp://*:5555",
        *,
        curve: bool = True,
        key_dir: str | Path | None = None,
        spaces: dict | None = None,
        max_batch: int = 32,
        poll_ms: int = 50,
        options: TransportOptions | None = None,
    ):
        self.replay = replay
        # a replay elsewhere (daydream.replay.remote.RemoteReplay) pipelines its adds itself
        self._sink = (replay if hasattr(replay, "submit")
                      else InlineSink(replay, group_chunks=MAX_IN_FLIGHT * max_batch))  # fmt: skip
        self.spaces = dict(spaces) if spaces else None  # record spaces (bounds, discrete)
        self._layout = (
            {k: (np.dtype(s.dtype), tuple(s.shape)) for k, s in spaces.items()} if spaces else None
        )
        self.max_batch = int(max_batch)
        self.poll_ms = int(poll_ms)
        self.server = TransportServer(bind, curve=curve, key_dir=key_dir, options=options)
        self.endpoint = self.server.endpoint
        self.counts: Counter = Counter()
        self._weights_lock = threading.Lock()
        self._weights_version = -1
        self._weights_bytes: bytearray | None = None  # encoded once, sent to every robot
        self._announce = False
        self._behind = 0  # environment steps the learner is behind train.ratio (set_pace)
        self._pace_at = -1e9  # when the learner last said so (time.monotonic())
        self._peers: dict[bytes, float] = {}
        self._reports: deque = deque(maxlen=MAX_REPORTS)  # heartbeat reports for the learner
        self._in_flight: list = []  # (ticket, [(peer, actor, seq)])
        self._pending: list = []  # (peer, actor, seq, data, key) received, not yet handed on
        self.last_refusal = ""  # the reason of the newest nack, for the learner's log
        self.fleet = FleetRegistry()  # every robot's newest report, for the fleet console
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------ learner side

    def publish_weights(self, params: dict[str, np.ndarray], version: int) -> None:
        """Make ``params`` (flat dict of arrays) the newest weights; robots hear of it."""
        data = encode(
            {"type": "weights", "version": int(version), "params": params},
            self.server.options.max_weights_bytes,
        )
        with self._weights_lock:
            if version <= self._weights_version:
                raise ValueError(
                    f"weights version {version} is not newer than {self._weights_version}; "
                    f"versions must increase"
                )
            self._weights_version, self._weights_bytes = int(version), data
            self._announce = True

    def set_pace(self, behind: int) -> None:
        """How many environment steps the learner is behind its training ratio (0: keeping up);
        robots hear it with every ack and weights announcement."""
        self._behind, self._pace_at = max(0, int(behind)), time.monotonic()

    def behind(self) -> int:
        """What the robots are told: the learner's last figure while it keeps telling it (it
        does many times a second), 0 once it has been silent for PACE_FRESH_S: robots never
        wait for a learner that is gone, even though this gateway (in the replay's process)
        outlives it."""
        fresh = time.monotonic() - self._pace_at < PACE_FRESH_S
        return self._behind if fresh else 0

    @property
    def weights_version(self) -> int:
        return self._weights_version

    def stats(self) -> dict:
        """Counters: chunks, acks, rejected messages by reason, weights served (any thread may
        ask while the loop runs: the counters are copied in one step each)."""
        rejected = {f"rejected_{k}": v for k, v in dict(self.server.rejected).items()}
        return {
            **dict(self.counts),
            **rejected,
            "last_refusal": self.last_refusal,
            "dropped_sends": self.server.dropped_sends,
            "weights_version": self._weights_version,
            "peers": len(self._peers),
            "endpoint": self.endpoint,
        }

    # ------------------------------------------------------------ loop

    def start(self) -> str:
        """Run the loop in a background thread; returns the bound endpoint."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="daydream-gateway", daemon=True)
            self._thread.start()
        return self.endpoint

    def run(self) -> None:
        """Serve until ``stop()``; closes the socket on the way out."""
        try:
            while not self._stop.is_set():
                self.step(self.poll_ms)
            self._drain(timeout=5.0)
        finally:
            self._close()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        elif not self.server.sock.closed:
            self._close()

    def _close(self) -> None:
        self.server.close()
        if isinstance(self._sink, InlineSink):
            self._sink.close()

    def step(self, timeout_ms: int = 0) -> None:
        """One round: receive, hand chunks to the replay, send acks and weights."""
        if self._in_flight or self._pending:
            timeout_ms = min(timeout_ms, 1)
        messages = self.server.recv(timeout_ms, max_messages=4 * self.max_batch)
        now = time.monotonic()
        batch: list[tuple[bytes, str, int, dict, str | None]] = []
        for peer, msg, key in messages:
            self._peers[peer] = now
            kind = msg["type"]
            if kind == "chunk":
                self._accept_chunk(peer, key, msg, batch)
            elif kind in ("hello", "heartbeat"):
                self._note_report(msg, key)
                self.server.send(peer, self._weights_info())
            elif kind == "weights_request":
                self._serve_weights(peer, msg["version"])
            else:
                self.server.rejected["unexpected_type"] += 1
                self.server.send(peer, {"type": "error", "reason": "unexpected_type"})
        self._pending.extend(batch)
        self._collect(block=False)
        # While the replay is busy, chunks accumulate here and go as one bigger batch (one
        # disk commit) when a slot frees up.
        while self._pending and len(self._in_flight) < MAX_IN_FLIGHT:
            self._submit(self._pending[: self.max_batch])
            del self._pending[: self.max_batch]
        if len(self._pending) >= 4 * self.max_batch:  # too far behind: wait for the replay
            self._collect(block=True, timeout=1.0)
        if self._announce:
            self._announce_weights(now)

    def _note_report(self, msg: dict, key: str | None = None) -> None:
        """Keep what a robot reports in its heartbeat (episode returns, policy version in use)
        for the learner's logs, and its state for the fleet console (``self.fleet``); anything
        malformed is ignored (reports are only metrics)."""
        episodes = msg.get("episodes")
        report = {"actor": msg["actor"], "episodes": [], "policy_version": None}
        if isinstance(episodes, list):
            read = (read_episode(e) for e in episodes[:MAX_REPORTED_EPISODES])
            report["episodes"] = [e for e in read if e is not None]
        version = msg.get("policy_version")
        if isinstance(version, int) and not isinstance(version, bool):
            report["policy_version"] = version
        with self._weights_lock:
            self._reports.append(report)
        self.fleet.note(msg, key, [e[0] for e in report["episodes"]])

    def robots(self) -> list[dict]:
        """Every robot heard from, its newest status, console and returns (``FleetRegistry``)."""
        return self.fleet.robots()

    def thumbnail(self, robot_id: str) -> tuple[bytes, str] | None:
        """The newest camera thumbnail a robot sent: (JPEG or PNG bytes, MIME type) or None."""
        return self.fleet.thumbnail(robot_id)

    def pop_reports(self) -> list[dict]:
        """Robot reports since the last call: {actor, episodes: [(return, length, figures)],
        policy_version}."""
        with self._weights_lock:
            reports, self._reports = list(self._reports), deque(maxlen=MAX_REPORTS)
        return reports

    def _accept_chunk(self, peer: bytes, key: str | None, msg: dict, batch: list) -> None:
        self.counts["chunks_received"] += 1
        data = msg["data"]
        problem = self._validate(data) or check_chunk_values(data, self.spaces or {})
        if problem:
            self._nack(peer, msg["actor"], [msg["seq"]], problem)
            return
        batch.append((peer, msg["actor"], msg["seq"], data, key))

    def _validate(self, data: dict[str, np.ndarray]) -> str:
        """'' or ``"bad_chunk: <what differs>"`` (time axis, keys, dtypes, shapes)."""
        lengths = {v.shape[0] if v.ndim else 0 for v in data.values()}
        if len(lengths) != 1 or 0 in lengths:
            return "bad_chunk: arrays need one shared leading time axis T >= 1"
        if self._layout is None:
            return ""
        if data.keys() != self._layout.keys():
            return f"bad_chunk: keys {sorted(data)} differ from the declared {sorted(self._layout)}"
        for k, (dtype, shape) in self._layout.items():
            if data[k].dtype != dtype or data[k].shape[1:] != shape:
                return (
                    f"bad_chunk: {k}: {data[k].dtype}{data[k].shape[1:]} differs from "
                    f"{dtype}{shape}"
                )
        return ""

    def _nack(self, peer: bytes, actor: str, seqs: list[int], reason: str) -> None:
        """Refuse ``seqs`` for good: counted as ``rejected_<reason>``, the robot drops them."""
        code = reason.split(":", 1)[0]
        self.server.rejected[code if code.isidentifier() else "replay_refused"] += len(seqs)
        self.counts["nacks_sent"] += 1
        self.last_refusal = f"{actor}: {reason}"[:200]
        self.server.send(
            peer, {"type": "nack", "actor": actor, "seqs": seqs, "reason": reason[:200]}
        )

    # ------------------------------------------------------------ replay

    def _submit(self, batch: list[tuple[bytes, str, int, dict, str | None]]) -> None:
        items = [(f"{actor}", seq, data, key) for _, actor, seq, data, key in batch]
        meta = [(peer, actor, seq) for peer, actor, seq, _, _ in batch]
        self._in_flight.append((self._sink.submit(items), meta))

    def _collect(self, block: bool = False, timeout: float | None = None) -> None:
        if not self._in_flight:
            return
        finished = dict(self._sink.done([t for t, _ in self._in_flight], block, timeout))
        still = []
        for ticket, meta in self._in_flight:
            if ticket not in finished:
                still.append((ticket, meta))
                continue
            results = finished[ticket]
            if isinstance(results, BaseException):  # no acks: the robots resend
                self.counts["replay_errors"] += 1
                log.warning("gateway: the replay refused a batch (%s); robots will resend", results)
                continue
            self._acknowledge(meta, results)
        self._in_flight = still

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self._in_flight or self._pending) and time.monotonic() < deadline:
            while self._pending and len(self._in_flight) < MAX_IN_FLIGHT:
                self._submit(self._pending[: self.max_batch])
                del self._pending[: self.max_batch]
            self._collect(block=True, timeout=max(0.0, deadline - time.monotonic()))

    def _acknowledge(self, meta: list[tuple[bytes, str, int]], results: list) -> None:
        acks: dict[tuple[bytes, str], list[int]] = defaultdict(list)
        nacks: dict[tuple[bytes, str, str], list[int]] = defaultdict(list)
        for (peer, actor, seq), result in zip(meta, results, strict=True):
            if result is True or result is False:
                self.counts["chunks_added" if result else "chunks_duplicate"] += 1
                acks[(peer, actor)].append(seq)
            elif result is None:  # its first copy is being written: that one gets the answer
                self.counts["chunks_being_written"] += 1
            else:  # refused by the replay, "<reason>: <detail>"
                nacks[(peer, actor, str(result))].append(seq)
        for (peer, actor), seqs in acks.items():
            self.counts["acks_sent"] += len(seqs)
            self.server.send(
                peer, {"type": "ack", "actor": actor, "seqs": seqs, "behind": self.behind()}
            )
        for (peer, actor, reason), seqs in nacks.items():
            self._nack(peer, actor, seqs, reason)

    # ------------------------------------------------------------ weights

    def _serve_weights(self, peer: bytes, have: int) -> None:
        with self._weights_lock:
            version, data = self._weights_version, self._weights_bytes
        if data is not None and version > have:
            if self.server.send(peer, data):
                self.counts["weights_sent"] += 1
        else:
            self.server.send(peer, self._weights_info())

    def _weights_info(self) -> dict:
        return {"type": "weights_info", "version": self._weights_version, "behind": self.behind()}

    def _announce_weights(self, now: float) -> None:
        self._announce = False
        info = encode(self._weights_info())
        for peer, seen in list(self._peers.items()):
            if now - seen > PEER_TIMEOUT_S:
                del self._peers[peer]
            else:
                self.server.send(peer, info)


class InlineSink:
    """Owns the writer thread that stores batches in a replay in this process
    (``ReplayService``) behind the gateway's pipelined interface: ``submit`` queues a batch and
    returns at once; the thread stores what is queued when it comes round, up to
    ``group_chunks`` chunks as one disk commit (a group commit: the fsyncs of one file, not of
    one per batch, which matters on a busy disk); ``done`` hands back the results per batch.
    The gateway meanwhile goes on receiving and validating (a disk commit, its copies and
    checksums release the GIL), and the learner goes on sampling (the file is written outside
    the replay's lock)."""

    def __init__(self, replay, group_chunks: int = 128) -> None:
        self.replay = replay
        self.group_chunks = group_chunks
        self._next = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # (ticket, items); (0, None): stop
        self._results: dict[int, object] = {}
        self._finished = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, items: list) -> int:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="daydream-replay-writer",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        self._next += 1
        self._queue.put((self._next, items))
        return self._next

    def _write(self) -> None:
        while True:
            group = [self._queue.get()]  # what is queued now, up to group_chunks, in order
            while group[-1][1] is not None and sum(len(b) for _, b in group) < self.group_chunks:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = group[-1][1] is None
            if stop:
                group.pop()
            if group:
                self._store(group)
            if stop:
                return

    def _store(self, group: list[tuple[int, list]]) -> None:
        items = [item for _, batch in group for item in batch]
        try:
            results: object = self.replay.add_batch(items, copy=False)  # the views: kept
        except Exception as e:  # noqa: BLE001 - reported by done(); the robots resend
            results = e
        with self._finished:
            start = 0
            for ticket, batch in group:
                if isinstance(results, BaseException):
                    self._results[ticket] = results
                else:
                    self._results[ticket] = results[start : start + len(batch)]  # type: ignore[index]
                start += len(batch)
            self._finished.notify_all()

    def done(self, tickets: list, block: bool = False, timeout: float | None = None) -> list:
        """The tickets whose batch is stored (with ``block``: wait up to ``timeout`` s for
        one), each with its results or the exception ``add_batch`` raised."""
        with self._finished:
            if block:
                self._finished.wait_for(lambda: any(t in self._results for t in tickets), timeout)
            return [(t, self._results.pop(t)) for t in tickets if t in self._results]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer once the batches queued before are stored (at most ``timeout`` s)."""
        if self._thread is not None:
            self._queue.put((0, None))
            self._thread.join(timeout)
            self._thread = None
