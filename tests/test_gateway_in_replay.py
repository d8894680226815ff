"""``learner.gateway: replay``: the gateway runs in the replay actor's process, so a chunk goes
from the socket into the replay without passing through Ray's object store, while the learner
still reaches the gateway (weights, pace, reports, fleet console, stats, stop) through Ray.

The proof of "no object store" is Ray's own count of the bytes ever created in the object
store (``cumulative_created_bytes`` of the raylet's store statistics): streaming the same
chunks to a gateway beside the driver (``thread``) raises it by at least their size; to the
gateway in the replay's process it stays flat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from daydream.replay.remote import RemoteReplay
from daydream.replay.store import Replay
from daydream.runtime.learner import GatewayRunner
from daydream.wire import curve
from daydream.wire.curve import KeyFileError
from daydream.wire.transport import TransportClient, TransportOptions

OPTIONS = TransportOptions(heartbeat_ivl_ms=200, heartbeat_timeout_ms=1000, reconnect_ivl_ms=50,
                           reconnect_ivl_max_ms=200, max_message_bytes=1 << 20)  # fmt: skip
STEPS = 16  # per chunk: 16 x 64x64x3 = 196 kB, above Ray's inline limit (100 kB): a chunk that
# travelled through Ray would be put into its object store
PNG = np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(24), np.uint8)  # a thumbnail's magic


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys")
    curve.create_keys(path, ["robot", "robot-new"])
    return path


def chunk(seq: int) -> dict[str, np.ndarray]:
    return {
        "image": np.full((STEPS, 64, 64, 3), seq % 256, np.uint8),
        "vector": np.full((STEPS, 3), seq, np.float32),
        "is_first": np.zeros(STEPS, bool),
    }


CHUNK_BYTES = sum(a.nbytes for a in chunk(0).values())


def connect(
    endpoint: str, key_dir: Path, actor: str = "robot-0", key: str = "robot"
) -> TransportClient:
    return TransportClient(endpoint, actor, key_file=key_dir / f"{key}.key_secret",
                           server_key_file=key_dir / "gateway.key", options=OPTIONS)  # fmt: skip


def stream(client: TransportClient, seqs: range, timeout: float = 30.0) -> list[dict]:
    """Send chunk ``seqs`` and wait until every one is acknowledged; the acks."""
    answers = send(client, seqs, timeout)
    assert all(m["type"] == "ack" for m in answers), answers
    return answers


def send(client: TransportClient, seqs: range, timeout: float = 30.0) -> list[dict]:
    """Send chunk ``seqs`` and wait until every one is answered; the acks and nacks."""
    pending, answered, answers = list(seqs), set(), []
    deadline = time.monotonic() + timeout
    while len(answered) < len(seqs):
        assert time.monotonic() < deadline, f"answered only {sorted(answered)}"
        while pending and client.send_chunk(pending[0], chunk(pending[0])):
            pending.pop(0)
        for msg in client.poll(10):
            if msg["type"] in ("ack", "nack"):
                answered.update(msg["seqs"])
                answers.append(msg)
    return answers


def object_store_created_bytes() -> int:
    """Bytes ever created in Ray's object store (every node's store statistics, summed)."""
    import ray
    from ray._private import internal_api

    state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
    return internal_api.get_memory_info_reply(state).store_stats.cumulative_created_bytes


def listening_pid(endpoint: str) -> int | None:
    """The process that holds the listening TCP socket of ``endpoint`` (Linux /proc)."""
    port = int(endpoint.rsplit(":", 1)[1])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                   for fd in os.listdir(f"/proc/{pid}/fd")):  # fmt: skip
                return int(pid)
        except OSError:  # gone, or not ours to read
            continue
    return None


def test_chunks_reach_the_replay_in_its_process_without_ray_s_object_store(
    ray_session, key_dir, tmp_path
):
    created = {}
    for mode in ("thread", "replay"):
        replay = RemoteReplay.start(capacity=100_000, directory=str(tmp_path / mode))
        gateway = GatewayRunner(mode, replay, "tcp://127.0.0.1:*", key_dir=key_dir,
                                options=OPTIONS)  # fmt: skip
        try:
            with connect(gateway.endpoint, key_dir) as client:
                stream(client, range(2))  # connected and warm
                before = object_store_created_bytes()
                stream(client, range(2, 22))
                created[mode] = object_store_created_bytes() - before
            assert replay.stats()["chunks"] == 22
        finally:
            gateway.stop()
            replay.close()
    # beside the driver, every batch of chunks was put into the object store on its way ...
    assert created["thread"] >= 20 * CHUNK_BYTES, created
    # ... in the replay's process, none was (less than one chunk: only small calls went by)
    assert created["replay"] < CHUNK_BYTES, created


def test_the_learner_reaches_the_gateway_in_the_replay_s_process(ray_session, key_dir, tmp_path):
    directory = tmp_path / "replay"
    replay = RemoteReplay.start(capacity=100_000, directory=str(directory))
    gateway = GatewayRunner("replay", replay, "tcp://127.0.0.1:*", key_dir=key_dir,
                            options=OPTIONS)  # fmt: skip
    try:
        # the socket the robots talk to belongs to the replay actor's process, not this one
        holder = listening_pid(gateway.endpoint)
        assert holder is not None and holder != os.getpid()
        assert Path(f"/proc/{holder}/cmdline").read_bytes().startswith(b"ray::ReplayHost")
        with connect(gateway.endpoint, key_dir) as client:
            gateway.set_pace(7)  # the learner's pace reaches the robots with every ack
            acks = stream(client, range(6))
            assert {a["behind"] for a in acks} == {7}
            # every acknowledged chunk was in the replay's files when its ack arrived
            assert sorted(Replay(10**6, directory=directory).keys()) == [
                ("robot-0", s) for s in range(6)
            ]
            weights = {"w": np.arange(5, dtype=np.float32)}
            gateway.publish_weights(weights, 3)  # through Ray once, to every robot
            assert client.request_weights(-1)
            got = wait_for_message(client, "weights")
            assert got["version"] == 3 and np.array_equal(got["params"]["w"], weights["w"])
            client.send({"type": "heartbeat", "actor": "robot-0", "episodes": [[1.5, 20]],
                         "policy_version": 3, "thumb": PNG})  # fmt: skip
            wait_for_message(client, "weights_info")
        reports = gateway.pop_reports()
        assert [(r["actor"], r["episodes"], r["policy_version"]) for r in reports] == [
            ("robot-0", [(1.5, 20, {})], 3)
        ]
        (robot,) = gateway.robots()
        assert robot["id"] == "robot-0" and robot["policy_version"] == 3
        assert gateway.thumbnail("robot-0") == (PNG.tobytes(), "image/png")
        stats = gateway.stats()
        assert stats["chunks_added"] == 6 and stats["weights_version"] == 3
        assert stats["weights_sent"] == 1
    finally:
        gateway.stop()
    assert listening_pid(gateway.endpoint) is None  # stopped: the port is free again
    assert replay.stats()["chunks"] == 6  # the replay itself stays for the learner
    replay.close()


def wait_for_message(client: TransportClient, kind: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in client.poll(10):
            if msg["type"] == kind:
                return msg
    raise AssertionError(f"no {kind} message within {timeout} s")


def test_a_stream_rebound_before_the_gateway_starts_takes_only_the_new_robot_s_chunks(
    ray_session, key_dir, tmp_path
):
    """``daydream learner --rebind STREAM=NEW.key`` rebinds in the replay actor, then starts the
    gateway in it (start_learner): the gateway refuses the old key and takes the new one."""
    directory = str(tmp_path / "replay")
    replay = RemoteReplay.start(capacity=100_000, directory=directory)
    gateway = GatewayRunner("replay", replay, "tcp://127.0.0.1:*", key_dir=key_dir,
                            options=OPTIONS)  # fmt: skip
    with connect(gateway.endpoint, key_dir, "arm", "robot") as old:
        stream(old, range(2))  # the stream belongs to the old robot's key
    gateway.stop()
    replay.close()
    replay = RemoteReplay.start(capacity=100_000, directory=directory)  # the learner restarted
    new_key = curve.load_keypair(key_dir / "robot-new.key")[0].decode()
    old_key = curve.load_keypair(key_dir / "robot.key")[0].decode()
    assert replay.rebind("arm", new_key) == old_key
    gateway = GatewayRunner("replay", replay, "tcp://127.0.0.1:*", key_dir=key_dir,
                            options=OPTIONS)  # fmt: skip
    try:
        with connect(gateway.endpoint, key_dir, "arm", "robot") as old:
            refused = send(old, range(2, 4))
        assert {m["type"] for m in refused} == {"nack"}
        assert all(m["reason"].startswith("stream_owned") for m in refused)
        with connect(gateway.endpoint, key_dir, "arm", "robot-new") as new:
            stream(new, range(2, 4))
        assert sorted(replay.keys()) == [("arm", s) for s in range(4)]
        assert gateway.stats()["rejected_stream_owned"] == 2
    finally:
        gateway.stop()
        replay.close()


def test_a_gateway_that_cannot_start_in_the_replay_says_why_in_one_line(ray_session, tmp_path):
    replay = RemoteReplay.start(capacity=1000)
    try:
        with pytest.raises(KeyFileError) as raised:  # as in a thread: no Ray traceback around it
            GatewayRunner("replay", replay, "tcp://127.0.0.1:*", key_dir=tmp_path / "no-keys")
        assert "\n" not in str(raised.value) and "gateway.key_secret" in str(raised.value)
        with pytest.raises(ValueError, match="learner.gateway must be one of replay, thread, ray"):
            GatewayRunner("elsewhere", replay, "tcp://127.0.0.1:*")
    finally:
        replay.close()


def test_stopping_the_gateway_after_its_replay_actor_died_says_so_and_does_not_raise(
    ray_session, key_dir, tmp_path, capsys
):
    """A learner stopped with its process group (Ctrl-C in a terminal, systemd's stop) can find
    the replay actor, and the gateway in it, already gone: its shutdown says so and goes on
    (it failed with Ray's ActorUnavailableError and exit status 1)."""
    import ray

    replay = RemoteReplay.start(capacity=1_000, directory=str(tmp_path / "replay"))
    gateway = GatewayRunner("replay", replay, "tcp://127.0.0.1:*", key_dir=key_dir,
                            options=OPTIONS)  # fmt: skip
    ray.kill(replay.handle)
    gateway.stop()
    assert "the replay actor, and the gateway in it, was already gone" in capsys.readouterr().out


def test_a_learner_whose_replay_actor_died_still_checkpoints_on_close(
    ray_session, tmp_path, capsys
):
    """Stopped with its process group, the learner can find the replay actor already gone: its
    last reports and log line are lost, but the checkpoint is written and close returns (it
    raised ReplayGone before writing the checkpoint)."""
    import ray

    from daydream.core.config import load_config
    from daydream.runtime.learner import start_learner
    from tests.tiny import tiny_model

    config = load_config("configs/pendulum.yaml", overrides=[
        *tiny_model(units=32), f"logdir={tmp_path}", "transport.curve=false"])  # fmt: skip
    learner = start_learner(config, "tcp://127.0.0.1:*")
    ray.kill(learner.replay.handle)
    learner.close()
    assert (tmp_path / "checkpoint.pt").is_file()
    assert "the replay actor was already gone" in capsys.readouterr().out


def test_a_learner_stopped_with_its_process_group_returns_though_the_replay_went_first(
    ray_session, tmp_path
):
    """Ctrl-C or a SIGTERM to the process group reaches the replay actor's process too: the
    learner's loop can find the replay gone a moment before its own signal handler asks it to
    stop. That is a stop, not a failure: ``run`` returns (exit 0) with the checkpoint written."""
    import threading

    import ray

    from daydream.core.config import load_config
    from daydream.runtime.learner import start_learner
    from tests.tiny import tiny_model

    config = load_config("configs/pendulum.yaml", overrides=[
        *tiny_model(units=32), f"logdir={tmp_path}", "transport.curve=false",
        "learner.log_every_s=0.05"])  # fmt: skip
    learner = start_learner(config, "tcp://127.0.0.1:*")
    ray.kill(learner.replay.handle)
    threading.Timer(0.3, learner.stop).start()  # the signal handler, a little later
    counters = learner.run()
    assert counters["updates"] == 0
    assert (tmp_path / "checkpoint.pt").is_file()


def test_a_learner_whose_replay_dies_without_a_stop_still_fails(ray_session, tmp_path):
    import ray

    from daydream.core.config import load_config
    from daydream.replay.remote import ReplayGone
    from daydream.runtime.learner import start_learner
    from tests.tiny import tiny_model

    config = load_config("configs/pendulum.yaml", overrides=[
        *tiny_model(units=32), f"logdir={tmp_path}", "transport.curve=false",
        "learner.log_every_s=0.05"])  # fmt: skip
    learner = start_learner(config, "tcp://127.0.0.1:*")
    ray.kill(learner.replay.handle)
    with pytest.raises(ReplayGone):
        learner.run()
    assert (tmp_path / "checkpoint.pt").is_file()  # close() ran on the way out
