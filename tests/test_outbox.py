"""Outbox: resend until acked, bounded memory, spill to disk during an outage, disk bound."""

from __future__ import annotations

from daydream.wire.outbox import SEQ_BLOCK, Outbox


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Link:
    """A fake TransportClient.send: up or down, records what went through."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        if self.up:
            self.sent.append(data)
        return self.up


def payload(seq: int, size: int = 100) -> bytes:
    return seq.to_bytes(4, "little") * (size // 4)


def seq_of(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


def test_unacknowledged_chunks_are_resent_after_the_timeout_and_acked_ones_forgotten():
    clock, link = Clock(), Link()
    box = Outbox(resend_after=5.0, clock=clock)
    for seq in range(3):
        box.put(seq, payload(seq))
    assert box.pump(link.send) == 3
    assert box.pump(link.send) == 0  # not due again yet
    box.ack([0, 2])
    clock.t = 5.0
    assert box.pump(link.send) == 1 and seq_of(link.sent[-1]) == 1
    box.ack([1, 1, 99])  # repeated and unknown acks are harmless
    assert len(box) == 0 and box.stats()["acked"] == 3 and box.stats()["resent"] == 1


def test_outage_spills_to_disk_and_nothing_is_lost(tmp_path):
    clock, link = Clock(), Link()
    box = Outbox(tmp_path, max_memory=4, resend_after=1.0, clock=clock)
    link.up = False
    for seq in range(50):  # produced while the link is down
        box.put(seq, payload(seq))
        box.pump(link.send)
    stats = box.stats()
    assert stats["in_memory"] == 4 and stats["on_disk"] == 46
    assert len(list(tmp_path.glob("*.msg"))) == 46
    link.up = True
    delivered: set[int] = set()
    for _ in range(100):  # the link is back: send, get acks, refill from disk
        clock.t += 1.0
        box.pump(link.send)
        seqs = [seq_of(d) for d in link.sent]
        link.sent.clear()
        delivered.update(seqs)
        box.ack(seqs)
        if not len(box):
            break
    assert delivered == set(range(50))
    assert not list(tmp_path.glob("*.msg"))


def test_memory_stays_bounded_while_the_link_is_down(tmp_path):
    box = Outbox(tmp_path, max_memory=8)
    for seq in range(1000):
        box.put(seq, payload(seq, 1000))
    assert box.stats()["in_memory"] == 8 and box.stats()["on_disk"] == 992


def test_disk_bound_drops_the_oldest_spilled_chunks_with_a_warning(tmp_path, caplog):
    box = Outbox(tmp_path, max_memory=2, max_disk_bytes=1000)
    for seq in range(30):
        box.put(seq, payload(seq, 100))
    stats = box.stats()
    assert stats["disk_bytes"] <= 1000 and stats["on_disk"] == 10
    assert stats["dropped"] == 18
    assert "link has been down too long" in caplog.text
    box.ack([0, 1])  # memory room: the oldest surviving spilled chunks come back, in order
    assert [seq for seq, _ in box.due()] == [20, 21]


def test_spilled_chunks_and_sequence_numbers_survive_an_actor_restart(tmp_path):
    box = Outbox(tmp_path, max_memory=1)
    seqs = [box.allocate_seq() for _ in range(5)]
    for seq in seqs:
        box.put(seq, payload(seq))
    again = Outbox(tmp_path, max_memory=1)
    assert len(again) == 4  # the spilled ones (memory is lost with the process)
    assert again.allocate_seq() >= SEQ_BLOCK  # never reuses a number the old process used
    assert [seq for seq, _ in again.due()] == [1]


def test_nack_drops_chunks_for_good(caplog):
    box = Outbox()
    box.put(0, payload(0))
    assert box.handle({"type": "nack", "seqs": [0], "reason": "image: uint8 differs"})
    assert len(box) == 0 and "refused" in caplog.text
    assert not box.handle({"type": "weights_info", "version": 3})
