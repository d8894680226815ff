"""Wire format: round trips, and every bad message rejected with a counted reason."""

from __future__ import annotations

import struct
from collections import Counter

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daydream.wire.codec import (
    ALIGN,
    ALLOWED_DTYPES,
    ARRAY_EXT,
    MAGIC,
    SCHEMA_VERSION,
    CodecError,
    decode,
    encode,
    is_v1,
    upgrade_v1,
)


def chunk_message(seq: int = 0, steps: int = 4) -> dict:
    rng = np.random.default_rng(seq)
    return {
        "type": "chunk",
        "actor": "robot-0",
        "seq": seq,
        "data": {
            "image": rng.integers(0, 255, (steps, 8, 8, 3), dtype=np.uint8),
            "vector": rng.standard_normal((steps, 5)).astype(np.float32),
            "reward": rng.standard_normal(steps),
            "is_first": np.arange(steps) == 0,
        },
    }


def raw_ext(dtype: str, shape: tuple[int, ...], payload: bytes = b"") -> msgpack.ExtType:
    """An array description (schema 2: its bytes travel after the header), or with a payload
    the schema-1 inline form."""
    header = struct.pack(
        f"<B{len(dtype)}sB{len(shape)}Q", len(dtype), dtype.encode(), len(shape), *shape
    )
    return msgpack.ExtType(ARRAY_EXT, header + payload)


def framed(header: bytes, *sections: bytes, header_len: int | None = None) -> bytes:
    """A schema-2 message from a raw header and raw array sections (each aligned)."""
    out = MAGIC + struct.pack("<I", len(header) if header_len is None else header_len) + header
    for section in sections:
        if section:
            out += bytes(-len(out) % ALIGN) + section
    return out


def forged(*sections: bytes, **fields) -> bytes:
    """A message built by hand (bypassing encode's checks), as a hostile peer would."""
    return framed(msgpack.packb(fields, use_bin_type=True), *sections)


def encode_v1(msg: dict) -> bytes:
    """A schema-1 message as the previous release encoded it (arrays inline)."""

    def default(obj):
        return raw_ext(obj.dtype.str, obj.shape, np.ascontiguousarray(obj).tobytes())

    return msgpack.packb({"v": 1, **msg}, default=default, use_bin_type=True)


def test_chunk_round_trip_keeps_values_dtypes_and_shapes():
    msg = chunk_message(3)
    out = decode(encode(msg))
    assert out["v"] == SCHEMA_VERSION and out["type"] == "chunk" and out["seq"] == 3
    for k, v in msg["data"].items():
        assert out["data"][k].dtype == v.dtype and out["data"][k].shape == v.shape
        np.testing.assert_array_equal(out["data"][k], v)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(sorted(ALLOWED_DTYPES)).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_every_allowed_dtype_and_shape_round_trips(arr):
    out = decode(encode({"type": "weights", "version": 7, "params": {"w": arr}}))["params"]["w"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_decoded_arrays_are_aligned_read_only_views_of_the_message():
    msg = chunk_message(5, steps=16)
    data = encode(msg)
    out = decode(data)
    base = np.frombuffer(data, np.uint8).ctypes.data
    for k, arr in out["data"].items():
        assert not arr.flags.writeable and not arr.flags.owndata, k
        assert (arr.ctypes.data - base) % ALIGN == 0 and 0 < arr.ctypes.data - base < len(data)
    # nothing but the sections and their padding follows the header
    payload = sum(v.nbytes for v in msg["data"].values())
    assert payload < len(data) < payload + 512 + ALIGN * len(msg["data"])


def test_a_schema_1_message_is_refused_and_can_be_upgraded():
    msg = chunk_message(4)
    old = encode_v1(msg)
    assert is_v1(old) and not is_v1(encode(msg))
    with pytest.raises(CodecError) as e:
        decode(old)
    assert e.value.reason == "wrong_schema"
    out = decode(upgrade_v1(old))
    assert out["v"] == SCHEMA_VERSION and out["seq"] == 4
    for k, v in msg["data"].items():
        np.testing.assert_array_equal(out["data"][k], v)
        assert out["data"][k].dtype == v.dtype
    for bad, reason in (
        (old[:-1], "malformed"),
        (msgpack.packb({"v": 1, "type": "chunk", "actor": "a", "seq": 0,
                        "data": {"x": raw_ext("<f4", (3,), bytes(8))}}), "malformed"),
        (msgpack.packb({"v": 3, "type": "hello", "actor": "a"}), "wrong_schema"),
        (msgpack.packb({"v": 1, "type": "hello"}), "bad_field"),
    ):  # fmt: skip
        with pytest.raises(CodecError) as e:
            upgrade_v1(bad)
        assert e.value.reason == reason


def test_non_contiguous_arrays_and_numpy_scalars_encode():
    arr = np.arange(24, dtype=np.int16).reshape(4, 6)[:, ::2]
    out = decode(encode({"type": "weights", "version": np.int64(2), "params": {"w": arr}}))
    assert out["version"] == 2
    np.testing.assert_array_equal(out["params"]["w"], arr)


@pytest.mark.parametrize(
    "arr", [np.array([{"a": 1}], dtype=object), np.array(["text"]), np.zeros(3, ">f4")]
)
def test_object_string_and_big_endian_arrays_are_refused_when_encoding(arr):
    with pytest.raises(CodecError) as e:
        encode({"type": "weights", "version": 1, "params": {"w": arr}})
    assert e.value.reason == "bad_dtype"


def test_encode_refuses_oversized_messages_and_unknown_types():
    with pytest.raises(CodecError, match="oversized"):
        encode(chunk_message(steps=64), max_bytes=10_000)
    with pytest.raises(CodecError, match="unknown_type"):
        encode({"type": "pickle_me"})


def hostile_messages() -> list[tuple[str, bytes]]:
    """A few thousand bad messages, each with the reason it must be rejected for."""
    good = encode(chunk_message(1))
    rng = np.random.default_rng(0)
    cases: list[tuple[str, bytes]] = []
    # truncated: every prefix of a real chunk message (sampled) is incomplete msgpack
    for n in list(range(0, 200)) + list(rng.integers(200, len(good) - 1, 800)):
        cases.append(("malformed", good[:n]))
    # garbage bytes that are not a msgpack map
    for n in rng.integers(1, 300, 500):
        data = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        if data[0] & 0xF0 != 0x80 and data[0] not in (0xDE, 0xDF):  # not a map header
            cases.append(("", data))
    # oversized
    for size in (1001, 5000, 100_000):
        cases.append(("oversized", b"\x80" + bytes(size)))
    # wrong schema (a schema-1 message too)
    for v in (None, 0, 1, 3, "2", 2.0, 2.0001, True, [2]):
        cases.append(("wrong_schema", forged(v=v, type="heartbeat", actor="a")))
    cases.append(("wrong_schema", forged(type="heartbeat", actor="a")))
    for top in ([1, 2], "chunk", 5, None, True):
        cases.append(("wrong_schema", framed(msgpack.packb(top))))
    cases.append(("wrong_schema", encode_v1(chunk_message(1))))
    cases.append(("wrong_schema", msgpack.packb({"v": 2, "type": "hello", "actor": "a"})))
    # unknown type
    for t in ("pickle", "", None, 1, ["chunk"], "CHUNK"):
        cases.append(("unknown_type", forged(v=SCHEMA_VERSION, type=t, actor="a")))
    # bad fields: missing, wrong kind, arrays where not allowed
    ok_data = {"x": raw_ext("<f4", (2,))}
    for fields in (
        {"actor": "a", "seq": 1},
        {"actor": "a", "data": ok_data},
        {"seq": 1, "data": ok_data},
        {"actor": "a", "seq": "1", "data": ok_data},
        {"actor": "a", "seq": True, "data": ok_data},
        {"actor": "a", "seq": 1.5, "data": ok_data},
        {"actor": 7, "seq": 1, "data": ok_data},
        {"actor": "", "seq": 1, "data": ok_data},
        {"actor": "a" * 300, "seq": 1, "data": ok_data},
        {"actor": "a", "seq": 1, "data": {"x": [1, 2, 3]}},
        {"actor": "a", "seq": 1, "data": [1, 2]},
    ):
        sections = [bytes(8)] if fields.get("data") is ok_data else []
        cases.append(("bad_field", forged(*sections, v=SCHEMA_VERSION, type="chunk", **fields)))
    cases.append(("bad_field", forged(v=SCHEMA_VERSION, type="ack", actor="a", seqs=[1, "2"])))
    cases.append(("bad_field", forged(v=SCHEMA_VERSION, type="weights_request")))
    # arrays: forbidden dtypes and lying headers
    v = SCHEMA_VERSION
    for dtype in ("|O", "<U4", ">f4", "|V8", "<c16", "<M8[s]", "zz", "\x7f"):
        ext = raw_ext(dtype, (1,))
        cases.append(
            ("bad_dtype", forged(bytes(8), v=v, type="chunk", actor="a", seq=0, data={"x": ext}))
        )
    # array sections that do not match their descriptions: short, extra bytes, absurd
    for shape, payload in (((3,), bytes(8)), ((2, 2), bytes(17)), ((0,), b"x"), ((2**40,), b""),
                           ((2,), b""), ((1,), bytes(4) + bytes(ALIGN))):  # fmt: skip
        ext = raw_ext("<f4", shape)
        cases.append(
            ("malformed", forged(payload, v=v, type="chunk", actor="a", seq=0, data={"x": ext}))
        )
    two = {"x": raw_ext("<f4", (2,)), "y": raw_ext("<f4", (2,))}
    cases.append(("malformed", forged(bytes(8), v=v, type="chunk", actor="a", seq=0, data=two)))
    cases.append(("malformed", forged(bytes(8), bytes(8), bytes(8), v=v, type="chunk",
                                      actor="a", seq=0, data=two)))  # fmt: skip
    unaligned = framed(msgpack.packb({"v": v, "type": "chunk", "actor": "a", "seq": 0,
                                      "data": {"x": raw_ext("<f4", (2,))}}))  # fmt: skip
    cases.append(("malformed", unaligned + bytes(8)))  # section not at its aligned offset
    for header in (b"", b"\x03<f", b"\x03<f4", b"\x03<f4\x09", b"\x03<f4\x02\x01",
                   b"\x03<f4\x01" + bytes(8) + b"+"):  # fmt: skip
        ext = msgpack.ExtType(ARRAY_EXT, header)
        cases.append(("malformed", forged(v=v, type="chunk", actor="a", seq=0, data={"x": ext})))
    unknown_ext = {"x": msgpack.ExtType(9, b"")}
    cases.append(("malformed", forged(v=v, type="chunk", actor="a", seq=0, data=unknown_ext)))
    # the prefix: no magic, a header length that runs past the end, a header cut short
    good_header = msgpack.packb({"v": v, "type": "heartbeat", "actor": "a"})
    for data in (b"\xc1DD", b"\xc1DDX" + bytes(4) + good_header, b"DDM" + bytes(5),
                 framed(good_header, header_len=len(good_header) + 1),
                 framed(good_header, header_len=1 << 31),
                 framed(good_header, header_len=len(good_header) - 1),
                 framed(good_header) + b"\x00"):  # fmt: skip
        cases.append(("malformed", data))
    # non-string map keys, deep nesting
    cases.append(("malformed", framed(msgpack.packb({1: 2, "v": v, "type": "heartbeat",
                                                     "actor": "a"}))))  # fmt: skip
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    cases.append(("malformed", forged(v=v, type="heartbeat", actor="a", extra=deep)))
    cases.append(("malformed", b"\x91" * 100_000))  # not a message at all
    cases.append(("malformed", framed(b"\x91" * 10_000)))  # 10,000 nested arrays
    cases.append(("oversized", framed(b"\x91" * 100_000)))  # a header beyond any type's budget
    return cases


def test_thousands_of_hostile_messages_are_all_rejected_with_their_reason():
    counts: Counter = Counter()
    cases = hostile_messages()
    assert len(cases) > 1500
    for expected, data in cases:
        with pytest.raises(CodecError) as e:
            decode(data, max_bytes=1000 if expected == "oversized" else 1 << 20)
        if expected:
            assert e.value.reason == expected, (expected, e.value, data[:40])
        counts[e.value.reason] += 1
    assert set(counts) == {
        "malformed", "oversized", "wrong_schema", "unknown_type", "bad_field", "bad_dtype"
    }  # fmt: skip
    assert sum(counts.values()) == len(cases)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_codec_error(data):
    try:
        decode(data)
    except CodecError as e:
        assert e.reason in {"malformed", "wrong_schema", "unknown_type", "bad_field", "bad_dtype"}


def test_bit_flips_in_a_real_message_decode_or_fail_cleanly():
    good = bytearray(encode(chunk_message(2)))
    rng = np.random.default_rng(1)
    for pos in rng.integers(0, 120, 500):  # the header and first array header
        data = bytearray(good)
        data[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            msg = decode(bytes(data))
        except CodecError:
            continue
        assert isinstance(msg, dict) and msg["v"] == SCHEMA_VERSION
