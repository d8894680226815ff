"""The replay's disk writes happen outside its lock: the learner samples while a batch is being
written, several batches are written at once and still enter the replay in the order they were
accepted, a failed write loses nothing that was acknowledged, and a chunk resent while its first
copy is being written is neither stored twice nor answered twice (no Ray, no sockets)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from daydream.replay import store
from daydream.replay.service import ReplayService
from daydream.replay.store import Replay
from daydream.wire.gateway import InlineSink
from tests.test_replay import make_chunk

WAIT = 10.0  # seconds any step may take before the test calls it stuck


class WriteGates:
    """Replaces the replay's ``atomic_write``: a write of a gated file waits until its gate
    opens (then raises the error set for it, once); ``most_at_once``: the most writes that
    were under way at the same time."""

    def __init__(self, monkeypatch) -> None:
        self._real = store.atomic_write
        self._lock = threading.Lock()
        self.gates: dict[str, threading.Event] = {}
        self.errors: dict[str, BaseException] = {}
        self.started: dict[str, threading.Event] = {}
        self.busy = 0
        self.most_at_once = 0
        monkeypatch.setattr(store, "atomic_write", self._write)

    def gate(self, file_id: int, error: BaseException | None = None) -> threading.Event:
        name = f"{file_id:012d}.chunk"
        self.gates[name] = threading.Event()
        self.started[name] = threading.Event()
        if error is not None:
            self.errors[name] = error
        return self.gates[name]

    def wait_started(self, file_id: int) -> None:
        assert self.started[f"{file_id:012d}.chunk"].wait(WAIT), f"file {file_id} never written"

    def _write(self, path, data, direct=False):
        name = Path(path).name
        with self._lock:
            self.busy += 1
            self.most_at_once = max(self.most_at_once, self.busy)
        try:
            if name in self.gates:
                self.started[name].set()
                assert self.gates[name].wait(WAIT), f"{name}: gate never opened"
                if name in self.errors:  # once: a later file may get the same name
                    del self.gates[name]
                    raise self.errors.pop(name)
            return self._real(path, data, direct=direct)
        finally:
            with self._lock:
                self.busy -= 1


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread; a function that waits for its result (or exception)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the waiter
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result(timeout: float = WAIT):
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{fn.__name__} still running after {timeout} s")
        if "error" in out:
            raise out["error"]
        return out["value"]

    result.thread = thread  # type: ignore[attr-defined]
    return result


def batch(stream: str, seqs) -> list[tuple]:
    return [(stream, s, make_chunk(0, s)) for s in seqs]


def test_the_learner_samples_while_a_batch_is_being_written(tmp_path, monkeypatch):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    assert service.add_batch(batch("a", range(4))) == [True] * 4  # file 0
    gates = WriteGates(monkeypatch)
    gate = gates.gate(4)  # the next batch's file: its first chunk's insertion index
    writing = in_thread(service.add_batch, batch("a", [4]))
    gates.wait_started(4)
    sampled = in_thread(service.sample, 2, 8)
    assert sampled(timeout=5.0)["step"].shape == (2, 8)  # not held up by the disk
    assert ("a", 4) not in service.keys()  # not in the replay before it is on disk
    gate.set()
    assert writing() == [True]
    assert ("a", 4) in service.keys()


def test_batches_written_at_once_enter_the_replay_in_the_order_they_were_accepted(
    tmp_path, monkeypatch
):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    first_gate = gates.gate(0)
    first = in_thread(service.add_batch, batch("a", range(0, 3)))
    gates.wait_started(0)
    second = in_thread(service.add_batch, batch("a", range(3, 6)))  # written while the first is
    second.thread.join(0.5)
    assert second.thread.is_alive()  # on disk, but waits for the first to enter before it
    assert service.keys() == []
    first_gate.set()
    assert first() == [True] * 3 and second() == [True] * 3
    assert gates.most_at_once == 2
    assert service.keys() == [("a", s) for s in range(6)]
    reloaded = Replay(capacity=10_000, directory=tmp_path)
    assert reloaded.keys() == [("a", s) for s in range(6)]
    assert sorted(p.name for p in tmp_path.glob("*.chunk")) == [
        "000000000000.chunk",
        "000000000003.chunk",
    ]


def test_a_failed_write_loses_only_its_own_unacknowledged_chunks(tmp_path, monkeypatch):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    gates.gate(0, OSError(5, "Input/output error")).set()
    first = in_thread(service.add_batch, batch("a", range(0, 3)))
    with pytest.raises(OSError, match="Input/output"):
        first()
    assert service.add_batch(batch("a", range(3, 6))) == [True] * 3
    assert service.add_batch(batch("a", range(0, 3))) == [True] * 3  # the robot's resend
    assert sorted(service.keys()) == [("a", s) for s in range(6)]
    assert sorted(Replay(capacity=10_000, directory=tmp_path).keys()) == [
        ("a", s) for s in range(6)
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_later_batch_waiting_on_a_failed_one_still_enters(tmp_path, monkeypatch):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    first_gate = gates.gate(0, OSError(28, "No space left on device"))
    first = in_thread(service.add_batch, batch("a", range(0, 2)))
    gates.wait_started(0)
    second = in_thread(service.add_batch, batch("b", range(0, 2)))
    second.thread.join(0.5)
    assert second.thread.is_alive()  # written, waiting for the first to enter or fail
    first_gate.set()
    with pytest.raises(OSError, match="No space"):
        first()
    assert second() == [True, True]
    assert service.keys() == [("b", 0), ("b", 1)]


def test_a_chunk_resent_while_its_first_copy_is_written_is_stored_once_and_not_answered(
    tmp_path, monkeypatch
):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    gate = gates.gate(0)
    first = in_thread(service.add_batch, batch("a", [0, 1]))
    gates.wait_started(0)
    # The resend of seq 1 comes while seq 1 is on its way to disk: neither stored again nor
    # answered (the first copy's ack answers it; if that write fails, the robot resends).
    second = in_thread(service.add_batch, batch("a", [1, 2]))
    second.thread.join(0.5)
    assert second.thread.is_alive()  # seq 2 waits for the first batch to enter
    gate.set()
    assert first() == [True, True]
    assert second() == [None, True]
    assert service.keys() == [("a", 0), ("a", 1), ("a", 2)]
    reloaded = Replay(capacity=10_000, directory=tmp_path)
    assert reloaded.keys() == [("a", 0), ("a", 1), ("a", 2)]
    assert reloaded.stats()["duplicates"] == 0


def test_a_resend_of_a_chunk_whose_first_write_failed_is_stored(tmp_path, monkeypatch):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    gate = gates.gate(0, OSError(5, "Input/output error"))
    first = in_thread(service.add_batch, batch("a", [0]))
    gates.wait_started(0)
    second = in_thread(service.add_batch, batch("a", [0, 1]))  # 0: in flight, not answered
    second.thread.join(0.5)
    assert second.thread.is_alive()  # seq 1 waits for the first batch to enter or fail
    gate.set()
    with pytest.raises(OSError):
        first()
    assert second() == [None, True]
    assert service.add_batch(batch("a", [0])) == [True]  # the robot's next resend
    assert sorted(service.keys()) == [("a", 0), ("a", 1)]


def test_the_seq_check_sees_chunks_still_being_written(tmp_path, monkeypatch):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    gate = gates.gate(0)
    first = in_thread(service.add_batch, batch("a", [0]))  # the stream's first chunk
    gates.wait_started(0)
    far = store.MAX_SEQ_AHEAD + 1
    (result,) = in_thread(service.add_batch, batch("a", [far]))()  # while seq 0 is written
    assert result.startswith("seq_ahead:"), result
    gate.set()
    assert first() == [True]


def answers(sink: InlineSink, tickets: list[int]) -> dict:
    answered: dict = {}
    deadline = time.monotonic() + WAIT
    while len(answered) < len(tickets):
        assert time.monotonic() < deadline, f"answered only {sorted(answered)}"
        answered.update(sink.done(tickets, block=True, timeout=WAIT))
    return answered


def test_batches_queued_behind_a_write_go_to_disk_as_one_file_each_answered(
    tmp_path, monkeypatch
):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    first_gate = gates.gate(0)
    sink = InlineSink(service, group_chunks=4)
    try:
        first = sink.submit(batch("a", range(0, 2)))
        gates.wait_started(0)
        queued = [sink.submit(batch("a", range(s, s + 2))) for s in (2, 4, 6)]
        first_gate.set()
        answered = answers(sink, [first, *queued])
    finally:
        first_gate.set()
        sink.close()
    assert answered == {t: [True, True] for t in [first, *queued]}
    assert service.keys() == [("a", s) for s in range(8)]
    # the two batches queued first as one file (group_chunks 4), the third as the next
    files = sorted(p.name for p in tmp_path.glob("*.chunk"))
    assert files == ["000000000000.chunk", "000000000002.chunk", "000000000006.chunk"]


def test_every_batch_of_a_group_whose_write_failed_gets_the_error(tmp_path, monkeypatch):
    service = ReplayService(capacity=10_000, directory=tmp_path)
    gates = WriteGates(monkeypatch)
    first_gate = gates.gate(0)
    gates.gate(2, OSError(28, "No space left on device")).set()
    sink = InlineSink(service)
    try:
        first = sink.submit(batch("a", range(0, 2)))
        gates.wait_started(0)
        queued = [sink.submit(batch("a", range(s, s + 2))) for s in (2, 4)]
        first_gate.set()
        answered = answers(sink, [first, *queued])
    finally:
        first_gate.set()
        sink.close()
    assert answered[first] == [True, True]
    assert all(isinstance(answered[t], OSError) for t in queued)  # no acks: the robots resend
    assert service.keys() == [("a", 0), ("a", 1)]


def send(client, seq: int) -> None:
    deadline = time.monotonic() + WAIT
    while not client.send_chunk(seq, make_chunk(0, seq)):  # False until connected
        assert time.monotonic() < deadline, "the gateway never took the chunk"
        time.sleep(0.01)


def test_a_gateway_beside_the_driver_answers_a_chunk_sent_twice_once(ray_session, tmp_path):
    """Through Ray (``learner.gateway: thread``) several batches reach the replay at once: a
    resend that arrives while its first copy is being written is not answered (not nacked:
    that would drop it for good if the first write then failed); the first copy's ack is."""
    import ray

    from daydream.replay.remote import RemoteReplay
    from daydream.wire.gateway import Gateway
    from daydream.wire.transport import TransportClient

    flags = tmp_path / "flags"
    flags.mkdir()

    def hold_the_first_file(replay_host, flags: str) -> None:  # runs in the replay's process
        import time as clock
        from pathlib import Path as P

        from daydream.replay import store as replay_store

        real = replay_store.atomic_write

        def held(path, data, direct=False):
            if P(path).name == "000000000000.chunk":
                (P(flags) / "started").touch()
                while not (P(flags) / "go").exists():
                    clock.sleep(0.01)
            return real(path, data, direct=direct)

        replay_store.atomic_write = held

    replay = RemoteReplay.start(capacity=10_000, directory=str(tmp_path / "replay"))
    ray.get(replay.handle.__ray_call__.remote(hold_the_first_file, str(flags)))
    gateway = Gateway(replay, "tcp://127.0.0.1:*", curve=False, max_batch=1)
    gateway.start()
    client = TransportClient(gateway.endpoint, "ur5-0", curve=False)
    try:
        send(client, 0)  # held at the disk
        deadline = time.monotonic() + WAIT
        while not (flags / "started").exists():
            assert time.monotonic() < deadline, "the first file was never written"
            time.sleep(0.01)
        send(client, 0)  # the resend, while the first copy is being written
        send(client, 1)
        answered: list[dict] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # nothing is answered before the first file is
            answered += [m for m in client.poll(50) if m["type"] in ("ack", "nack")]
        assert answered == [] and gateway.stats()["chunks_being_written"] == 1
        (flags / "go").touch()
        deadline = time.monotonic() + WAIT
        while sum(len(m["seqs"]) for m in answered) < 2 and time.monotonic() < deadline:
            answered += [m for m in client.poll(50) if m["type"] in ("ack", "nack")]
        time.sleep(0.3)  # a wrong further answer would come now
        answered += [m for m in client.poll(50) if m["type"] in ("ack", "nack")]
        assert [(m["type"], m["seqs"]) for m in answered] == [("ack", [0]), ("ack", [1])]
        assert replay.keys() == [("ur5-0", 0), ("ur5-0", 1)]
    finally:
        (flags / "go").touch()
        client.close()
        gateway.stop()
        replay.close()
