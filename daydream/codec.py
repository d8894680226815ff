"""Wire format between robots and the workstation: msgpack, numpy arrays as raw buffers.

Every message is a msgpack map with the schema version ``v``, a ``type`` and that type's
fields (``MESSAGE_FIELDS``). A numpy array travels as msgpack ext type 1 holding::

    u8 len(dtype) | dtype str ("<f4", "|u1", ...) | u8 ndim | ndim x u64 shape | raw bytes

Only plain little-endian numeric and bool dtypes are accepted (``ALLOWED_DTYPES``); object
dtypes are refused at both ends. Nothing is ever pickled. ``decode`` raises
:class:`CodecError` with a short ``reason`` code the receiver counts before it goes on:

    malformed     not msgpack, truncated, bad array header/length, invalid UTF-8, too deep
    oversized     the message (or an array) is larger than the limit
    wrong_schema  not a map, no/other schema version
    unknown_type  ``type`` is not one this version knows
    bad_field     a required field is missing or of the wrong kind
    bad_dtype     an array dtype outside ALLOWED_DTYPES

Decoded arrays are read-only views of the received buffer (no copy).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import msgpack
import numpy as np

SCHEMA_VERSION = 1
ARRAY_EXT = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_NDIM = 8
MAX_DEPTH = 8

ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "<f2",
        "<f4",
        "<f8",
    )  # fmt: skip
)

REASONS = ("malformed", "oversized", "wrong_schema", "unknown_type", "bad_field", "bad_dtype")


def _is_arrays(x) -> bool:
    return isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in x.items()
    )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_list(x) -> bool:
    return isinstance(x, list) and all(_is_int(i) for i in x)


def _is_str(x) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256


# Required fields per message type and a check for each (extra fields are allowed).
MESSAGE_FIELDS: dict[str, dict[str, Callable]] = {
    "hello": {"actor": _is_str},  # client -> gateway on connect; answered by "weights_info"
    "heartbeat": {"actor": _is_str},  # client -> gateway; answered by "weights_info"
    "chunk": {"actor": _is_str, "seq": _is_int, "data": _is_arrays},  # client -> gateway
    "ack": {"actor": _is_str, "seqs": _is_int_list},  # gateway -> client: held by the replay
    "nack": {"seqs": _is_int_list, "reason": _is_str},  # gateway -> client: refused for good
    "weights_info": {"version": _is_int},  # gateway -> client: newest version (-1: none yet)
    "weights_request": {"version": _is_int},  # client -> gateway: send if newer than this
    "weights": {"version": _is_int, "params": _is_arrays},  # gateway -> client
    "error": {"reason": _is_str},  # gateway -> client: your message was rejected
}


class CodecError(ValueError):
    """A message that cannot be encoded or decoded; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- encode


def _pack_array(arr: np.ndarray) -> msgpack.ExtType:
    dtype = arr.dtype.str
    if dtype not in ALLOWED_DTYPES:
        raise CodecError(
            "bad_dtype", f"arrays of dtype {arr.dtype} cannot be sent; use numeric/bool"
        )
    if arr.ndim > MAX_NDIM:
        raise CodecError("bad_field", f"array with {arr.ndim} dims (at most {MAX_NDIM})")
    header = struct.pack(
        f"<B{len(dtype)}sB{arr.ndim}Q", len(dtype), dtype.encode(), arr.ndim, *arr.shape
    )
    return msgpack.ExtType(ARRAY_EXT, header + np.ascontiguousarray(arr).tobytes())


def _default(obj):
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "biuf":
            return obj.item()
    raise CodecError("bad_field", f"cannot encode {type(obj).__name__} (only numbers, str, "
                     f"bytes, lists, dicts and numeric numpy arrays travel)")  # fmt: skip


def encode(msg: dict, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """msgpack bytes for ``msg`` (a dict with ``type``); adds the schema version ``v``."""
    if not isinstance(msg, dict) or msg.get("type") not in MESSAGE_FIELDS:
        raise CodecError("unknown_type", f"message type {msg.get('type')!r} is not one of "
                         f"{sorted(MESSAGE_FIELDS)}")  # fmt: skip
    data = msgpack.packb({"v": SCHEMA_VERSION, **msg}, default=_default, use_bin_type=True)
    if len(data) > max_bytes:
        raise CodecError("oversized", f"message of {len(data)} bytes exceeds {max_bytes}; "
                         f"send smaller chunks (replay.chunk_length)")  # fmt: skip
    return data


# ---------------------------------------------------------------- decode


def _unpack_array(code: int, data: bytes):
    if code != ARRAY_EXT:
        raise CodecError("malformed", f"unknown ext type {code}")
    try:
        view = memoryview(data)
        n = view[0]
        dtype_str = bytes(view[1 : 1 + n]).decode("ascii")
        pos = 1 + n
        ndim = view[pos]
        pos += 1
        if ndim > MAX_NDIM:
            raise CodecError("malformed", f"array with {ndim} dims")
        shape = struct.unpack_from(f"<{ndim}Q", view, pos)
        pos += 8 * ndim
    except (IndexError, UnicodeDecodeError, struct.error):
        raise CodecError("malformed", "truncated array header") from None
    if dtype_str not in ALLOWED_DTYPES:
        raise CodecError("bad_dtype", f"array dtype {dtype_str!r} not allowed")
    dtype = np.dtype(dtype_str)
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(view) - pos:
        raise CodecError("malformed", f"array {dtype_str}{tuple(shape)} does not match its data")
    return np.frombuffer(view, dtype=dtype, count=count, offset=pos).reshape(shape)


def _depth_ok(obj, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """The message in ``data``, validated against its type; raises CodecError(reason)."""
    if len(data) > max_bytes:
        raise CodecError("oversized", f"{len(data)} bytes > limit {max_bytes}")
    try:
        msg = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_unpack_array,
        )
    except CodecError:
        raise
    except Exception as e:  # msgpack raises a zoo of types on bad input
        raise CodecError("malformed", f"{type(e).__name__}: {e}"[:200]) from None
    if not isinstance(msg, dict):
        raise CodecError("wrong_schema", f"top level is {type(msg).__name__}, not a map")
    if msg.get("v") != SCHEMA_VERSION:
        raise CodecError(
            "wrong_schema", f"schema version {msg.get('v')!r}, expected {SCHEMA_VERSION}"
        )
    kind = msg.get("type")
    fields = MESSAGE_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise CodecError("unknown_type", f"message type {kind!r}")
    if not _depth_ok(msg):
        raise CodecError("malformed", "nested too deeply")
    for name, check in fields.items():
        if name not in msg or not check(msg[name]):
            raise CodecError("bad_field", f"{kind} message: field {name!r} missing or invalid")
    return msg
