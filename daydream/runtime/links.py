"""Links: how a robot actor's chunks reach the replay and new weights reach its policy.

Two kinds, one interface (``robot_actor.Link``):

- :class:`NetworkLink` (``daydream actor``): a thread that owns the robot's ZeroMQ
  connection. Its jobs are split in three small parts: :class:`ChunkDelivery` (a bounded
  queue from the control loop into the Outbox, resends until the gateway acknowledges),
  :class:`Reports` (episode returns and the policy version in heartbeats) and
  :class:`WeightsReceiver` (announced versions, requests, loading into the spare policy).
- :class:`InProcessLink` (``daydream train``): no network. Chunks go straight into the
  in-process replay, episode reports to the learner, weights straight into the spare
  policy. It is also the learner's end (``publish_weights``, ``pop_reports``), so the
  learner runs unchanged.

Neither ever blocks the control loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daydream.core.weights import PolicyWeights
from daydream.runtime.robot_actor import PolicySlots
from daydream.wire.curve import SERVER_NAME, key_directory
from daydream.wire.outbox import Outbox
from daydream.wire.transport import TransportClient, TransportOptions

log = logging.getLogger("daydream.actor")

# A gateway not heard from for this long is not waited for (whether the learner behind it is
# alive, the gateway judges: it stops passing on a pace the learner no longer updates)
PACE_STALE_S = 30.0
MAX_EPISODES_KEPT = 1000  # episode reports waiting for a heartbeat (the oldest go first)
EPISODES_PER_HEARTBEAT = 64
REQUEST_AGAIN_S = 5.0  # ask again for announced weights whose answer was lost


class ChunkDelivery:
    """Owns the hand-over of chunks from the control loop to the Outbox (and so to the wire).

    ``put`` (control thread) never blocks: when the network thread is stuck the oldest
    queued chunk is dropped, counted and said. ``take`` (network thread) encodes what is
    queued into the outbox with sequence numbers that are unique across restarts.
    """

    def __init__(self, outbox: Outbox, client: TransportClient, depth: int) -> None:
        self.outbox, self.client = outbox, client
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.dropped = 0

    def put(self, chunk: dict[str, np.ndarray]) -> None:
        while True:
            try:
                self._queue.put_nowait(chunk)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                    log.warning("actor: network thread is behind; dropped a queued chunk")
                except queue.Empty:
                    pass

    def take(self) -> None:
        while True:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                return
            seq = self.outbox.allocate_seq()
            self.outbox.put(seq, self.client.encode_chunk(seq, chunk))

    @property
    def idle(self) -> bool:
        return len(self.outbox) == 0 and self._queue.empty()

    @property
    def unacknowledged(self) -> int:
        """Chunks handed over that the replay has not acknowledged yet (queued, in the outbox)."""
        return self._queue.qsize() + len(self.outbox)


class Reports:
    """Owns the episode returns waiting to be reported in a heartbeat."""

    def __init__(self) -> None:
        self._episodes: deque = deque(maxlen=MAX_EPISODES_KEPT)

    def add(self, episode_return: float, length: int, info: dict[str, float]) -> None:
        self._episodes.append([float(episode_return), int(length), dict(info)])

    def heartbeat(
        self, client: TransportClient, actor_id: str, version: int, extra: dict | None = None
    ) -> None:
        """Send the waiting returns, the policy version and ``extra`` (the fleet console's
        fields, runtime/fleet_report.py) in one heartbeat."""
        episodes = []
        while self._episodes and len(episodes) < EPISODES_PER_HEARTBEAT:
            episodes.append(self._episodes.popleft())
        msg = {**(extra or {}), "type": "heartbeat", "actor": actor_id, "episodes": episodes,
               "policy_version": int(version)}  # fmt: skip
        if not client.send(msg):
            self._episodes.extendleft(reversed(episodes))  # not sent: report them next time


class WeightsReceiver:
    """Owns what the robot knows of the learner's weights: the newest version announced, the
    outstanding request, and loading received weights into the spare policy copy.

    Decoding is cheap (arrays are views of the received frame), but loading weights into
    the spare copy runs Python for a few ms: when the loop is paced, it waits for a tick to
    end (``tick_done``) and loads in the idle time before the next one.
    """

    def __init__(self, slots: PolicySlots, gate_timeout: float) -> None:
        self.slots = slots
        self.gate_timeout = gate_timeout  # seconds to wait for a tick's end; 0: do not wait
        self.gateway_version = -1
        self.received = 0
        self.errors = 0
        self._requested: tuple[int, float] = (-2, 0.0)
        self._idle = threading.Event()

    def tick_done(self) -> None:
        self._idle.set()

    def announced(self, version: int, client: TransportClient) -> None:
        self.gateway_version = version
        have = self.slots.newest
        if version <= have:
            return
        requested, at = self._requested
        # one request per announced version, again after a while if the answer was lost
        if requested == version and time.monotonic() - at < REQUEST_AGAIN_S:
            return
        if client.request_weights(have):
            self._requested = (version, time.monotonic())

    def load(self, msg: dict, stopping: bool) -> None:
        version = int(msg["version"])
        if version <= self.slots.newest:
            return
        if self.gate_timeout > 0 and not stopping:
            self._idle.clear()
            self._idle.wait(self.gate_timeout)  # load in the idle time after the next tick
        try:
            self.slots.stage(PolicyWeights(version, msg["params"]))
            self.received += 1
        except ValueError as e:
            self.errors += 1
            log.error(
                "actor: weights version %d do not fit this robot's policy (%s); keeping the "
                "current ones. Start the actor with the learner's config.", version, e
            )  # fmt: skip


class NetworkLink:
    """Owns the robot's network thread: the TransportClient, and through it the chunk
    delivery, the heartbeat reports and the weights. The control loop calls only
    ``send_chunk``, ``report_episode`` and ``tick_done``, which never block."""

    def __init__(
        self, config, address: str, actor_id: str, directory: Path, slots: PolicySlots,
        period: float = 0.0,
    ) -> None:  # fmt: skip
        actor, transport = config.actor, config.transport
        self.actor_id = actor_id
        self.heartbeat_every = actor.heartbeat_every_s
        self.poll_ms = actor.net_poll_ms
        self.outbox = Outbox(
            directory / transport.outbox_dir,
            max_memory=transport.outbox_chunks,
            max_disk_bytes=transport.outbox_disk_mb << 20,
            resend_after=transport.resend_after_s,
        )
        keys = key_directory(transport.key_dir, config.logdir)
        self.client = TransportClient(
            address,
            actor_id,
            curve=transport.curve,
            key_file=keys / f"{transport.client_key}.key_secret",
            server_key_file=keys / f"{SERVER_NAME}.key",
            options=TransportOptions.from_block(transport),
        )
        self.delivery = ChunkDelivery(self.outbox, self.client, actor.queue_chunks)
        self.chunk_length = int(actor.chunk_length)
        self.reports = Reports()
        self.weights = WeightsReceiver(slots, 2.0 * period)
        self.slots = slots
        self.address = address
        self.connected_at: float | None = None
        self.silence_warn_s = float(actor.learner_silence_warn_s)
        self._heard_at = time.monotonic()  # the last message from the learner (or the start)
        self._warned_silent = False
        # the fleet console's heartbeat fields (set by RobotActor.networked; network thread)
        self.heartbeat_fields: Callable[[], dict] | None = None
        self._behind = (0, -1e9)  # (steps the learner is behind train.ratio, when it was said)
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="daydream-link", daemon=True)

    # ------------------------------------------------------------ control-thread side
    def start(self) -> NetworkLink:
        self._thread.start()
        return self

    def send_chunk(self, chunk: dict[str, np.ndarray]) -> None:
        self.delivery.put(chunk)

    def report_episode(
        self, episode_return: float, length: int, info: dict[str, float] | None = None
    ) -> None:
        self.reports.add(episode_return, length, info or {})

    def tick_done(self) -> None:
        """The control loop finished a tick's work: weights may load in its idle time now."""
        self.weights.tick_done()

    def behind(self) -> int:
        """Environment steps the learner is behind its training ratio, as it last said (0 when
        it has not said so for PACE_STALE_S: a learner that is gone is not waited for), plus
        this robot's steps on their way to the replay, which the learner cannot count yet: a
        fast simulation has hundreds of them in flight."""
        steps, at = self._behind
        if steps <= 0 or time.monotonic() - at >= PACE_STALE_S:
            return 0  # keeping up, or gone: do not wait (an outbox backlog alone is no reason)
        return steps + self.delivery.unacknowledged * self.chunk_length

    def silent_s(self) -> float:
        """Seconds since the learner last answered (since the start, if it never did)."""
        return time.monotonic() - self._heard_at

    def status(self) -> dict:
        # reads a few ints owned by the network thread: fine for a display
        return {
            "gateway_version": self.weights.gateway_version,
            "connected": self.connected_at is not None,
            "learner_silent_s": round(self.silent_s(), 1),
            "outbox": self.outbox.stats(),
            "dropped_queue": self.delivery.dropped,
        }

    def close(self, grace: float) -> dict:
        """Send what is queued, wait up to ``grace`` seconds for acks, stop the thread."""
        self._deadline = time.monotonic() + grace
        self._stop.set()
        self._thread.join(timeout=grace + 5.0)
        return self.outbox.stats()

    # ------------------------------------------------------------ network thread
    def _run(self) -> None:
        last_heartbeat = -1e9
        self.client.hello()
        try:
            while not self._stopping_done():
                self.delivery.take()
                self.outbox.pump(self.client.send)
                now = time.monotonic()
                if now - last_heartbeat >= self.heartbeat_every:
                    last_heartbeat = now
                    self.reports.heartbeat(self.client, self.actor_id, self.slots.version,
                                           self._fleet_fields())  # fmt: skip
                # decoding even a weights message only parses its small header
                for msg in self.client.poll(timeout_ms=self.poll_ms):
                    self._handle(msg)
                self._warn_if_silent()
        except Exception:  # noqa: BLE001 - the control loop must go on; say why the link died
            log.exception("actor: the network thread failed; experience is no longer sent")
        finally:
            self.client.close()

    def _fleet_fields(self) -> dict | None:
        if self.heartbeat_fields is None:
            return None
        try:
            return self.heartbeat_fields()
        except Exception:  # noqa: BLE001 - a display must never stop the robot's reports
            log.exception("actor: the fleet console's heartbeat fields failed; sent without")
            return None

    def _stopping_done(self) -> bool:
        if not self._stop.is_set():
            return False
        return self.delivery.idle or time.monotonic() > self._deadline

    def _warn_if_silent(self) -> None:
        """Say once when the learner has not answered for ``actor.learner_silence_warn_s``
        (it answers every heartbeat), and once when it answers again."""
        silent = self.silent_s() > self.silence_warn_s > 0
        if silent and not self._warned_silent:
            log.warning(
                "actor: no answer from the learner at %s for %.0f s (is `daydream learner` "
                "running there, is the port reachable, do the CURVE keys match?); acting on "
                "policy version %d, experience waits in the outbox", self.address,
                self.silent_s(), self.slots.version,
            )  # fmt: skip
        elif not silent and self._warned_silent:
            log.warning("actor: the learner at %s answers again", self.address)
        self._warned_silent = silent

    def _handle(self, msg: dict) -> None:
        self._heard_at = time.monotonic()
        kind = msg.get("type")
        if kind in ("ack", "nack", "weights_info") and self.connected_at is None:
            self.connected_at = time.monotonic()
        if kind in ("ack", "weights_info") and isinstance(msg.get("behind"), int):
            self._behind = (msg["behind"], time.monotonic())
        if self.outbox.handle(msg):
            return
        if kind == "weights_info":
            self.weights.announced(int(msg["version"]), self.client)
        elif kind == "weights":
            self.weights.load(msg, self._stop.is_set())
        elif kind == "error":
            log.warning("actor: the gateway rejected a message (%s)", msg.get("reason"))


class InProcessLink:
    """Owns the in-process hand-over between a robot actor and the learner in one process
    (``daydream train``): chunks into the replay with this actor's sequence numbers,
    episode reports to the learner, published weights into the actor's spare policy."""

    def __init__(self, replay, actor_id: str) -> None:
        self.replay = replay
        self.actor_id = actor_id
        self.slots: PolicySlots | None = None
        # sequence numbers go on after the newest chunk this stream holds (a resumed run)
        held = [seq for stream, seq in replay.keys() if stream == actor_id]
        self._seq = max(held) + 1 if held else 0
        self._reports: list[dict] = []
        self.added = 0

    def for_actor(self, slots: PolicySlots, directory: Path, period: float) -> InProcessLink:
        """``RobotActor``'s make_link."""
        self.slots = slots
        return self

    # ------------------------------------------------------------ the actor's end
    def start(self) -> InProcessLink:
        return self

    def send_chunk(self, chunk: dict[str, np.ndarray]) -> None:
        self.replay.add(self.actor_id, self._seq, chunk)
        self._seq += 1
        self.added += 1

    def report_episode(
        self, episode_return: float, length: int, info: dict[str, float] | None = None
    ) -> None:
        version = self.slots.version if self.slots is not None else -1
        episode = (float(episode_return), int(length), dict(info or {}))
        self._reports.append({"actor": self.actor_id, "episodes": [episode],
                              "policy_version": version})  # fmt: skip

    def tick_done(self) -> None:
        pass

    def behind(self) -> int:
        return 0  # the learner trains between two ticks: never behind

    def status(self) -> dict:
        return {"connected": True, "outbox": {"pending": 0}}

    def close(self, grace: float) -> dict:
        return {"pending": 0, "acked": self.added}

    # ------------------------------------------------------------ the learner's end
    def publish_weights(self, arrays: dict[str, np.ndarray], version: int) -> None:
        if self.slots is not None:
            self.slots.stage(PolicyWeights(version, arrays))

    def pop_reports(self) -> list[dict]:
        reports, self._reports = self._reports, []
        return reports

    def stats(self) -> dict:
        return {"chunks_added": self.added}

    def set_pace(self, behind: int) -> None:
        pass  # the robot waits anyway while the learner trains between two ticks

    def stop(self) -> None:
        pass
