"""The quadruped board's serial protocol: frames round-trip; corrupted, truncated and
garbage bytes are counted and dropped, never decoded into a command."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from robots import protocol as P

floats12 = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=12, max_size=12
).map(lambda v: np.asarray(v, np.float32))
seqs = st.integers(0, 0xFFFF)


@st.composite
def messages(draw) -> P.Message:
    kind = draw(st.sampled_from(
        ["targets", "gains", "timeout", "telemetry", "relax", "hold", "stand", "enable", "get",
         "clear"]
    ))
    if kind == "targets":
        return P.Targets(draw(floats12))
    if kind == "gains":
        return P.Gains(draw(floats12), draw(floats12))
    if kind == "timeout":
        return P.SetTimeout(
            draw(st.floats(0, 10, width=32)), draw(st.sampled_from(list(P.TimeoutAction)))
        )
    if kind == "telemetry":
        return P.Telemetry(
            time_ms=draw(st.integers(0, 2**32 - 1)),
            status=P.Status(draw(st.integers(0, 127))),
            faults=P.Fault(draw(st.integers(0, 63))),
            rx_errors=draw(st.integers(0, 0xFFFF)),
            supply_voltage=draw(st.floats(0, 60, width=32)),
            positions=draw(floats12),
            velocities=draw(floats12),
            imu=draw(floats12)[:5],
            forward_velocity=draw(st.floats(-10, 10, width=32)),
        )
    return {"relax": P.Relax, "hold": P.Hold, "stand": P.StandUp, "enable": P.Enable,
            "get": P.GetState, "clear": P.ClearFaults}[kind]()


def same(a: P.Message, b: P.Message) -> bool:
    if type(a) is not type(b):
        return False
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32)):
                return False
        elif x != y:
            return False
    return True


def test_crc_is_ccitt_false():
    assert P.crc16(b"123456789") == 0x29B1  # the catalogue check value of CRC-16/CCITT-FALSE


def test_frame_layout_matches_the_readme():
    frame = P.encode(P.Targets(np.arange(12, dtype=np.float32)), seq=0x1234)
    assert frame[:2] == b"\xa5\x5a"
    assert frame[2] == 48  # payload length
    assert frame[3:5] == b"\x34\x12"  # seq, little-endian
    assert frame[5] == P.MsgType.TARGETS
    assert len(frame) == 6 + 48 + 2
    assert int.from_bytes(frame[-2:], "little") == P.crc16(frame[2:-2])


def test_example_frames_in_the_readme():
    assert P.encode(P.GetState(), 1) == bytes.fromhex("A55A00010008F832")
    timeout = P.SetTimeout(0.25, P.TimeoutAction.RELAX)
    assert P.encode(timeout, 2) == bytes.fromhex("A55A05020006 0000803E00 3970".replace(" ", ""))


@given(messages(), seqs)
def test_every_message_round_trips(msg, seq):
    decoder = P.FrameDecoder()
    out = decoder.feed(P.encode(msg, seq))
    assert len(out) == 1
    got_seq, got = out[0]
    assert got_seq == seq
    assert same(got, msg)
    assert decoder.pending == 0


@given(st.lists(st.tuples(messages(), seqs), min_size=1, max_size=6), st.data())
def test_a_stream_cut_anywhere_decodes_to_the_same_frames(items, data):
    stream = b"".join(P.encode(m, s) for m, s in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = P.FrameDecoder()
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[a:b])
    assert [s for s, _ in out] == [s for _, s in items]
    assert all(same(g, m) for (_, g), (m, _) in zip(out, items, strict=True))


@given(messages(), seqs, st.data())
def test_any_corrupted_byte_drops_the_frame(msg, seq, data):
    frame = bytearray(P.encode(msg, seq))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    decoder = P.FrameDecoder()
    assert decoder.feed(bytes(frame)) == []
    assert decoder.stats.frames == 0


@given(messages(), seqs, st.data())
def test_a_corrupted_frame_is_counted_and_the_next_frame_survives(msg, seq, data):
    frame = bytearray(P.encode(msg, seq))
    i = data.draw(st.integers(2, len(frame) - 1))  # anywhere after the sync pair
    frame[i] ^= data.draw(st.integers(1, 255))
    good = P.encode(P.GetState(), 7)
    decoder = P.FrameDecoder()
    out = decoder.feed(bytes(frame) + good)
    assert [(s, type(m)) for s, m in out] == [(7, P.GetState)]
    assert decoder.stats.rejected >= 1


@given(st.binary(max_size=300), st.binary(max_size=300), messages(), seqs)
def test_garbage_around_frames_is_skipped(before, between, msg, seq):
    frame = P.encode(msg, seq)
    decoder = P.FrameDecoder()
    out = decoder.feed(before + frame + between + frame)
    # the two real frames are found (garbage could in principle hold a valid frame by
    # chance, but never one with a valid CRC of exactly this content at these places)
    matches = [m for s, m in out if s == seq and same(m, msg)]
    assert len(matches) >= 2


@settings(max_examples=50)
@given(messages(), seqs, st.data())
def test_a_truncated_frame_is_dropped_and_the_following_frame_is_decoded(msg, seq, data):
    frame = P.encode(msg, seq)
    cut = data.draw(st.integers(1, len(frame) - 1))
    follower = P.encode(P.Targets(np.ones(12, np.float32)), 9)
    # A 16-bit CRC cannot tell a frame cut right before its CRC from a whole one when the
    # follower's first two bytes happen to equal that CRC (1 in 65536 of these cuts, e.g.
    # Enable with seq 246): the bytes are then a valid frame, and are decoded as one.
    assume(not P.FrameDecoder().feed(frame[:cut] + follower[: len(frame) - cut]))
    decoder = P.FrameDecoder()
    out = decoder.feed(frame[:cut] + follower)
    assert [s for s, _ in out] == [9]
    assert np.array_equal(out[0][1].positions, np.ones(12, np.float32))
    # the truncated frame never came out, whatever its type
    assert decoder.stats.frames == 1


def test_a_frame_ending_in_a_sync_byte_is_consumed_whole():
    frame = next(
        f for f in (P.encode(P.Enable(), s) for s in range(1 << 16)) if f[-1] == 0xA5
    )
    decoder = P.FrameDecoder()
    assert len(decoder.feed(frame)) == 1
    assert decoder.pending == 0
    assert len(decoder.feed(frame)) == 1  # and the next frame is not misparsed


def test_a_truncated_frame_at_the_end_is_held_back_not_decoded():
    frame = P.encode(P.Relax(), 3)
    decoder = P.FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert [s for s, _ in decoder.feed(frame[-1:])] == [3]


def test_wrong_length_for_a_type_is_rejected_even_with_a_valid_crc():
    body = P.HEADER.pack(P.SYNC, 4, 1, int(P.MsgType.TARGETS)) + b"\x00" * 4
    frame = body + P.CRC.pack(P.crc16(body[2:]))
    decoder = P.FrameDecoder()
    assert decoder.feed(frame) == []
    assert decoder.stats.bad_length == 1


def test_unknown_type_is_rejected_even_with_a_valid_crc():
    body = P.HEADER.pack(P.SYNC, 0, 1, 0x42)
    frame = body + P.CRC.pack(P.crc16(body[2:]))
    decoder = P.FrameDecoder()
    assert decoder.feed(frame) == []
    assert decoder.stats.unknown_type == 1
