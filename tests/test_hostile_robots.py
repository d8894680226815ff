"""Robust against its own robots: a gateway that refuses implausible values and sequence
numbers with counted reasons, outboxes that drop what is refused for good, and streams that
belong to the robot key that created them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from daydream.core.spaces import Space
from daydream.replay.owners import FILENAME as OWNERS_FILE
from daydream.replay.service import ReplayService
from daydream.replay.store import MAX_SEQ_AHEAD, Replay
from daydream.wire import curve
from daydream.wire.gateway import Gateway
from daydream.wire.outbox import SEQ_BLOCK, Outbox
from daydream.wire.transport import TransportClient, TransportOptions

OPTIONS = TransportOptions(
    heartbeat_ivl_ms=200, heartbeat_timeout_ms=1000, reconnect_ivl_ms=50,
    reconnect_ivl_max_ms=200, max_message_bytes=256 * 1024,
)  # fmt: skip
T = 4
SPACES = {  # a record layout (core.spaces.record_spaces): observation, action, intervention
    "vector": Space((3,), np.float32),
    "reward": Space((), np.float32),
    "is_first": Space((), bool),
    "is_last": Space((), bool),
    "is_terminal": Space((), bool),
    "action": Space((2,), np.float32, -1.0, 1.0),
    "intervention": Space((), np.float32, 0.0, 1.0),
}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys")
    curve.create_keys(path, ["robot-a", "robot-b"])  # two robots, both allowed
    return path


def public_key(key_dir, name: str) -> str:
    return curve.load_keypair(key_dir / f"{name}.key")[0].decode()


def record_chunk(value: float = 0.0, spaces: dict = SPACES) -> dict[str, np.ndarray]:
    chunk = {k: np.zeros((T, *s.shape), s.dtype) for k, s in spaces.items()}
    chunk["vector"][:] = value
    chunk["is_first"][0] = True
    if spaces["action"].discrete:
        chunk["action"][:, 0] = 1.0
    return chunk


def connect(gateway: Gateway, key_dir, stream: str, key: str = "robot-a") -> TransportClient:
    return TransportClient(
        gateway.endpoint, stream, key_file=key_dir / f"{key}.key_secret",
        server_key_file=key_dir / "gateway.key", options=OPTIONS,
    )  # fmt: skip


def answers(client: TransportClient, sends: list[tuple[int, dict]], count: int) -> list[dict]:
    """Send chunks ``(seq, chunk)`` and collect acks/nacks until ``count`` seqs are answered."""
    got: list[dict] = []
    deadline = time.monotonic() + 10
    pending = list(sends)
    while time.monotonic() < deadline:
        while pending and client.send_chunk(*pending[0]):
            pending.pop(0)
        got += [m for m in client.poll(10) if m["type"] in ("ack", "nack")]
        if sum(len(m["seqs"]) for m in got) >= count:
            return got
    raise AssertionError(f"only {got} answered of {count}")


def by_seq(got: list[dict]) -> dict[int, tuple[str, str]]:
    return {s: (m["type"], m.get("reason", "")) for m in got for s in m["seqs"]}


@pytest.fixture
def gateway(request, key_dir, tmp_path):
    """The gateway beside a replay in this process (``thread``) or inside the replay actor's
    process (``replay``: ask for it with ``parametrize("gateway", [...], indirect=True)``)."""
    from daydream.replay.remote import RemoteReplay
    from daydream.runtime.learner import GatewayRunner

    mode = getattr(request, "param", "thread")
    if mode == "replay":
        request.getfixturevalue("ray_session")
        replay = RemoteReplay.start(capacity=10_000, directory=str(tmp_path / "replay"))
    else:
        replay = ReplayService(capacity=10_000, directory=tmp_path / "replay")
    gw = GatewayRunner(mode, replay, "tcp://127.0.0.1:*", key_dir=key_dir, spaces=SPACES,
                       options=OPTIONS)  # fmt: skip
    yield gw
    gw.stop()
    replay.close()


# ---------------------------------------------------------------- values


def nan_reward(c):
    c["reward"][2] = np.nan


def action_outside(c):
    c["action"][1] = [1.5, 0.0]


def half_intervention(c):
    c["intervention"][3] = 0.5


def infinite_sensor(c):
    c["vector"][0, 1] = -np.inf


@pytest.mark.parametrize(
    "gateway, poison, reason",
    [("thread", nan_reward, "non_finite"), ("thread", infinite_sensor, "non_finite"),
     ("thread", action_outside, "out_of_bounds"), ("thread", half_intervention, "not_boolean"),
     ("replay", nan_reward, "non_finite")],
    indirect=["gateway"],
)  # fmt: skip
def test_an_implausible_value_is_nacked_for_good_with_its_reason_and_counted(
    gateway, key_dir, poison, reason
):
    bad = record_chunk(1.0)
    poison(bad)
    with connect(gateway, key_dir, "ur5-0") as client:
        got = answers(client, [(0, record_chunk(0.0)), (1, bad), (2, record_chunk(2.0))], 3)
    answered = by_seq(got)
    assert answered[0] == ("ack", "") and answered[2] == ("ack", "")
    kind, why = answered[1]
    assert kind == "nack" and why.split(":")[0] == reason, why
    assert gateway.replay.keys() == [("ur5-0", 0), ("ur5-0", 2)]  # never stored
    stats = gateway.stats()
    assert stats[f"rejected_{reason}"] == 1 and stats["nacks_sent"] == 1
    assert stats["last_refusal"].startswith(f"ur5-0: {reason}")


def test_a_discrete_action_that_is_not_one_hot_is_nacked(key_dir, tmp_path):
    spaces = {**SPACES, "action": Space((3,), np.float32, discrete=True)}
    gw = Gateway(ReplayService(capacity=1000), "tcp://127.0.0.1:*", key_dir=key_dir,
                 spaces=spaces, options=OPTIONS)  # fmt: skip
    gw.start()
    try:
        bad = record_chunk(spaces=spaces)
        bad["action"][2] = [1.0, 1.0, 0.0]
        with connect(gw, key_dir, "ur5-0") as client:
            got = answers(client, [(0, record_chunk(spaces=spaces)), (1, bad)], 2)
        assert by_seq(got)[0][0] == "ack" and by_seq(got)[1][1].startswith("bad_one_hot")
        assert gw.stats()["rejected_bad_one_hot"] == 1
    finally:
        gw.stop()


def test_without_declared_spaces_non_finite_values_are_still_refused(key_dir):
    gw = Gateway(ReplayService(capacity=1000), "tcp://127.0.0.1:*", key_dir=key_dir,
                 options=OPTIONS)  # gateway.validate: false  # fmt: skip
    gw.start()
    try:
        bad = record_chunk()
        nan_reward(bad)
        with connect(gw, key_dir, "ur5-0") as client:
            got = answers(client, [(0, bad)], 1)
        assert by_seq(got)[0][1].startswith("non_finite: reward")
    finally:
        gw.stop()


def test_a_nacked_chunk_is_dropped_never_resent_counted_by_reason_and_warned(tmp_path, caplog):
    now = [0.0]
    box = Outbox(tmp_path, max_memory=2, resend_after=5.0, clock=lambda: now[0])
    for seq in range(4):  # two in memory, two spilled
        box.put(seq, b"chunk %d" % seq)
    assert box.pump(lambda data: True) == 2
    with caplog.at_level(logging.WARNING, logger="daydream.wire.outbox"):
        box.handle({"type": "nack", "actor": "ur5-0", "seqs": [1, 3],
                    "reason": "non_finite: reward has 1 NaN or infinite values"})  # fmt: skip
        box.handle({"type": "nack", "actor": "ur5-0", "seqs": [1], "reason": "non_finite: x"})
    now[0] = 100.0  # long past resend_after: only what was not refused is due
    assert [seq for seq, _ in box.due()] == [0, 2]
    assert not (tmp_path / f"{3:016d}.msg").exists()  # a spilled one goes from disk: for good
    stats = box.stats()
    assert stats["nacked"] == 2 and stats["nack_reasons"] == {"non_finite": 2}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # the repeated nack of seq 1 holds nothing: nothing to say
    assert "non_finite" in warnings[0] and "sensors" in warnings[0], warnings


# ---------------------------------------------------------------- sequence numbers


@pytest.mark.parametrize("gateway", ["thread", "replay"], indirect=True)
def test_implausible_sequence_numbers_are_refused_with_counted_reasons(gateway, key_dir):
    hostile = [-(2**63), -5, 2**62, 2**64 - 1]
    with connect(gateway, key_dir, "ur5-0") as client:
        got = answers(client, [(s, record_chunk(s)) for s in (0, 1, 2, *hostile)], 7)
    answered = by_seq(got)
    assert [answered[s][0] for s in (0, 1, 2)] == ["ack"] * 3
    reasons = {s: answered[s][1].split(":")[0] for s in hostile}
    assert reasons == {-(2**63): "bad_seq", -5: "bad_seq", 2**62: "seq_ahead",
                       2**64 - 1: "bad_seq"}  # fmt: skip
    assert sorted(gateway.replay.keys()) == [("ur5-0", s) for s in range(3)]
    stats = gateway.stats()
    assert stats["rejected_bad_seq"] == 3 and stats["rejected_seq_ahead"] == 1


def test_a_restarted_actor_s_sequence_jump_is_plausible_and_one_far_beyond_is_not(tmp_path):
    assert MAX_SEQ_AHEAD >= 1000 * SEQ_BLOCK  # the bound is defined from the outbox's block
    box = Outbox(tmp_path / "outbox")
    replay = Replay(capacity=1000)
    for _ in range(3):
        seq = box.allocate_seq()
        assert replay.add("ur5-0", seq, record_chunk())
    restarted = Outbox(tmp_path / "outbox")  # crashed: goes on after its reservation
    jump = restarted.allocate_seq()
    assert jump > seq + SEQ_BLOCK // 2
    assert replay.add("ur5-0", jump, record_chunk())
    with pytest.raises(ValueError, match="seq_ahead"):
        replay.add("ur5-0", jump + MAX_SEQ_AHEAD + 1, record_chunk())
    assert replay.add("ur5-0", jump + MAX_SEQ_AHEAD, record_chunk())  # the bound itself: fine
    assert replay.add("new-stream", 123_456_789, record_chunk())  # a new stream starts anywhere


# ---------------------------------------------------------------- stream binding


@pytest.mark.parametrize("gateway", ["thread", "replay"], indirect=True)
def test_one_robot_cannot_write_into_another_robot_s_stream(gateway, key_dir, tmp_path):
    """The incident: robot B, with its own allowed key, sent chunks naming robot A's stream;
    they were stored in A's stream and A's own chunks were then dropped as duplicates."""
    with connect(gateway, key_dir, "ur5-0", "robot-a") as a, \
            connect(gateway, key_dir, "ur5-0", "robot-b") as b:  # fmt: skip
        got_a = answers(a, [(s, record_chunk(100 + s)) for s in range(5)], 5)
        got_b = answers(b, [(s, record_chunk(200 + s)) for s in range(3, 9)], 6)
        got_a += answers(a, [(s, record_chunk(100 + s)) for s in range(5, 10)], 5)
    assert {kind for kind, _ in by_seq(got_a).values()} == {"ack"}
    assert all(
        kind == "nack" and why.startswith("stream_owned") for kind, why in by_seq(got_b).values()
    )
    assert "robot key" in by_seq(got_b)[3][1]
    assert sorted(gateway.replay.keys()) == [("ur5-0", s) for s in range(10)]
    stored = gateway.replay.sample(500, 1)["vector"][:, 0, 0]  # whose data is in ur5-0: A's
    assert set(stored) == {100.0 + s for s in range(10)}
    stats = gateway.stats()
    assert stats["rejected_stream_owned"] == 6 and stats.get("chunks_duplicate", 0) == 0
    owners = json.loads((tmp_path / "replay" / OWNERS_FILE).read_text())
    assert owners == {"ur5-0": public_key(key_dir, "robot-a")}


def test_a_stream_stays_bound_across_a_restart_and_is_rebound_only_on_purpose(key_dir, tmp_path):
    def start():
        replay = ReplayService(capacity=10_000, directory=tmp_path / "replay")
        gw = Gateway(replay, "tcp://127.0.0.1:*", key_dir=key_dir, spaces=SPACES,
                     options=OPTIONS)  # fmt: skip
        gw.start()
        return gw

    gw = start()
    with connect(gw, key_dir, "ur5-0", "robot-a") as a:
        answers(a, [(0, record_chunk())], 1)
    gw.stop()
    gw = start()  # the learner restarted: the binding came back from the replay directory
    try:
        with connect(gw, key_dir, "ur5-0", "robot-b") as b:
            assert by_seq(answers(b, [(1, record_chunk())], 1))[1][1].startswith("stream_owned")
            assert by_seq(answers(b, [(0, record_chunk())], 1))[0][0] == "nack"  # no "duplicate"
            # robot A's computer is replaced by B's: rebind on purpose
            before = gw.replay.rebind("ur5-0", public_key(key_dir, "robot-b"))
            assert before == public_key(key_dir, "robot-a")
            got = answers(b, [(1, record_chunk())], 1)
        assert by_seq(got)[1][0] == "ack"
        with connect(gw, key_dir, "ur5-0", "robot-a") as a, \
                connect(gw, key_dir, "ur5-1", "robot-a") as a1:  # fmt: skip
            assert by_seq(answers(a, [(2, record_chunk())], 1))[2][1].startswith("stream_owned")
            assert by_seq(answers(a1, [(0, record_chunk())], 1))[0][0] == "ack"  # a new stream
    finally:
        gw.stop()


def test_without_curve_there_is_no_key_and_nothing_is_bound(tmp_path):
    replay = ReplayService(capacity=1000, directory=tmp_path / "replay")
    gw = Gateway(replay, "tcp://127.0.0.1:*", curve=False, spaces=SPACES, options=OPTIONS)
    gw.start()
    try:
        clients = [TransportClient(gw.endpoint, "ur5-0", curve=False, options=OPTIONS)
                   for _ in range(2)]  # fmt: skip
        for i, client in enumerate(clients):
            assert by_seq(answers(client, [(i, record_chunk())], 1))[i][0] == "ack"
            client.close()
        assert replay.stats()["bound_streams"] == 0
        assert not (tmp_path / "replay" / OWNERS_FILE).exists()
    finally:
        gw.stop()


def test_the_learner_s_rebind_option_reads_the_new_robot_s_public_key_file(key_dir, tmp_path):
    from daydream.cli.learner import parse_rebind

    new_key = key_dir / "robot-b.key"
    assert parse_rebind([f"ur5-0={new_key}"]) == {"ur5-0": public_key(key_dir, "robot-b")}
    repo = Path(__file__).resolve().parents[1]
    missing = tmp_path / "missing.key"
    for bad, said in (("ur5-0", "STREAM=KEYFILE"), (f"ur5-0={missing}", str(missing))):
        result = subprocess.run(
            [sys.executable, "-m", "daydream", "learner", "--config", "configs/pendulum.yaml",
             "--logdir", str(tmp_path), "--rebind", bad],
            capture_output=True, text=True, timeout=120, cwd=repo,
        )  # fmt: skip
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("daydream learner: ") and said in result.stderr


def test_reported_episode_figures_are_kept_only_when_named_and_finite():
    from daydream.wire.gateway import MAX_EPISODE_FIGURES, read_episode

    kept = {"final_distance": 0.01}
    assert read_episode([-3.5, 50, kept]) == (-3.5, 50, kept)
    assert read_episode([-3.5, 50]) == (-3.5, 50, {})
    figures = {"ok": 1.0, "Bad-Name": 2.0, "nan": float("nan"), "flag": True, "x" * 40: 1.0}
    figures["step"] = 9.0  # the learner's own key
    assert read_episode([-1.0, 2, figures]) == (-1.0, 2, {"ok": 1.0})
    many = {f"f{i}": float(i) for i in range(50)}
    assert len(read_episode([0.0, 1, many])[2]) == MAX_EPISODE_FIGURES
    for bad in ([float("inf"), 3], [1.0, 2, [1]], [1.0], "x", [1.0, 2, {}, 4], [True, 2]):
        assert read_episode(bad) is None
