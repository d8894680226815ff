"""Transport + gateway: acks after the replay holds a chunk, at-least-once across a gateway
restart, CURVE allow-list, hostile input next to a healthy robot, weights."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
import zmq

from daydream.replay.service import ReplayService
from daydream.wire import curve
from daydream.wire.codec import SCHEMA_VERSION, encode
from daydream.wire.gateway import Gateway
from daydream.wire.outbox import Outbox
from daydream.wire.transport import TransportClient, TransportOptions

OPTIONS = TransportOptions(
    heartbeat_ivl_ms=200,
    heartbeat_timeout_ms=1000,
    reconnect_ivl_ms=50,
    reconnect_ivl_max_ms=200,
    max_message_bytes=256 * 1024,
)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys")
    curve.create_keys(path, ["actor"])
    curve.create_keypair(path / "outsiders", "intruder")  # a valid key pair, not allowed
    return path


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_client(endpoint: str, key_dir, actor: str = "robot-0", key: str = "actor"):
    key_file = (key_dir / "outsiders" if key == "intruder" else key_dir) / f"{key}.key_secret"
    return TransportClient(
        endpoint,
        actor,
        key_file=key_file,
        server_key_file=key_dir / "gateway.key",
        options=OPTIONS,
    )


def chunk(seq: int, steps: int = 4) -> dict[str, np.ndarray]:
    return {
        "image": np.full((steps, 8, 8, 3), seq % 256, np.uint8),
        "vector": np.full((steps, 3), seq, np.float32),
        "is_first": np.zeros(steps, bool),
    }


def wait_for(predicate, timeout: float = 10.0, poll=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poll is not None:
            poll()
        if predicate():
            return True
        time.sleep(0.01)
    return False


class GatedReplay(ReplayService):
    """A replay whose add_batch waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(capacity=10_000)
        self.gate = threading.Event()

    def add_batch(self, items, copy=True):
        assert self.gate.wait(10)
        return super().add_batch(items, copy=copy)


def test_a_chunk_is_acked_only_after_the_replay_holds_it(key_dir):
    replay = GatedReplay()
    gateway = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS)
    gateway.start()
    try:
        with make_client(gateway.endpoint, key_dir) as client:
            assert wait_for(lambda: client.send_chunk(0, chunk(0)))
            time.sleep(0.3)
            assert client.poll(0) == [] and replay.num_steps() == 0  # replay still writing
            replay.gate.set()
            acks: list = []
            assert wait_for(lambda: acks, poll=lambda: acks.extend(client.poll(10)))
            assert acks[0]["type"] == "ack" and acks[0]["seqs"] == [0]
            assert replay.keys() == [("robot-0", 0)]
            # a duplicate is acked again (the replay holds it) but stored once
            assert client.send_chunk(0, chunk(0))
            acks.clear()
            assert wait_for(lambda: acks, poll=lambda: acks.extend(client.poll(10)))
            assert acks[0]["seqs"] == [0] and replay.stats()["duplicates"] == 1
    finally:
        replay.gate.set()
        gateway.stop()


def test_the_gateway_in_the_replays_process_hands_over_the_received_views(key_dir):
    """No copy between the socket and the replay's memory: the arrays the replay is given are
    the read-only views of the received message, given away (copy=False: kept as they are)."""

    class RecordingReplay(ReplayService):
        def add_batch(self, items, copy=True):
            self.handed = [(copy, [a.flags.writeable for a in item[2].values()]) for item in items]
            return super().add_batch(items, copy=copy)

    replay = RecordingReplay(capacity=1000)
    gateway = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS)
    gateway.start()
    try:
        with make_client(gateway.endpoint, key_dir) as client:
            assert wait_for(lambda: client.send_chunk(0, chunk(0)))
            acks: list = []
            assert wait_for(lambda: acks, poll=lambda: acks.extend(client.poll(10)))
        assert replay.handed == [(False, [False] * len(chunk(0)))]
        assert replay.keys() == [("robot-0", 0)]
    finally:
        gateway.stop()


def test_chunks_of_the_wrong_space_are_nacked_and_not_stored(key_dir):
    from types import SimpleNamespace as Space

    spaces = {
        "image": Space(shape=(8, 8, 3), dtype=np.uint8),
        "vector": Space(shape=(3,), dtype=np.float32),
        "is_first": Space(shape=(), dtype=bool),
    }
    replay = ReplayService(capacity=1000)
    gateway = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, spaces=spaces, options=OPTIONS)
    gateway.start()
    try:
        with make_client(gateway.endpoint, key_dir) as client:
            bad = chunk(1)
            bad["vector"] = bad["vector"].astype(np.float64)
            assert wait_for(lambda: client.send_chunk(1, bad))
            assert client.send_chunk(2, chunk(2))
            got: list = []
            assert wait_for(lambda: len(got) >= 2, poll=lambda: got.extend(client.poll(10)))
            by_type = {m["type"]: m for m in got}
            assert by_type["nack"]["seqs"] == [1] and "vector" in by_type["nack"]["reason"]
            assert by_type["ack"]["seqs"] == [2]
            assert replay.keys() == [("robot-0", 2)]
            assert gateway.stats()["rejected_bad_chunk"] == 1
    finally:
        gateway.stop()


@pytest.mark.parametrize("mode", ["replay", "thread"])  # learner.gateway
def test_every_chunk_reaches_the_replay_exactly_once_across_a_gateway_restart(
    ray_session, key_dir, tmp_path, mode
):
    from daydream.replay.remote import RemoteReplay
    from daydream.runtime.learner import GatewayRunner

    endpoint = free_endpoint()
    replay_dir = tmp_path / "replay"

    def start():
        replay = RemoteReplay.start(capacity=100_000, directory=str(replay_dir))
        gateway = GatewayRunner(mode, replay, endpoint, key_dir=key_dir, options=OPTIONS,
                                max_batch=4)  # fmt: skip
        return replay, gateway

    replay, gateway = start()
    try:
        box = Outbox(tmp_path / "outbox", max_memory=8, resend_after=0.5)
        total, produced = 120, []
        with make_client(endpoint, key_dir) as client:

            def tick(produce: bool) -> None:
                if produce and len(produced) < total:
                    produced.append(box.allocate_seq())
                    box.put(produced[-1], client.encode_chunk(produced[-1], chunk(produced[-1])))
                box.pump(client.send)
                for msg in client.poll(0):
                    box.handle(msg)

            for _ in range(40):  # stream for a while
                tick(True)
                time.sleep(0.005)
            gateway.stop()  # the workstation goes away mid-stream ...
            replay.close()
            for _ in range(50):  # ... while the robot keeps producing
                tick(True)
                time.sleep(0.005)
            assert box.stats()["on_disk"] > 0  # the outage spilled to disk
            replay, gateway = start()  # back, on the same replay directory and port
            while len(produced) < total:
                tick(True)
            assert wait_for(lambda: len(box) == 0, timeout=30, poll=lambda: tick(False))
        held = replay.keys()
        assert sorted(held) == [("robot-0", s) for s in range(total)]  # all of them, once each
        stats = replay.stats()
        assert stats["chunks"] == total and stats["steps"] == 4 * total
    finally:
        gateway.stop()
        replay.close()


def test_a_client_without_an_allowed_key_can_neither_push_nor_get_weights(key_dir):
    replay = ReplayService(capacity=1000)
    gateway = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS)
    gateway.publish_weights({"w": np.ones(3, np.float32)}, version=1)
    gateway.start()
    ctx = zmq.Context()
    plain = ctx.socket(zmq.DEALER)  # no CURVE at all
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(gateway.endpoint)
    try:
        with make_client(gateway.endpoint, key_dir, "thief", key="intruder") as intruder:
            for seq in range(5):
                intruder.send_chunk(seq, chunk(seq))
                intruder.request_weights(-1)
                # the handshake fails, so the plain socket may have no pipe to queue into
                with contextlib.suppress(zmq.Again):
                    plain.send(
                        encode({"type": "weights_request", "actor": "x", "version": -1}),
                        zmq.NOBLOCK,
                    )
                    plain.send(
                        encode({"type": "chunk", "actor": "x", "seq": seq, "data": chunk(seq)}),
                        zmq.NOBLOCK,
                    )
            got = []
            wait_for(lambda: False, timeout=1.0, poll=lambda: got.extend(intruder.poll(10)))
            assert got == [] and not plain.poll(0)
            # an allowed robot, meanwhile, gets both
            with make_client(gateway.endpoint, key_dir) as client:
                assert wait_for(lambda: client.request_weights(-1))
                msgs: list = []
                assert wait_for(lambda: msgs, poll=lambda: msgs.extend(client.poll(10)))
                assert msgs[0]["type"] == "weights" and msgs[0]["version"] == 1
        assert replay.num_steps() == 0 and gateway.stats().get("chunks_received", 0) == 0
    finally:
        plain.close(0)
        ctx.term()
        gateway.stop()


def test_hostile_messages_are_rejected_while_a_real_robot_streams_unaffected(key_dir):
    from test_codec import hostile_messages

    replay = ReplayService(capacity=100_000)
    gateway = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS)
    gateway.start()
    ctx = zmq.Context()
    attacker = ctx.socket(zmq.DEALER)  # holds an allowed key: the attack is from inside
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.setsockopt(zmq.SNDHWM, 100_000)
    public, secret = curve.load_keypair(key_dir / "actor.key_secret")
    server_public = curve.load_keypair(key_dir / "gateway.key")[0]
    curve.make_curve_client(attacker, public, secret, server_public)
    attacker.connect(gateway.endpoint)
    bad = [data for _, data in hostile_messages() if len(data) < OPTIONS.max_message_bytes]
    bad.append(b"\x81" * 300_000)  # oversized for this gateway (256 kB)
    box = Outbox(max_memory=1000, resend_after=2.0)
    try:
        with make_client(gateway.endpoint, key_dir) as client:

            def attack():
                for data in bad:
                    attacker.send(data)
                attacker.send_multipart([b"two", b"frames"])

            thread = threading.Thread(target=attack)
            thread.start()
            for seq in range(60):
                box.put(seq, client.encode_chunk(seq, chunk(seq)))
                box.pump(client.send)
                for msg in client.poll(1):
                    box.handle(msg)
            thread.join()
            assert wait_for(
                lambda: len(box) == 0,
                poll=lambda: [box.handle(m) for m in client.poll(10)] and box.pump(client.send),
            )  # noqa: E501
        assert sorted(replay.keys()) == [("robot-0", s) for s in range(60)]
        expected = len(bad) + 1
        assert wait_for(
            lambda: (
                sum(v for k, v in gateway.stats().items() if k.startswith("rejected_")) == expected
            )
        )  # noqa: E501
        stats = gateway.stats()
        for reason in ("malformed", "oversized", "wrong_schema", "bad_field", "bad_dtype"):
            assert stats[f"rejected_{reason}"] > 0
        assert stats["chunks_added"] == 60
    finally:
        attacker.close(0)
        ctx.term()
        gateway.stop()


def test_new_weights_are_announced_and_served_only_when_newer(key_dir):
    gateway = Gateway(
        ReplayService(capacity=10), "tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS
    )  # noqa: E501
    gateway.start()
    try:
        with make_client(gateway.endpoint, key_dir) as client:
            msgs: list = []
            assert wait_for(lambda: client.hello())
            assert wait_for(lambda: msgs, poll=lambda: msgs.extend(client.poll(10)))
            # "behind": how far the learner is behind its ratio (simulated robots wait on it)
            assert msgs == [
                {"v": SCHEMA_VERSION, "type": "weights_info", "version": -1, "behind": 0}
            ]
            params = {"enc.w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2)}
            gateway.publish_weights(params, version=3)
            msgs.clear()
            assert wait_for(lambda: msgs, poll=lambda: msgs.extend(client.poll(10)))
            assert msgs[0]["type"] == "weights_info" and msgs[0]["version"] == 3  # announced
            client.request_weights(3)  # already has it: no download
            client.request_weights(-1)
            msgs.clear()
            assert wait_for(lambda: len(msgs) >= 2, poll=lambda: msgs.extend(client.poll(10)))
            assert [m["type"] for m in msgs] == ["weights_info", "weights"]
            np.testing.assert_array_equal(msgs[1]["params"]["enc.w"], params["enc.w"])
            with pytest.raises(ValueError, match="not newer"):
                gateway.publish_weights(params, version=3)
    finally:
        gateway.stop()


def test_sends_never_block_when_no_gateway_is_there(key_dir):
    with make_client(free_endpoint(), key_dir) as client:
        start = time.perf_counter()
        results = [client.send_chunk(seq, chunk(seq)) for seq in range(100)]
        assert time.perf_counter() - start < 1.0
        assert not any(results)  # nothing queued into a link that is not up


def test_truncated_extended_extra_frame_and_oversized_messages_are_rejected_by_reason(key_dir):
    """The schema-2 framing at the socket: one frame per message, sections exactly as long as
    the header says, the size limit on the whole message."""
    from daydream.wire.transport import TransportServer

    server = TransportServer("tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS)
    ctx = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    public, secret = curve.load_keypair(key_dir / "actor.key_secret")
    curve.make_curve_client(peer, public, secret, curve.load_keypair(key_dir / "gateway.key")[0])
    peer.connect(server.endpoint)
    good = bytes(encode({"type": "chunk", "actor": "a", "seq": 1, "data": chunk(1, steps=64)}))
    big = encode({"type": "chunk", "actor": "a", "seq": 2, "data": chunk(2, steps=2048)})
    assert OPTIONS.max_message_bytes < len(big) < 2 * OPTIONS.max_message_bytes
    cases = [
        ("malformed", [good[:-1]]),  # last array one byte short
        ("malformed", [good[: len(good) // 2]]),  # cut in the middle of a section
        ("malformed", [good + b"\x00"]),  # a byte beyond the last array
        ("malformed", [good, b"extra frame"]),  # arrays must not travel as extra frames
        ("malformed", [good[:50], good[50:]]),  # nor a message split across frames
        ("malformed", [b""]),
        ("oversized", [big]),
    ]
    try:
        for _, frames in cases:
            peer.send_multipart(frames)
        peer.send(good)
        got: list = []
        assert wait_for(
            lambda: len(got) == 1 and sum(server.rejected.values()) == len(cases),
            poll=lambda: got.extend(server.recv(10)),
        )
        assert got[-1][1]["seq"] == 1 and got[-1][1]["data"]["image"].shape == (64, 8, 8, 3)
        expected: dict = {}
        for reason, _ in cases:
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(server.rejected) == expected
        answers = []
        assert wait_for(lambda: len(answers) == len(cases), poll=lambda: peer.poll(10) and
                        answers.append(peer.recv()))  # fmt: skip
    finally:
        peer.close(0)
        ctx.term()
        server.close()


def test_a_schema_1_chunk_left_in_an_outbox_is_upgraded_when_sent(key_dir, tmp_path):
    from test_codec import encode_v1

    replay = ReplayService(capacity=1000)
    gateway = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, options=OPTIONS)
    gateway.start()
    try:
        box = Outbox(tmp_path / "outbox", max_memory=1)  # spilled by the previous release
        box.put(0, b"placeholder")
        box.put(7, encode_v1({"type": "chunk", "actor": "robot-0", "seq": 7, "data": chunk(7)}))
        box.ack([0])
        with make_client(gateway.endpoint, key_dir) as client:
            assert wait_for(
                lambda: len(box) == 0,
                poll=lambda: box.pump(client.send) + len([box.handle(m) for m in client.poll(10)]),
            )
        assert replay.keys() == [("robot-0", 7)] and box.stats()["acked"] == 2
        assert not any(k.startswith("rejected_") for k in gateway.stats())
    finally:
        gateway.stop()
